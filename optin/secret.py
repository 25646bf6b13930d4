"""A wrapper that keeps secret strings out of reprs, logs and messages."""

from __future__ import annotations

from typing import Final

PLACEHOLDER: Final = "[secret]"


class Secret:
    """A token, code, verifier or client secret.

    ``str()`` and ``repr()`` show a fixed placeholder; only :meth:`reveal`
    returns the value, so that printing a wrapped object never leaks it.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({PLACEHOLDER!r})"

    def __str__(self) -> str:
        return PLACEHOLDER

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)
