"""Engine tests: skipped where the engine is not installed, but failed when MPQ_REQUIRE_ENGINE names it.

CI runs `MPQ_REQUIRE_ENGINE=vllm .venv-vllm/bin/python -m pytest tests/engines/vllm`, so a broken
install there is a failure, not a silent skip. Each engine's tests live in tests/engines/<engine>/.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ENGINE_MODULES = {"vllm": "vllm", "sglang": "sglang"}


def required_engines() -> set[str]:
    return {name.strip() for name in os.environ.get("MPQ_REQUIRE_ENGINE", "").split(",") if name.strip()}


def engine_of(path: Path) -> str | None:
    parts = Path(path).resolve().parts
    if "engines" in parts:
        index = parts.index("engines")
        if index + 1 < len(parts) and parts[index + 1] in ENGINE_MODULES:
            return parts[index + 1]
    return None


def engine_importable(engine: str) -> bool:
    """Cheap check (no import): vLLM takes seconds to import. For vLLM `.venv-vllm` counts too."""
    if importlib.util.find_spec(ENGINE_MODULES[engine]) is not None:
        return True
    if engine == "vllm":  # the tests start the server with .venv-vllm's python (see servers.py)
        return (Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python").exists()
    return False


def pytest_collection_modifyitems(config, items):
    required = required_engines()
    for item in items:
        engine = engine_of(item.path)
        if engine is None or engine_importable(engine):
            continue
        if engine in required:
            item.user_properties.append(("missing_engine", engine))  # failed by _require_engine
        else:
            item.add_marker(pytest.mark.skip(reason=f"{engine} is not installed (bash scripts/install_{engine}.sh)"))


@pytest.fixture(autouse=True)
def _require_engine(request):
    """Fail (not skip) a test whose engine is required by MPQ_REQUIRE_ENGINE but missing."""
    for key, engine in request.node.user_properties:
        if key == "missing_engine":
            pytest.fail(f"MPQ_REQUIRE_ENGINE={engine} but {engine} is not importable: run "
                        f"bash scripts/install_{engine}.sh")
