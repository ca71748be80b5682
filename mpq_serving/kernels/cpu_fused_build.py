"""Build the fused CPU GEMV (`cpu_fused_gemv.c`) once per machine and load it, or say why it cannot.

Why a small C file compiled with the system's gcc, called through ctypes: measured on these CPUs
(AVX-512 with BF16 / VNNI, no AMX), torch has no weight-only CPU kernel for fp8 or MX weights, and
torch.compile cannot fuse a dequantization into oneDNN's GEMM; a plain C file with AVX-512
intrinsics builds in about a second with no torch headers (a torch C++ extension takes about a minute
and needs ninja), and a ctypes call costs a few microseconds.  It is compiled at first use (or by
`scripts/install.sh`) into a cache keyed by the source, the compiler and torch's OpenMP library, and
linked against the libgomp torch ships, so its threads are torch's own OpenMP pool.

Where it cannot run (no AVX-512, no gcc, a failed build) `load()` returns None and `unavailable()`
the reason, which the kernel's `can_run` reports; the exact-dequantization kernel then runs.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_fused_gemv.c")
FLAGS = ("-O3", "-shared", "-fPIC", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mf16c", "-mfma")
# The bfloat16 path (vdpbf16ps), used only where the CPU reports AVX512-BF16 (`mpq_fused_has_bf16`);
# a compiler too old for the flag builds without it.
BF16_FLAGS = ("-mavx512bf16", "-DMPQ_BF16")
CACHE_ENV = "MPQ_KERNEL_CACHE"


def cache_dir() -> Path:
    """Where built kernels live: $MPQ_KERNEL_CACHE, else ~/.cache/mpq-serving/kernels."""
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "mpq-serving" / "kernels"


def _torch_lib() -> Path:
    return Path(torch.__file__).parent / "lib"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def _library_path(cc: str, flags: tuple[str, ...]) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + version.encode() + " ".join(flags).encode()
                         + str(_torch_lib()).encode()).hexdigest()[:16]
    return cache_dir() / f"cpu_fused_gemv-{key}.so"


def _build(cc: str, flags: tuple[str, ...], target: Path) -> None:
    """Compile into a temporary file and rename it into place: concurrent builders never see half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    lib = _torch_lib()
    cmd = [cc, *flags, str(SOURCE), "-o", tmp, f"-L{lib}", f"-Wl,-rpath,{lib}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return None, f"this CPU runs torch at {torch.backends.cpu.get_cpu_capability()}, the kernel needs AVX-512"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler (gcc / cc / $CC) to build it"
    error: Exception | None = None
    for flags in (FLAGS + BF16_FLAGS, FLAGS):
        try:
            path = _library_path(cc, flags)
            if not path.exists():
                logger.info("building the fused CPU GEMV kernel into %s", path)
                _build(cc, flags, path)
            lib = ctypes.CDLL(str(path))
            break
        except (OSError, RuntimeError) as e:
            error = e
    else:
        logger.warning("fused CPU GEMV kernel unavailable, the dequantizing kernel runs instead: %s", error)
        return None, f"build failed: {str(error).splitlines()[0]}"
    fn = lib.mpq_fused_gemv
    fn.restype = None
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    fn.argtypes = [c_int, ptr, i64, ptr, i64, i64, ptr, c_int, ptr, ptr, ptr, c_int, ptr, c_int, i64, i64, i64, c_int]
    lib.mpq_fused_has_bf16.restype = c_int
    return lib, ""


def load() -> ctypes.CDLL | None:
    """The built library, or None (see `unavailable`)."""
    return _load()[0]


def unavailable() -> str:
    """Why the library cannot be used here, or '' when it can."""
    return _load()[1]


@functools.cache
def has_bf16() -> bool:
    """Whether bfloat16 x is multiplied as bfloat16 (vdpbf16ps) rather than widened to float32 first."""
    lib = load()
    return bool(lib and lib.mpq_fused_has_bf16())


def main() -> None:
    """scripts/install.sh: build now rather than on the first request; a machine that cannot build is told why."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    why = unavailable()
    print("fused CPU GEMV kernel:", why or f"ready (bfloat16 path: {'yes' if has_bf16() else 'no'})")
