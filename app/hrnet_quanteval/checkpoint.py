"""Reading checkpoints into plain state dicts without running code from them.

The zoo's ``.pth`` files are whole pickled modules of HRNet's own classes (``models.pose_hrnet....`` or some
other path nobody here has seen). ``load_state_dict`` reads them, and ordinary state-dict files, through
``torch.load`` with a restricted unpickler:

- only tensor and storage rebuilds, ``OrderedDict``, builtin containers and ``torch.Size`` may be *called*;
- any other class the pickle names becomes an inert record (nothing imported, nothing run); records keep the
  attributes the pickle gives them, so ``_parameters``/``_buffers``/``_modules`` can be walked;
- a pickle that *calls* anything else (``os.system``, ``builtins.eval``, a class constructor) is refused
  before the call happens.
"""
from __future__ import annotations

import _compat_pickle
import inspect
import pickle
import types
import warnings
from collections import OrderedDict
from typing import Dict, List, Mapping, Tuple

import torch
from torch import nn

from .data import NUM_JOINTS
from .errors import InputError
from .files import check_readable_file
from .model import PoseHRNet, build_hrnet, is_folded_state, spec_from_state_dict, to_folded_structure

# (module, name) pairs a pickle may call
CALLABLE_ALLOW_LIST = {
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("copyreg", "_reconstructor"),  # instantiates a class without calling its __init__ (protocol 0/1)
}


INPUT_HW = (256, 192)  # (height, width) of the network input
HEATMAP_HW = (64, 48)


class RefusedPickle(Exception):
    """The pickle tried to call something outside the allow-list."""


class _RefusingMeta(type):
    """Metaclass of inert record classes: creating an instance by *calling* the class is refused."""

    def __call__(cls, *args, **kwargs):
        raise RefusedPickle(f"the pickle calls {cls.__qualname__}{_short(args)}, which is not on the allow-list")


def _short(args) -> str:
    text = repr(args)
    return text if len(text) <= 80 else text[:77] + "...)"


class InertRecord(metaclass=_RefusingMeta):
    """Stand-in for an instance of a class the pickle names: holds its state, runs nothing."""

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __setitem__(self, key, value) -> None:  # dict subclasses (yacs CfgNode) are filled item by item
        self.__dict__.setdefault("_items", {})[key] = value

    def append(self, value) -> None:  # list subclasses
        self.__dict__.setdefault("_list", []).append(value)

    def extend(self, values) -> None:
        self.__dict__.setdefault("_list", []).extend(values)


_record_classes: Dict[Tuple[str, str], type] = {}


def _record_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _record_classes:
        _record_classes[key] = _RefusingMeta(name, (InertRecord,), {"__module__": module, "__qualname__": f"{module}.{name}"})
    return _record_classes[key]


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        # protocol 2 pickles (torch.save's default) spell Python 2 names: __builtin__.set and the like
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in CALLABLE_ALLOW_LIST:
            return super().find_class(module, name)
        if module == "torch" and name.endswith("Storage"):  # storage type tags (torch 1.x zip format)
            return getattr(torch, name)
        return _record_class(module, name)


def _safe_load(file, **kwargs):
    return SafeUnpickler(file, **kwargs).load()


safe_pickle = types.ModuleType("hrnet_quanteval_safe_pickle")
safe_pickle.Unpickler = SafeUnpickler  # type: ignore[attr-defined]
safe_pickle.load = _safe_load  # type: ignore[attr-defined]


def _collect(record, prefix: str, out: "OrderedDict[str, torch.Tensor]") -> None:
    """Walk an inert (or real) module: its parameters and buffers, then its children, in registration order."""
    state = record.__dict__
    for group in ("_parameters", "_buffers"):
        for name, tensor in (state.get(group) or {}).items():
            if isinstance(tensor, torch.Tensor):
                out[prefix + name] = tensor.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _collect(child, f"{prefix}{name}.", out)


def _looks_like_module(obj) -> bool:
    return isinstance(obj, (InertRecord, nn.Module)) and "_modules" in obj.__dict__


def load_state_dict(path: str) -> "OrderedDict[str, torch.Tensor]":
    """The tensors of a checkpoint: a state dict, ``{"state_dict": ...}``, or a whole pickled module."""
    check_readable_file(path, "checkpoint", "pass the path of a .pth file you can read")
    kwargs = {"map_location": "cpu", "pickle_module": safe_pickle}
    if "weights_only" in inspect.signature(torch.load).parameters:
        kwargs["weights_only"] = False  # the restriction is ours: torch's own one cannot read whole modules
    try:
        with warnings.catch_warnings():
            # old-format whole-module pickles carry class source that cannot be compared with inert records
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, **kwargs)
    except RefusedPickle as refused:
        raise InputError(
            f"checkpoint {path} was refused: {refused}",
            "this file tries to run code when loaded; do not use it, download the checkpoint again",
        ) from None
    except Exception as error:  # torch raises many types for bad files
        raise InputError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {error})",
            "pass a PyTorch .pth file (a state dict or a whole pickled model)",
        ) from None
    if _looks_like_module(obj):
        state: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        _collect(obj, "", state)
        obj = state
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"checkpoint {path} holds a {type(obj).__name__}, not model weights", "pass a state dict")
    return _normalise_keys(OrderedDict(obj))


def _normalise_keys(state: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
    """Drop wrapper prefixes: ``module.`` (DataParallel) and AIMET's ``_module_to_wrap.``."""
    prefix = "module."
    if all(k.startswith(prefix) for k in state):
        state = OrderedDict((k[len(prefix):], v) for k, v in state.items())
    return OrderedDict((k.replace("._module_to_wrap.", "."), v) for k, v in state.items())


def state_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], shown: int = 3) -> str:
    """What keeps ``given`` from loading strictly where ``expected`` is: missing and extra keys, wrong shapes."""
    def first(items: List[str]) -> str:
        return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")

    missing = [k for k in expected if k not in given]
    extra = [k for k in given if k not in expected]
    shapes = [f"{k} is {tuple(given[k].shape)}, not {tuple(v.shape)}" for k, v in expected.items()
              if k in given and tuple(given[k].shape) != tuple(v.shape)]
    parts = [f"missing {first(missing)}"] if missing else []
    parts += [f"unexpected {first(extra)}"] if extra else []
    parts += [first(shapes)] if shapes else []
    return "; ".join(parts)


def load_hrnet(path: str) -> PoseHRNet:
    """An HRNet of the shape the checkpoint describes (BN-folded or not), with its weights loaded strictly, and
    checked against what the evaluation needs before any compute: 17 COCO joints, finite weights, one
    forward pass of a 256x192 input giving 17 heatmaps of 64x48."""
    state = load_state_dict(path)
    fix = "pass an HRNet pose checkpoint for COCO's 17 keypoints (HRNet-W32 256x192, or the zoo's files)"
    try:
        spec = spec_from_state_dict(state)
        model = build_hrnet(spec)
        if is_folded_state(state):
            to_folded_structure(model)
        mismatch = state_mismatch(model.state_dict(), state)
        if mismatch:
            raise InputError(f"checkpoint {path} does not fill the HRNet it describes: {mismatch}", fix)
        model.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError, KeyError, IndexError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"checkpoint {path} is not an HRNet pose model: {first}", fix) from None
    if spec.num_joints != NUM_JOINTS:
        raise InputError(
            f"checkpoint {path} predicts {spec.num_joints} joints, COCO person keypoints have {NUM_JOINTS} "
            "(16 is an MPII model)", fix,
        )
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise InputError(f"checkpoint {path} holds NaN or infinite values in {', '.join(broken[:3])}", fix)
    try:
        with torch.no_grad():
            out = model(torch.zeros((1, 3) + INPUT_HW))
    except RuntimeError as error:
        raise InputError(f"checkpoint {path} does not run as an HRNet: {str(error).splitlines()[0]}", fix) from None
    if tuple(out.shape) != (1, NUM_JOINTS) + HEATMAP_HW:
        raise InputError(f"checkpoint {path} gives heatmaps of shape {tuple(out.shape)}, not (1, 17, 64, 48)", fix)
    return model
