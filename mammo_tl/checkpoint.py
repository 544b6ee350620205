"""Loading model weights safely, and refusing an untrained model where a trained one is needed.

* A ``.pkl`` file is unpickled, which runs any code it holds: it is read only from detectron2's model zoo
  or when ``MODEL.WEIGHTS_TRUSTED_PICKLE`` says the file is trusted. :func:`convert_pickle_weights`
  (``tools/convert_weights.py``) turns a trusted ``.pkl`` into a pickle-free ``.pth`` once.
* Every other file goes through ``torch.load(weights_only=True)``.
* ``purpose="predict"`` / ``"evaluate"``: every model weight must come from the checkpoint; an empty
  MODEL.WEIGHTS, a file without model weights or one missing some of the model's weights is refused.
  ``purpose="train"``: starting from random initialisation or a partial (e.g. ImageNet) checkpoint is
  allowed and logged; a checkpoint matching none of the model's weights is refused.
* ``--resume`` with an empty or dangling ``OUTPUT_DIR/last_checkpoint`` names that file and what it holds.
* Every checkpoint (periodic, best, final) and ``last_checkpoint`` is written whole or not at all
  (:func:`mammo_tl.files.durable_write`: a temporary file, fsync, rename), so a kill while one is written keeps
  the previous file, and ``last_checkpoint`` only ever names a complete one. ``--resume`` writes
  ``model_final.pth`` again when it is missing or unreadable (an earlier version's kill mid-write) and the run it
  resumes had already reached its last iteration, since training would not run again to write it.
"""
from __future__ import annotations

import logging
import os
import pickle
import posixpath
from collections import Counter
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from .files import durable_write

if TYPE_CHECKING:
    from detectron2.config import CfgNode

logger = logging.getLogger(__name__)

PURPOSES = ("train", "predict", "evaluate")
ZOO_HOST, ZOO_PATH = "dl.fbaipublicfiles.com", "/detectron2/"
# Set by detectron2 from the config on every forward pass, never learned: a checkpoint may lack them.
_CONFIG_BUFFERS = ("pixel_mean", "pixel_std")


class WeightsError(ValueError):
    """Weights that cannot be used for the purpose at hand; the message names the file and the cause."""


def is_model_zoo_url(path: str | os.PathLike) -> bool:
    """True for detectron2's model zoo: ``detectron2://...``, ``https://dl.fbaipublicfiles.com/detectron2/...``."""
    path = str(path)
    if path.startswith("detectron2://"):
        path = "https://" + ZOO_HOST + ZOO_PATH + path[len("detectron2://"):]
    url = urlparse(path)
    # ".." (also percent-encoded) could climb out of /detectron2/ on the server
    decoded = unquote(url.path)
    return (url.scheme == "https" and url.netloc == ZOO_HOST and decoded.startswith(ZOO_PATH)
            and ".." not in decoded.split("/") and posixpath.normpath(decoded).startswith(ZOO_PATH))


def _untrusted_pickle_message(path):
    return (f"{path}: refusing to unpickle a .pkl file of unknown origin (unpickling runs any code the file "
            f"holds). A .pkl is read only from detectron2's model zoo (detectron2://... or "
            f"https://{ZOO_HOST}{ZOO_PATH}...). For a file you trust, convert it once with "
            f"`python tools/convert_weights.py --trusted {path} OUT.pth` and use OUT.pth, or set "
            f"MODEL.WEIGHTS_TRUSTED_PICKLE True")


def _group(keys, limit=6):
    """'roi_heads.box_predictor (4), ...': keys counted by their first two name components."""
    groups = Counter(".".join(k.split(".")[:2]) for k in keys)
    shown = ", ".join(f"{g} ({n})" for g, n in sorted(groups.items())[:limit])
    return shown + (f", ... ({len(groups) - limit} more groups)" if len(groups) > limit else "")


class MammoCheckpointer(DetectionCheckpointer):
    """detectron2's DetectionCheckpointer with the checks of this module (see its docstring).

    ``purpose``: "train", "predict" or "evaluate". ``trusted_pickle``: MODEL.WEIGHTS_TRUSTED_PICKLE.
    """

    def __init__(self, model, save_dir="", *, purpose="train", trusted_pickle=False, **kwargs):
        if purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
        super().__init__(model, save_dir, **kwargs)
        self.purpose = purpose
        self.trusted_pickle = bool(trusted_pickle)
        self._source = None  # the path as given (a URL before download), for the trust check and messages

    @classmethod
    def like(cls, other: DetectionCheckpointer, *, purpose: str = "train",
             trusted_pickle: bool = False) -> MammoCheckpointer:
        """A MammoCheckpointer with ``other``'s model, folder and checkpointables."""
        return cls(other.model, other.save_dir, purpose=purpose, trusted_pickle=trusted_pickle,
                   save_to_disk=other.save_to_disk, **other.checkpointables)

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        if not path:
            if self.purpose == "train":
                logger.warning("MODEL.WEIGHTS is empty: training from random initialisation")
                return {}
            raise WeightsError(f"MODEL.WEIGHTS is empty: {self.purpose} needs a trained model's checkpoint, "
                               f"e.g. MODEL.WEIGHTS output/<run>/model_final.pth (an untrained model's boxes "
                               f"are noise)")
        self._source = str(path)
        try:
            return super().load(path, checkpointables)
        except AssertionError as e:
            if "not found" not in str(e):  # fvcore's "Checkpoint ... not found!"
                raise
            raise WeightsError(f"{path}: checkpoint file not found") from None
        finally:
            # detectron2 resets this only on success, and asserts it is unset on the next load
            self._source, self._parsed_url_during_load = None, None

    def save(self, name: str, **kwargs: Any) -> None:
        """fvcore's ``save`` (model, checkpointables and ``kwargs`` to ``<save_dir>/<name>.pth``, then tagged in
        ``last_checkpoint``), each file written whole or not at all."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"checkpoint name {name!r} is not a file name")
        self.logger.info("Saving checkpoint to %s", save_file)
        durable_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """``<save_dir>/last_checkpoint`` names ``last_filename_basename``, replaced whole."""
        durable_write(os.path.join(self.save_dir, "last_checkpoint"),
                      lambda f: f.write(last_filename_basename.encode("utf-8")))

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        if resume and self.has_checkpoint():
            checkpoint = self.load(self._last_checkpoint())
            self._complete_final(checkpoint)
            return checkpoint
        return self.load(path, checkpointables=[])

    def _complete_final(self, checkpoint):
        """After a resume: an unreadable model_final.pth (left by a kill while it was written) is removed, and
        written again from the resumed state when that state is the last iteration's (training would not run
        again to write it); otherwise the resumed training writes it when it ends."""
        if self.purpose != "train" or not self.save_to_disk:
            return
        final = os.path.join(self.save_dir, "model_final.pth")
        if os.path.exists(final):
            try:
                torch.load(final, map_location="cpu", weights_only=True)
                return
            except Exception as e:  # torch reports a damaged file in several exception types
                logger.warning("%s: unreadable (%s: %s), probably cut short when a run was stopped while writing "
                               "it; removed, and written again", final, type(e).__name__,
                               str(e).strip().splitlines()[0] if str(e).strip() else "")
                os.remove(final)
        max_iter = getattr(self.checkpointables.get("trainer"), "max_iter", None)
        iteration = checkpoint.get("iteration")
        if isinstance(max_iter, int) and isinstance(iteration, int) and iteration >= max_iter - 1:
            logger.info("%s: the resumed checkpoint is the last iteration's (%d); writing model_final.pth from it",
                        self.save_dir, iteration)
            self.save("model_final", iteration=iteration)

    def _last_checkpoint(self):
        tag = os.path.join(self.save_dir, "last_checkpoint")
        try:
            with open(tag) as f:
                name = f.read().strip()
        except OSError as e:
            raise WeightsError(f"{tag}: cannot be read ({type(e).__name__}: {e})") from None
        present = sorted(f for f in os.listdir(self.save_dir) if f.endswith(".pth"))
        hint = (f"checkpoints in {self.save_dir}: {', '.join(present) or 'none'}. Write the name of the one to "
                f"resume from into {tag}, or delete {tag} to start from MODEL.WEIGHTS")
        if not name:
            raise WeightsError(f"{tag} is empty: --resume needs it to name the checkpoint to resume from; {hint}")
        path = os.path.join(self.save_dir, name)
        if not os.path.isfile(path):
            raise WeightsError(f"{tag} names {name!r}, which is not a file in {self.save_dir}; {hint}")
        return path

    def _load_file(self, filename):
        source = self._source or filename
        if filename.endswith(".pkl"):
            if not (self.trusted_pickle or is_model_zoo_url(source)):
                raise WeightsError(_untrusted_pickle_message(source))
            try:
                return super()._load_file(filename)
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError) as e:
                raise WeightsError(f"{source}: not a readable detectron2/Caffe2 .pkl ({type(e).__name__}: "
                                   f"{e})") from None
        if filename.endswith(".pyth"):
            # detectron2 reads pycls files with a plain torch.load; same format, weights-only here
            data = self._torch_load(filename)
            if not isinstance(data, dict) or "model_state" not in data:
                raise WeightsError(f"{source}: a .pyth (pycls) checkpoint must hold 'model_state'")
            state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)

    def _torch_load(self, f):
        source = self._source or f
        try:
            data = torch.load(f, map_location=torch.device("cpu"), weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WeightsError(f"{source}: not a plain-tensor checkpoint; torch.load(weights_only=True) refused "
                               f"it ({first}). Only tensors, numbers, strings and containers of them are "
                               f"read") from None
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise WeightsError(f"{source}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: "
                               f"{e})") from None
        if not isinstance(data, dict):
            raise WeightsError(f"{source}: holds no model weights (a {type(data).__name__}, expected a dict "
                               f"with 'model' or a state dict)")
        return data

    def _load_model(self, checkpoint):
        source = self._source or "checkpoint"
        state = checkpoint.get("model")
        if not isinstance(state, dict) or not state:
            raise WeightsError(f"{source}: holds no model weights ('model' is "
                               f"{'empty' if isinstance(state, dict) else type(state).__name__})")
        not_tensors = [k for k, v in state.items() if not isinstance(v, (torch.Tensor, np.ndarray))]
        if not_tensors:
            found = ", ".join(f"{k} ({type(state[k]).__name__})" for k in not_tensors[:8])
            raise WeightsError(f"{source}: holds no model weights: expected a 'model' dict of tensors (or a "
                               f"plain state dict), found {found}{' ...' if len(not_tensors) > 8 else ''}")
        expected = [k for k in self.model.state_dict() if k not in _CONFIG_BUFFERS]
        ckpt_keys = list(state)
        incompatible = super()._load_model(checkpoint)
        missing = set(incompatible.missing_keys) | {k for k, _, _ in incompatible.incorrect_shapes}
        missing = sorted(k for k in expected if k in missing)
        loaded = len(expected) - len(missing)
        if loaded == 0:
            raise WeightsError(f"{source}: none of the model's {len(expected)} weights are in the checkpoint "
                               f"(its {len(ckpt_keys)} entries: {_group(ckpt_keys)}; the model's: "
                               f"{_group(expected)}). Is it a checkpoint of another architecture?")
        if missing and self.purpose != "train":
            shapes = {k: (a, b) for k, a, b in incompatible.incorrect_shapes}
            detail = ", ".join(f"{k}" + (f" (shape {shapes[k][0]} in the checkpoint, {shapes[k][1]} in the model)"
                                         if k in shapes else "") for k in missing[:5])
            raise WeightsError(f"{source}: {len(missing)} of {len(expected)} model weights are not in the "
                               f"checkpoint ({_group(missing)}; e.g. {detail}): {self.purpose} needs a "
                               f"checkpoint of a model trained with this config")
        if missing:
            logger.warning("%s: loaded %d of %d model weights; not in the checkpoint, so initialised at random: "
                           "%s", source, loaded, len(expected), _group(missing))
        else:
            logger.info("%s: loaded all %d model weights", source, len(expected))
        return incompatible


def load_model_weights(model: torch.nn.Module, cfg: CfgNode, *, purpose: str, resume: bool = False) -> dict[str, Any]:
    """Load cfg.MODEL.WEIGHTS (or, with ``resume`` and an OUTPUT_DIR/last_checkpoint, that checkpoint) into
    ``model`` for ``purpose`` ("train", "predict" or "evaluate"); raises :class:`WeightsError` naming the
    file and what is wrong. tools/train_net.py --eval-only calls it with purpose="evaluate"."""
    checkpointer = MammoCheckpointer(model, cfg.OUTPUT_DIR, purpose=purpose,
                                     trusted_pickle=cfg.MODEL.WEIGHTS_TRUSTED_PICKLE)
    return checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)


def _as_tensor(key, value, source):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    array = np.asarray(value)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise WeightsError(f"{source}: entry {key!r} is not a numeric array ({type(value).__name__})")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return torch.from_numpy(np.array(array, copy=True))


def convert_pickle_weights(src: str | os.PathLike, dst: str | os.PathLike, *, trusted: bool = False) -> dict[str, Any]:
    """Read a ``.pkl`` weights file once and write its weights pickle-free to ``dst`` (a ``.pth`` that
    ``torch.load(weights_only=True)`` reads). detectron2's ``__author__`` / ``matching_heuristics`` are kept,
    so loading ``dst`` renames Caffe2 weights exactly as loading ``src`` would. ``src`` must be a model zoo
    URL unless ``trusted``. Returns a summary dict."""
    src, dst = str(src), str(dst)
    if not src.endswith(".pkl"):
        raise WeightsError(f"{src}: expected a .pkl file to convert")
    if not dst.endswith(".pth"):
        raise WeightsError(f"{dst}: the converted file must end in .pth (detectron2 unpickles any .pkl)")
    if not (trusted or is_model_zoo_url(src)):
        raise WeightsError(_untrusted_pickle_message(src))
    reader = MammoCheckpointer(torch.nn.Module(), trusted_pickle=True)
    reader._source = src
    local = PathManager.get_local_path(src) if not os.path.isfile(src) else src
    if not os.path.isfile(local):
        raise WeightsError(f"{src}: file not found")
    data = reader._load_file(local)
    state = data.get("model") if isinstance(data, dict) else None
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{src}: holds no model weights")
    out = {"model": {k: _as_tensor(k, v, src) for k, v in state.items()}, "converted_from": src}
    dropped = []
    for k, v in data.items():
        if k == "model":
            continue
        if isinstance(v, (str, bool, int, float)) or v is None:
            out[k] = v
        else:
            dropped.append(k)
    if dropped:
        logger.warning("%s: left out entries that are not weights: %s", src, ", ".join(sorted(dropped)))
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = dst + ".tmp"
    try:
        torch.save(out, tmp)
        torch.load(tmp, map_location="cpu", weights_only=True)  # the point of the file: it must load so
        os.replace(tmp, dst)
    except OSError as e:
        raise WeightsError(f"{dst}: cannot be written ({type(e).__name__}: {e})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"tensors": len(out["model"]), "author": out.get("__author__", ""),
            "matching_heuristics": bool(out.get("matching_heuristics", False)), "dropped": dropped}
