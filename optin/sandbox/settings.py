"""Settings of a sandbox app: token lifetimes, the default client and fault defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

DEFAULT_REDIRECT_URI = "http://127.0.0.1:8766/callback"


@dataclass
class SandboxSettings:
    """Token lifetimes in seconds, the default client and fault defaults."""

    access_token_lifetime: int = 3600
    refresh_token_lifetime: int = 5183999
    code_lifetime: int = 300
    # Lifetime of a pending authorize request and of a sign-in session.
    login_session_lifetime: int = 1800
    client_id: str = "optin-sandbox"
    client_secret: str = "sandbox-secret-not-for-production"  # noqa: S105
    redirect_uris: list[str] = field(default_factory=lambda: [DEFAULT_REDIRECT_URI])
    # Registered for the default client in addition to ``redirect_uris``.
    extra_redirect_uris: list[str] = field(default_factory=list)
    client_name: str = "optin (sandbox)"
    # Seconds a drop_after_commit fault delays the response when the server cannot
    # close the connection, unless the fault sets its own ``hang``.
    drop_hang: float = 30.0
    rsa_key_bits: int = 2048
    # Maximum number of OAuth requests kept in the request log; older ones are
    # discarded first.
    request_log_size: int = 1000
    # UPS.com accounts present from the start and after every reset, as
    # (username, email, password).
    users: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        lifetimes = {
            "access_token_lifetime": self.access_token_lifetime,
            "refresh_token_lifetime": self.refresh_token_lifetime,
            "code_lifetime": self.code_lifetime,
            "login_session_lifetime": self.login_session_lifetime,
        }
        for name, value in lifetimes.items():
            if value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        for uri in [*self.redirect_uris, *self.extra_redirect_uris]:
            validate_redirect_uri(uri)


def validate_redirect_uri(uri: str) -> None:
    """Raise ValueError unless ``uri`` is an absolute http(s) URL without fragment."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"redirect URI {uri!r} must be an absolute http(s) URL")
    if parts.fragment or uri.endswith("#"):
        raise ValueError(f"redirect URI {uri!r} must not contain a fragment")
