"""Authorization codes, PKCE challenges and RS384-signed JWT access tokens."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from collections.abc import Mapping
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def new_authorization_code() -> str:
    """Return a random standard-base64 code that ends in ``==``.

    The code always contains ``+`` and ``/``, so a client that does not
    percent-encode and decode it correctly fails at the token exchange.
    """
    while True:
        # 64 bytes encode to 88 characters with two padding characters.
        code = base64.b64encode(secrets.token_bytes(64)).decode("ascii")
        if "+" in code and "/" in code:
            return code


def pkce_challenge(verifier: str) -> str:
    """Return the S256 challenge: BASE64URL(SHA256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url_json(value: Mapping[str, object]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


class TokenSigner:
    """RSA key, generated at start, that signs access tokens as RS384 JWTs."""

    HEADER: ClassVar[dict[str, str]] = {"alg": "RS384", "typ": "JWT"}

    def __init__(self, key_bits: int) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)

    def sign(self, claims: Mapping[str, object]) -> str:
        signing_input = f"{_b64url_json(self.HEADER)}.{_b64url_json(claims)}"
        signature = self._key.sign(
            signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA384()
        )
        return f"{signing_input}.{_b64url(signature)}"

    def verify(self, token: str) -> dict[str, Any] | None:
        """Return the claims of a token this key signed, or None."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            signature = _b64url_decode(parts[2])
            self._key.public_key().verify(
                signature,
                f"{parts[0]}.{parts[1]}".encode("ascii"),
                padding.PKCS1v15(),
                hashes.SHA384(),
            )
            claims = json.loads(_b64url_decode(parts[1]))
        except (InvalidSignature, ValueError, binascii.Error):
            return None
        return claims if isinstance(claims, dict) else None

    def jwks(self) -> dict[str, Any]:
        numbers = self._key.public_key().public_numbers()
        modulus = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        exponent = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        key = {
            "kty": "RSA",
            "alg": "RS384",
            "use": "sig",
            "n": _b64url(modulus),
            "e": _b64url(exponent),
        }
        return {"keys": [key]}
