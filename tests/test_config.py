"""Settings from arguments, OPTIN_* variables and the TOML file, and the token key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from optin import Manager, Settings
from optin.config import _ENV_VARS
from optin.errors import ConfigurationError
from optin.keys import KEY_VARIABLE, load_fernet

CREDENTIALS = {
    "client_id": "app-id-1",
    "client_secret": "app-secret-9f2c41",
    "redirect_uri": "https://optin.example.com/callback",
}


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's OPTIN_* variables and config file out of the tests."""
    for variable in [*_ENV_VARS.values(), "OPTIN_CONFIG", KEY_VARIABLE]:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- the token key ----------------------------------------------------------------


def test_new_key_file_owner_only(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "optin.key"

    load_fernet(key_file)

    assert key_file.stat().st_mode & 0o777 == 0o600


def test_new_key_file_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_fernet(tmp_path / "optin.key")
    finally:
        os.umask(old)

    assert (tmp_path / "optin.key").stat().st_mode & 0o777 == 0o600


def test_key_file_readable_by_others(tmp_path: Path) -> None:
    key_file = tmp_path / "optin.key"
    load_fernet(key_file)
    key_file.chmod(0o644)

    with pytest.raises(ConfigurationError) as raised:
        load_fernet(key_file)

    assert str(key_file) in str(raised.value)
    assert "mode 644" in str(raised.value)
    assert f"chmod 600 {key_file}" in str(raised.value)


@pytest.mark.parametrize(
    "mode", [0o640, 0o604, 0o620], ids=["group-read", "other-read", "group-write"]
)
def test_key_file_any_group_bit(tmp_path: Path, mode: int) -> None:
    key_file = tmp_path / "optin.key"
    load_fernet(key_file)
    key_file.chmod(mode)

    with pytest.raises(ConfigurationError, match="chmod 600"):
        load_fernet(key_file)


def test_manager_rejects_open_key_file(tmp_path: Path) -> None:
    settings = Settings.build({"db_path": tmp_path / "optin.db"})
    Manager(settings).close()
    settings.resolved_key_file.chmod(0o644)

    with pytest.raises(ConfigurationError, match="chmod 600"):
        Manager(settings)


def test_key_from_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = Fernet.generate_key()
    monkeypatch.setenv(KEY_VARIABLE, key.decode("ascii"))
    key_file = tmp_path / "optin.key"

    fernet = load_fernet(key_file)

    assert Fernet(key).decrypt(fernet.encrypt(b"token")) == b"token"
    assert not key_file.exists()


def test_invalid_key_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_VARIABLE, "not-a-fernet-key")

    with pytest.raises(ConfigurationError) as raised:
        load_fernet(tmp_path / "optin.key")

    assert "invalid Fernet key in the OPTIN_KEY variable" in str(raised.value)
    assert "Fernet.generate_key()" in str(raised.value)
    assert "not-a-fernet-key" not in str(raised.value)


def test_invalid_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "optin.key"
    key_file.write_bytes(b"truncated-key\n")
    key_file.chmod(0o600)

    with pytest.raises(ConfigurationError) as raised:
        load_fernet(key_file)

    assert f"invalid Fernet key in key file {key_file}" in str(raised.value)
    assert "truncated-key" not in str(raised.value)


def test_missing_key_file_no_create(tmp_path: Path) -> None:
    key_file = tmp_path / "optin.key"

    with pytest.raises(ConfigurationError, match="token key file not found"):
        load_fernet(key_file, create=False)

    assert not key_file.exists()


# -- where settings come from -------------------------------------------------------


def test_defaults_are_sandbox() -> None:
    settings = Settings.load()
    assert settings.environment == "sandbox"
    assert settings.base_url == "http://127.0.0.1:8765"
    assert settings.timeout == 30.0


def test_config_file_top_level(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'scope = "file-scope"\ntimeout = 12\n')

    settings = Settings.load(path)

    assert settings.scope == "file-scope"
    assert settings.timeout == 12.0


def test_config_file_optin_table(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[optin]\nscope = "table-scope"\ntimeout = 7.5\n')

    settings = Settings.load(path)

    assert settings.scope == "table-scope"
    assert settings.timeout == 7.5


def test_config_file_from_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, 'scope = "named-by-variable"\n')
    monkeypatch.setenv("OPTIN_CONFIG", str(path))

    assert Settings.load().scope == "named-by-variable"


def test_env_overrides_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, 'scope = "file-scope"\ntimeout = 12\n')
    monkeypatch.setenv("OPTIN_SCOPE", "env-scope")

    settings = Settings.load(path)

    assert settings.scope == "env-scope"
    assert settings.timeout == 12.0


def test_arguments_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIN_SCOPE", "env-scope")

    assert Settings.load(scope="argument-scope").scope == "argument-scope"


def test_bad_toml(tmp_path: Path) -> None:
    path = write_config(tmp_path, "scope = 'unclosed\n")

    with pytest.raises(ConfigurationError) as raised:
        Settings.load(path)

    assert f"invalid TOML in config file {path}" in str(raised.value)


def test_missing_named_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigurationError, match="config file not found"):
        Settings.load(path)


# -- validation ---------------------------------------------------------------------


def test_unknown_environment() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.build({"environment": "staging"})

    assert "invalid environment='staging'" in str(raised.value)
    assert "sandbox, cie, production" in str(raised.value)


@pytest.mark.parametrize("environment", ["cie", "production"])
def test_ups_hosts_need_credentials(environment: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.build({"environment": environment})

    message = str(raised.value)
    assert f"environment={environment!r} needs UPS app credentials" in message
    for variable in ("OPTIN_CLIENT_ID", "OPTIN_CLIENT_SECRET", "OPTIN_REDIRECT_URI"):
        assert variable in message


def test_credentials_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIN_ENV", "cie")
    monkeypatch.setenv("OPTIN_CLIENT_ID", CREDENTIALS["client_id"])
    monkeypatch.setenv("OPTIN_CLIENT_SECRET", CREDENTIALS["client_secret"])
    monkeypatch.setenv("OPTIN_REDIRECT_URI", CREDENTIALS["redirect_uri"])

    settings = Settings.load()

    assert settings.base_url == "https://wwwcie.ups.com"
    assert settings.client_id == CREDENTIALS["client_id"]
    assert settings.client_secret.reveal() == CREDENTIALS["client_secret"]


def test_repr_hides_client_secret() -> None:
    settings = Settings.build({"environment": "production", **CREDENTIALS})

    assert CREDENTIALS["client_secret"] not in repr(settings)
    assert CREDENTIALS["client_secret"] not in str(settings)
    assert "client_id='app-id-1'" in repr(settings)


@pytest.mark.parametrize(
    "base_url",
    [
        "https://wwwcie.ups.com",
        "http://127.0.0.1:8765",
        "http://localhost:8765",
        "http://[::1]:8765",
    ],
)
def test_ups_host_url_accepted(base_url: str) -> None:
    values = {"environment": "production", "base_url": base_url, **CREDENTIALS}

    assert Settings.build(values).base_url == base_url


@pytest.mark.parametrize(
    "base_url",
    [
        "http://onlinetools.ups.com",
        "http://10.0.0.5:8765",
        "ftp://127.0.0.1",
        "https://",
        "onlinetools.ups.com",
    ],
)
@pytest.mark.parametrize("environment", ["cie", "production"])
def test_ups_host_needs_https(environment: str, base_url: str) -> None:
    values = {"environment": environment, "base_url": base_url, **CREDENTIALS}

    with pytest.raises(ConfigurationError) as raised:
        Settings.build(values)

    message = str(raised.value)
    assert f"invalid base_url={base_url!r}" in message
    assert "https://" in message
    assert "OPTIN_BASE_URL" in message


def test_sandbox_allows_plain_http() -> None:
    settings = Settings.build({"base_url": "http://sandbox.internal:8765"})

    assert settings.base_url == "http://sandbox.internal:8765"


@pytest.mark.parametrize("timeout", [0.5, 30, "45", 120])
def test_timeout_accepted(timeout: object) -> None:
    assert Settings.build({"timeout": timeout}).timeout == float(str(timeout))


@pytest.mark.parametrize(
    "timeout", [0, -1, "0", "abc", "", 120.5, 121, "nan", "inf", True, None]
)
def test_timeout_rejected(timeout: object) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.build({"timeout": timeout})

    message = str(raised.value)
    assert f"invalid timeout={timeout!r}" in message
    assert "seconds greater than 0 and at most 120" in message
    assert "OPTIN_TIMEOUT" in message


def test_timeout_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIN_TIMEOUT", "600")

    with pytest.raises(ConfigurationError, match="invalid timeout='600'"):
        Settings.load()


@pytest.mark.parametrize("lifetime", [0, -60, "soon", "inf"])
def test_link_lifetime_rejected(lifetime: object) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.build({"link_lifetime": lifetime})

    assert f"invalid link_lifetime={lifetime!r}" in str(raised.value)
    assert "OPTIN_LINK_LIFETIME" in str(raised.value)
