"""Evaluation / calibration text shipped with the package (nothing may be downloaded at run time)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import MPQError

# Committed slices of a 2016 Wikipedia dump; see mpq_serving/data/ATTRIBUTION.md.
BUILTIN_TEXTS = ("wiki_eval", "wiki_calib")


def load_text(name_or_path: str = "wiki_eval") -> str:
    """A built-in text by name (`wiki_eval`, `wiki_calib`), else the UTF-8 file at that path."""
    if name_or_path in BUILTIN_TEXTS:
        return resources.files("mpq_serving").joinpath("data", f"{name_or_path}.txt").read_text(encoding="utf-8")
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise MPQError(f"text {name_or_path!r} is neither a built-in text {BUILTIN_TEXTS} nor a file")
    return path.read_text(encoding="utf-8")
