"""The package's public surface: everything in ``__all__`` and nothing missing."""

from __future__ import annotations

import optin
from optin import errors


def test_all_sorted() -> None:
    # Constants first, then classes, as ruff's RUF022 orders __all__.
    assert optin.__all__ == sorted(optin.__all__, key=lambda n: (not n.isupper(), n))


def test_all_names_exist() -> None:
    missing = [name for name in optin.__all__ if not hasattr(optin, name)]
    assert missing == []


def test_every_error_exported() -> None:
    classes = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.OptinError)
    }
    assert classes - set(optin.__all__) == set()


def test_sandbox_imports_no_product_code() -> None:
    from pathlib import Path

    folder = Path(optin.__file__).parent / "sandbox"
    for path in folder.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "from optin." not in text.replace("from optin.sandbox", ""), path
        assert "import optin\n" not in text, path
