"""Settings: which UPS host to talk to, with which credentials, and where data lives.

Values come, in order of precedence, from explicit arguments, environment
variables (``OPTIN_*``) and a TOML config file (``OPTIN_CONFIG``, default
``~/.config/optin/config.toml``). Credentials never come from the repository.
The default environment is the loopback sandbox, which needs no credentials.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from optin.errors import ConfigurationError
from optin.secret import Secret

# UPS hosts. Credentials and tokens of one do not work on the other.
HOSTS: Final = {
    "cie": "https://wwwcie.ups.com",
    "production": "https://onlinetools.ups.com",
}
SANDBOX_URL: Final = "http://127.0.0.1:8765"
SANDBOX_CLIENT_ID: Final = "optin-sandbox"
# Known only to the loopback sandbox; it opens nothing at UPS.
SANDBOX_CLIENT_SECRET: Final = "sandbox-secret-not-for-production"  # noqa: S105
SANDBOX_REDIRECT_URI: Final = "http://127.0.0.1:8766/callback"
ENVIRONMENTS: Final = ("sandbox", "cie", "production")
DEFAULT_DB: Final = Path("data/optin.db")
DEFAULT_CONFIG: Final = Path("~/.config/optin/config.toml")

_ENV_VARS: Final = {
    "environment": "OPTIN_ENV",
    "base_url": "OPTIN_BASE_URL",
    "client_id": "OPTIN_CLIENT_ID",
    "client_secret": "OPTIN_CLIENT_SECRET",
    "redirect_uri": "OPTIN_REDIRECT_URI",
    "scope": "OPTIN_SCOPE",
    "timeout": "OPTIN_TIMEOUT",
    "db_path": "OPTIN_DB",
    "key_file": "OPTIN_KEY_FILE",
    "link_lifetime": "OPTIN_LINK_LIFETIME",
}


@dataclass(frozen=True)
class Settings:
    """Resolved settings. ``repr`` hides the client secret."""

    environment: str = "sandbox"
    base_url: str = SANDBOX_URL
    client_id: str = SANDBOX_CLIENT_ID
    client_secret: Secret = field(default_factory=lambda: Secret(SANDBOX_CLIENT_SECRET))
    redirect_uri: str = SANDBOX_REDIRECT_URI
    scope: str = "read"
    # Seconds; UPS's own SDKs use 15 to 30 seconds.
    timeout: float = 30.0
    db_path: Path = DEFAULT_DB
    # None: the key file sits beside the database as ``<db>.key``.
    key_file: Path | None = None
    # Seconds an authorization link (its state and verifier) stays usable.
    link_lifetime: float = 72 * 3600.0

    @property
    def resolved_key_file(self) -> Path:
        return self.key_file or self.db_path.with_suffix(".key")

    @classmethod
    def load(cls, config_file: Path | str | None = None, **overrides: Any) -> Settings:
        """Merge the config file, the environment and ``overrides``."""
        values: dict[str, Any] = _read_config_file(config_file)
        for name, var in _ENV_VARS.items():
            if os.environ.get(var):
                values[name] = os.environ[var]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.build(values)

    @classmethod
    def build(cls, values: dict[str, Any]) -> Settings:
        environment = str(values.get("environment", "sandbox"))
        if environment not in ENVIRONMENTS:
            raise ConfigurationError(
                f"invalid environment={environment!r}; use one of "
                f"{', '.join(ENVIRONMENTS)} (OPTIN_ENV or 'environment' in the "
                "config file)"
            )
        if environment != "sandbox":
            _require_credentials(environment, values)
        base = cls()
        secret = values.get("client_secret", base.client_secret)
        return cls(
            environment=environment,
            base_url=str(values.get("base_url") or HOSTS.get(environment, SANDBOX_URL)),
            client_id=str(values.get("client_id", base.client_id)),
            client_secret=secret if isinstance(secret, Secret) else Secret(str(secret)),
            redirect_uri=str(values.get("redirect_uri", base.redirect_uri)),
            scope=str(values.get("scope", base.scope)),
            timeout=float(values.get("timeout", base.timeout)),
            db_path=Path(values.get("db_path", base.db_path)),
            key_file=Path(values["key_file"]) if values.get("key_file") else None,
            link_lifetime=float(values.get("link_lifetime", base.link_lifetime)),
        )


def _read_config_file(config_file: Path | str | None) -> dict[str, Any]:
    explicit = config_file or os.environ.get("OPTIN_CONFIG")
    path = Path(explicit or DEFAULT_CONFIG).expanduser()
    if not path.exists():
        if explicit:
            raise ConfigurationError(f"config file not found: {path}")
        return {}
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"invalid TOML in config file {path}: {exc}") from None
    section = data.get("optin", data)
    return dict(section) if isinstance(section, dict) else {}


def _require_credentials(environment: str, values: dict[str, Any]) -> None:
    missing = [
        _ENV_VARS[name]
        for name in ("client_id", "client_secret", "redirect_uri")
        if not values.get(name)
    ]
    if missing:
        raise ConfigurationError(
            f"environment={environment!r} needs UPS app credentials; set "
            f"{', '.join(missing)} (or the same keys in the config file). "
            "The sandbox environment needs none."
        )
