"""Where mammo_tl works around detectron2 or torch, in one place.

The build installed by default is the PyPI wheel ``sal-detectron2==0.7.2`` (detectron2 commit a59f0563 plus
a Python 3.11 fix). Its compiled extension ``detectron2._C`` targets CPython 3.10 and is not loaded on other
versions, which mammo_tl does not need: Faster R-CNN with axis-aligned boxes takes ROIAlign and NMS from
torchvision, and ``COCOEvaluator`` falls back to pycocotools' official COCOeval by itself (it logs which runs).
Rotated boxes and deformable convolution, which need it, are not used.

The context managers below concern every detectron2 build: :func:`cpu_ddp` (multi-process training on CPU)
and :func:`known_warnings_quiet` (a torch deprecation warning detectron2 triggers on import). Neither changes
anything outside its ``with`` block.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def check_detectron2() -> None:
    """Raise ImportError with an actionable message when detectron2 cannot build models."""
    try:
        import detectron2  # noqa: F401
        from detectron2.modeling import build_model  # noqa: F401
    except Exception as e:  # pragma: no cover - exercised only on a broken install
        raise ImportError(
            "mammo_tl needs detectron2, and `from detectron2.modeling import build_model` failed "
            f"({type(e).__name__}: {e}). Run `make install` (see README, section Install)."
        ) from e


@contextlib.contextmanager
def known_warnings_quiet() -> Iterator[None]:
    """Within the block, torch's deprecation warning for torch.jit.script (torch >= 2.10 warns on every call,
    and detectron2 calls it while its modules are imported) is not shown; filters are restored after."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script_method.*deprecated", category=FutureWarning)
        yield


@contextlib.contextmanager
def cpu_ddp() -> Iterator[None]:
    """Within the block, detectron2's trainers can run multi-process on CPU (gloo).

    Every detectron2 build's ``create_ddp_model`` passes ``device_ids=[local_rank]`` to
    DistributedDataParallel, which torch rejects for a CPU module. While the block runs, the function passes
    ``device_ids=None`` for CPU models and changes nothing on GPU; detectron2's own is restored after.
    """
    import detectron2.engine.defaults as d2_defaults

    original = d2_defaults.create_ddp_model

    def create_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False,
                         **kwargs) -> torch.nn.Module:
        if "device_ids" not in kwargs:
            param = next(model.parameters(), None)
            if param is not None and param.device.type == "cpu":
                kwargs["device_ids"] = None
        return original(model, fp16_compression=fp16_compression, **kwargs)

    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original
