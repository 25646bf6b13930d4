"""The README's lifecycle block and command list stay true to the code."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from optin.cli import cli, render_readme

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_lifecycle_block_current() -> None:
    text = README.read_text(encoding="utf-8")
    assert render_readme(text) == text, "run `make readme` to regenerate the block"


def test_readme_commands_exist() -> None:
    text = README.read_text(encoding="utf-8")
    commands = {
        line.split()[1]
        for line in text.splitlines()
        if line.startswith(".venv/bin/optin ") and not line.split()[1].startswith("-")
    }
    assert commands, "the README lists no optin commands"
    for command in sorted(commands):
        result = CliRunner().invoke(cli, [command, "--help"])
        assert result.exit_code == 0, f"optin {command} --help failed: {result.output}"
