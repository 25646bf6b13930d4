"""The package's public surface: everything in ``__all__`` and nothing missing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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


def product_imports(path: Path) -> list[str]:
    """Return the imports in ``path`` that reach optin outside optin.sandbox.

    The sandbox plays UPS, so it must not share code with the client under
    test.
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level >= 2:
            found.append(f"line {node.lineno}: {'.' * node.level}{node.module or ''}")
            continue
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            # "from optin import x" imports the module optin.x when x is one.
            modules = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "optin" and parts[1:2] != ["sandbox"]:
                found.append(f"line {node.lineno}: {module}")
    return found


def test_sandbox_imports_no_product_code() -> None:
    folder = Path(optin.__file__).parent / "sandbox"
    paths = sorted(folder.glob("*.py"))
    assert len(paths) > 5
    for path in paths:
        assert product_imports(path) == [], path.name


@pytest.mark.parametrize(
    "source",
    [
        "import optin",
        "import optin.api",
        "import json, optin.store as store",
        "from optin import Manager",
        "from optin.secret import Secret",
        "from .. import errors",
        "from ..api import Manager",
        "def f():\n    from optin import errors",
    ],
)
def test_product_import_detected(tmp_path: Path, source: str) -> None:
    path = tmp_path / "module.py"
    path.write_text(source + "\n", encoding="utf-8")
    assert len(product_imports(path)) == 1


@pytest.mark.parametrize(
    "source",
    [
        "import optin.sandbox.state",
        "from optin.sandbox import state",
        "from optin import sandbox",
        "from .state import Fault",
        "from . import errors",
        "import optional_package",
    ],
)
def test_sandbox_import_allowed(tmp_path: Path, source: str) -> None:
    path = tmp_path / "module.py"
    path.write_text(source + "\n", encoding="utf-8")
    assert product_imports(path) == []
