"""Import hook run at interpreter start-up in `.venv-sglang` (via a `.pth` line the install script writes).

Cheap at start-up: it imports nothing heavy itself, and acts only on two imports:
- `torchvision`, under a CPU build of torch: defines the plain-torch `nms` / `qnms` ops first (see
  torchvision_ops), since the PyPI torchvision's compiled ops need CUDA torch;
- `sgl_kernel`, when SGLang's CPU engine is selected (`SGLANG_USE_CPU_ENGINE=1`) and no installed
  package provides it: serves `sgl_kernel_torch` under that name.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

_SHIM = "mpq_serving.integrations.sglang.cpu_support.sgl_kernel_torch"


class _PrepareTorchvision(importlib.abc.MetaPathFinder):
    """First in sys.meta_path: registers the missing ops, then lets the normal finders load torchvision."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            import torch

            if torch.version.cuda is None:
                from .torchvision_ops import register

                register()
        return None


class _SglKernelFallback(importlib.abc.MetaPathFinder):
    """Last in sys.meta_path: only reached when no installed package provides `sgl_kernel`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "sgl_kernel":
            return None
        spec = importlib.util.find_spec(_SHIM)
        return importlib.util.spec_from_file_location("sgl_kernel", spec.origin)


def install() -> None:
    if not any(isinstance(f, _PrepareTorchvision) for f in sys.meta_path):
        sys.meta_path.insert(0, _PrepareTorchvision())
    if os.environ.get("SGLANG_USE_CPU_ENGINE") == "1" and not any(isinstance(f, _SglKernelFallback) for f in sys.meta_path):
        sys.meta_path.append(_SglKernelFallback())


install()
