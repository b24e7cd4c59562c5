"""Lets the registry's torchvision wheel import beside the CPU build of torch.

Qwen-VL image processing in transformers and vLLM imports torchvision. The only torchvision
built for torch 2.13 on x86_64 is a CUDA build: its C++ operators link torch's CUDA libraries,
which the CPU build lacks, so they do not load. torchvision copes with that everywhere but in
one place: at import it registers fake kernels for ``nms`` and ``qnms`` unconditionally, and
fails (``operator torchvision::nms does not exist``), taking every importer of transformers'
image processors — and ``import peft`` — down with it. The image transforms themselves are
plain torch.

``make install`` writes ``tinsmith-torchvision.pth`` into the environment, so every Python
process (server, Ray workers, vLLM's engine processes, clients) imports this module at start.
It installs an import hook that runs only when ``torchvision.extension`` is imported: after
torchvision has tried to load its operators, and only if that failed, it declares the two
operator schemas, with a plain-torch CPU kernel for ``nms``. Nothing else is touched; without
torchvision installed, or with one whose operators load (any GPU install), the hook does
nothing. torchvision's other C++ operators (roi_align, deform_conv2d, image and video decoding)
stay unavailable on the CPU stack; nothing in tinsmith needs them.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_TARGET = "torchvision.extension"
_declared: list[object] = []  # keeps the torch.library.Library alive


def _nms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, by decreasing score."""
    import torch

    order = torch.argsort(scores, descending=True)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    alive = torch.ones(len(order), dtype=torch.bool)
    for pos, idx in enumerate(order.tolist()):
        if not alive[pos]:
            continue
        keep.append(idx)
        rest = order[pos + 1 :]
        w = (torch.minimum(x2[rest], x2[idx]) - torch.maximum(x1[rest], x1[idx])).clamp(min=0)
        h = (torch.minimum(y2[rest], y2[idx]) - torch.maximum(y1[rest], y1[idx])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[rest] + areas[idx] - inter)
        alive[pos + 1 :] &= iou <= iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def declare_missing_ops() -> None:
    """Declare ``torchvision::nms`` and ``torchvision::qnms`` (nms with a CPU kernel)."""
    import torch

    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _nms, "CPU")
    _declared.append(lib)


class _AfterExtension(importlib.abc.Loader):
    """Runs torchvision.extension, then declares the operators it failed to load."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        if not module._has_ops() and not _declared:
            declare_missing_ops()


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _AfterExtension(spec.loader)
        return spec


def install() -> None:
    """Add the import hook (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


PTH_NAME = "tinsmith-torchvision.pth"
# A .pth line starting with "import" runs at interpreter start; harmless once tinsmith is gone.
PTH_LINE = (
    "import importlib.util as u; "
    'u.find_spec("tinsmith") and __import__("tinsmith.torchvision_compat")'
)


def write_pth() -> Path:
    """Write the .pth that loads this module into the environment's site-packages."""
    path = Path(sysconfig.get_path("purelib")) / PTH_NAME
    path.write_text(PTH_LINE + "\n")
    return path


install()

if __name__ == "__main__":
    if sys.argv[1:] != ["--install-pth"]:
        sys.exit("usage: python -m tinsmith.torchvision_compat --install-pth")
    print(f"wrote {write_pth()}")
