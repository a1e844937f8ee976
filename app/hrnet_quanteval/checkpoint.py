"""Reading model weights from checkpoint files into plain state dicts."""
from __future__ import annotations

import inspect
import os
from collections import OrderedDict
from typing import Dict

import torch
from torch import nn

from .errors import InputError
from .model import PoseHRNet, build_hrnet, is_folded_state, spec_from_state_dict, to_folded_structure


def _torch_load(path: str):
    kwargs = {"map_location": "cpu"}
    if "weights_only" in inspect.signature(torch.load).parameters:
        kwargs["weights_only"] = True  # never run code from a file (torch >= 1.13)
    return torch.load(path, **kwargs)


def load_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a state-dict checkpoint, unwrapped from ``{"state_dict": ...}`` and ``module.``."""
    if not os.path.isfile(path):
        raise InputError(f"checkpoint {path} does not exist", "pass the path of a .pth file")
    try:
        obj = _torch_load(path)
    except Exception as error:  # torch raises many types for bad files
        raise InputError(
            f"checkpoint {path} cannot be read as a PyTorch state dict ({type(error).__name__}: {error})",
            "pass a state dict saved with torch.save(model.state_dict(), path)",
        ) from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict", "pass a state dict")
    prefix = "module."
    if obj and all(k.startswith(prefix) for k in obj):  # saved from DataParallel
        obj = OrderedDict((k[len(prefix):], v) for k, v in obj.items())
    return obj


def load_hrnet(path: str) -> PoseHRNet:
    """An HRNet of the shape the checkpoint describes (BN-folded or not), with its weights loaded strictly."""
    state = load_state_dict(path)
    try:
        model = build_hrnet(spec_from_state_dict(state))
        if is_folded_state(state):
            to_folded_structure(model)
        model.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as error:
        raise InputError(f"checkpoint {path} is not an HRNet pose model: {error}", "pass an HRNet-W32 checkpoint") from None
    return model
