"""The Fernet key that encrypts tokens and PKCE verifiers at rest."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.fernet import Fernet

from optin.errors import ConfigurationError

logger = logging.getLogger(__name__)

KEY_VARIABLE = "OPTIN_KEY"


def load_fernet(key_file: Path, create: bool = True) -> Fernet:
    """Return the Fernet for ``OPTIN_KEY`` or ``key_file``, creating the file if absent.

    A new key file is created with owner-only permissions (0600). An existing
    key file that group or others may access raises ConfigurationError.
    """
    from_env = os.environ.get(KEY_VARIABLE)
    if from_env:
        return _fernet(from_env.encode("ascii"), f"the {KEY_VARIABLE} variable")
    if not key_file.exists():
        if not create:
            raise ConfigurationError(
                f"token key file not found: {key_file}; set {KEY_VARIABLE} or "
                "restore the key file that encrypted this database"
            )
        _create_key_file(key_file)
    _check_owner_only(key_file)
    return _fernet(key_file.read_bytes().strip(), f"key file {key_file}")


def _check_owner_only(key_file: Path) -> None:
    """Raise ConfigurationError if group or others have any access to ``key_file``.

    Only POSIX modes are checked, because Windows derives the mode bits from
    the read-only flag alone.
    """
    if os.name != "posix":
        return
    mode = key_file.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigurationError(
            f"token key file {key_file} has mode {mode:o}, which gives group or "
            f"others access to it; run chmod 600 {key_file} and try again"
        )


def _create_key_file(key_file: Path) -> None:
    key_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process created it first; use theirs
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(Fernet.generate_key() + b"\n")
    logger.info("created token key file %s (mode 600)", key_file)


def _fernet(key: bytes, source: str) -> Fernet:
    try:
        return Fernet(key)
    except ValueError:
        raise ConfigurationError(
            f"invalid Fernet key in {source}: it must be 32 url-safe base64-encoded "
            "bytes, as made by cryptography.fernet.Fernet.generate_key()"
        ) from None
