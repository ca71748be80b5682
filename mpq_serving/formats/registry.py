"""Format name → Format instance; the single place formats are looked up."""

from __future__ import annotations

from typing import TypeVar

from ..errors import UnknownFormatError
from .base import Format

_FORMATS: dict[str, Format] = {}
_ALIASES: dict[str, str] = {}

F = TypeVar("F", bound=type[Format])


def register_format(cls: F) -> F:
    """Class decorator: make a format available by its name and aliases."""
    taken = {a: _ALIASES[a.lower()] for a in (cls.name, *cls.aliases) if _ALIASES.get(a.lower(), cls.name) != cls.name}
    if taken:
        raise ValueError(f"format {cls.name}: name(s) {taken} already belong to other formats")
    instance = cls()
    _FORMATS[cls.name] = instance
    for alias in (cls.name, *cls.aliases):
        _ALIASES[alias.lower()] = cls.name
    return cls


def canonical_name(name: str) -> str:
    """The registered name for a name or alias (case-insensitive); UnknownFormatError otherwise."""
    try:
        return _ALIASES[str(name).lower()]
    except KeyError:
        raise UnknownFormatError(
            f"unknown format {name!r}; known formats: {', '.join(sorted(_FORMATS))}"
        ) from None


def get_format(name: str) -> Format:
    return _FORMATS[canonical_name(name)]


def format_names() -> list[str]:
    return sorted(_FORMATS)
