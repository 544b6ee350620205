"""Workarounds for particular detectron2 builds, kept in one place.

Build in use by default: the PyPI wheel ``sal-detectron2==0.7.2`` (detectron2 commit a59f0563 plus a
Python 3.11 fix). Its compiled extension ``detectron2._C`` targets CPython 3.10 only:

* Faster R-CNN with axis-aligned boxes needs none of it: ROIAlign and NMS come from torchvision.
* ``COCOEvaluator(use_fast_impl=True)`` detects the missing extension and falls back to pycocotools'
  official COCOeval by itself (it logs which one runs).
* Rotated boxes and deformable convolution are unavailable; mammo_tl uses neither.
"""
import warnings


def check_detectron2():
    """Raise ImportError with an actionable message when detectron2 cannot build models."""
    try:
        import detectron2  # noqa: F401
        from detectron2.modeling import build_model  # noqa: F401
    except Exception as e:  # pragma: no cover - exercised only on a broken install
        raise ImportError(
            "mammo_tl needs detectron2, and `from detectron2.modeling import build_model` failed "
            f"({type(e).__name__}: {e}). Run `make install` (see README, section Install)."
        ) from e


def quiet_known_warnings():
    # torch >= 2.10 warns on every torch.jit.script, which detectron2 calls at import time.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script_method.*deprecated", category=FutureWarning)


def patch_cpu_ddp():
    """Let detectron2's trainers run multi-process on CPU (gloo).

    Every detectron2 build's ``create_ddp_model`` passes ``device_ids=[local_rank]`` to
    DistributedDataParallel, which torch rejects for a CPU module. The wrapper passes
    ``device_ids=None`` for CPU models and changes nothing on GPU. Idempotent.
    """
    import detectron2.engine.defaults as d2_defaults

    original = d2_defaults.create_ddp_model
    if getattr(original, "_mammo_tl_cpu_patch", False):
        return

    def create_ddp_model(model, *, fp16_compression=False, **kwargs):
        if "device_ids" not in kwargs:
            param = next(model.parameters(), None)
            if param is not None and param.device.type == "cpu":
                kwargs["device_ids"] = None
        return original(model, fp16_compression=fp16_compression, **kwargs)

    create_ddp_model._mammo_tl_cpu_patch = True
    d2_defaults.create_ddp_model = create_ddp_model
