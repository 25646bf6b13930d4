"""Settings: which UPS host to talk to, with which credentials, and where data lives.

Values come, in order of precedence, from explicit arguments, environment
variables (``OPTIN_*``) and a TOML config file (``OPTIN_CONFIG``, default
``~/.config/optin/config.toml``). Credentials never come from the repository.
The default environment is the loopback sandbox, which needs no credentials.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

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
# Seconds. A longer HTTP timeout would also hold each refresh lease longer.
MAX_TIMEOUT: Final = 120.0

# A year: a longer-lived link would outlast any reason to keep its verifier.
MAX_LINK_LIFETIME: Final = 365 * 24 * 3600.0
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
        """Validate ``values`` (setting name to value) and fill in the defaults."""
        environment = _environment(values)
        base_url = str(values.get("base_url") or HOSTS.get(environment, SANDBOX_URL))
        if environment != "sandbox":
            _require_credentials(environment, values)
            _check_base_url(environment, base_url)
        base = cls()
        secret = values.get("client_secret", base.client_secret)
        return cls(
            environment=environment,
            base_url=base_url,
            client_id=str(values.get("client_id", base.client_id)),
            client_secret=secret if isinstance(secret, Secret) else Secret(str(secret)),
            redirect_uri=str(values.get("redirect_uri", base.redirect_uri)),
            scope=str(values.get("scope", base.scope)),
            timeout=_seconds(values, "timeout", base.timeout, MAX_TIMEOUT),
            db_path=Path(values.get("db_path", base.db_path)),
            key_file=Path(values["key_file"]) if values.get("key_file") else None,
            link_lifetime=_seconds(
                values, "link_lifetime", base.link_lifetime, MAX_LINK_LIFETIME
            ),
        )


def _source_of(name: str) -> str:
    return f"{_ENV_VARS[name]} or {name!r} in the config file"


def _environment(values: dict[str, Any]) -> str:
    environment = str(values.get("environment", "sandbox"))
    if environment not in ENVIRONMENTS:
        raise ConfigurationError(
            f"invalid environment={environment!r}; use one of "
            f"{', '.join(ENVIRONMENTS)} ({_source_of('environment')})"
        )
    return environment


def _seconds(
    values: dict[str, Any], name: str, default: float, maximum: float | None = None
) -> float:
    """Return ``values[name]`` as a positive, finite number of seconds."""
    raw = values.get(name, default)
    try:
        # TOML booleans would otherwise pass as 1.0 and 0.0.
        seconds = math.nan if isinstance(raw, bool) else float(raw)
    except (TypeError, ValueError):
        seconds = math.nan
    too_long = maximum is not None and seconds > maximum
    if not (math.isfinite(seconds) and seconds > 0) or too_long:
        limit = f" and at most {maximum:g}" if maximum is not None else ""
        raise ConfigurationError(
            f"invalid {name}={raw!r}: it must be a number of seconds greater than "
            f"0{limit} ({_source_of(name)})"
        )
    return seconds


def _check_base_url(environment: str, base_url: str) -> None:
    """Require https, except for a loopback host such as a test server."""
    parts = urlsplit(base_url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        return
    raise ConfigurationError(
        f"invalid base_url={base_url!r} for environment={environment!r}: it must "
        "start with https:// (http:// is allowed only for a loopback host such as "
        f"127.0.0.1). Fix {_source_of('base_url')}, or unset it to use "
        f"{HOSTS[environment]}"
    )


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


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
    values = dict(section) if isinstance(section, dict) else {}
    unknown = sorted(set(values) - set(_ENV_VARS))
    if unknown:
        raise ConfigurationError(
            f"unknown keys in config file {path}: {', '.join(unknown)}; the keys "
            f"are {', '.join(_ENV_VARS)}"
        )
    return values


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
