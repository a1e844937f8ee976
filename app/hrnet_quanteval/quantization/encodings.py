"""1.22-style weight encodings files: read, every entry checked for what AIMET 1.22 reads, matched to the model.

AIMET 1.22.2's ``set_and_freeze_param_encodings`` looks up ``"<module>.<param>"`` at the top level of the
file (spec 9.5). For every entry of a key it reads ``dtype`` (a missing one is a KeyError), ``eval``s
``is_symmetric`` as a Python expression (a JSON boolean is a TypeError), and takes ``bitwidth``, ``min``,
``max``, ``scale`` and ``offset`` as given. So a file is accepted here only in a shape AIMET 1.22 reads the
same way: entries nested under ``param_encodings`` (what ``sim.export`` writes) are lifted to the top
level, a JSON boolean ``is_symmetric`` becomes the string AIMET writes, a missing ``dtype`` becomes
``"int"`` (each with a one-line notice), and anything else wrong stops the run before any compute, naming
the key, the channel and the value.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Set, Tuple

from torch import nn

from ..errors import InputError
from ..files import user_path

Encodings = Dict[str, List[dict]]
NUMBER_FIELDS = ("min", "max", "scale", "offset")
MIN_BITWIDTH, MAX_BITWIDTH = 4, 32
ENCODINGS_FIX = "pass the .encodings file that belongs to the quantized checkpoint (AIMET 1.22 format)"


@dataclass
class EncodingsFile:
    """A checked encodings file: its entries in the flat shape AIMET 1.22 reads, and what was normalised."""

    path: str
    entries: Encodings
    layout: str  # "flat" or "nested" (under param_encodings)
    notices: List[str] = field(default_factory=list)

    @property
    def bitwidths(self) -> List[int]:
        return sorted({int(v[0]["bitwidth"]) for v in self.entries.values()})

    def write_flat(self, folder: str) -> str:
        """The entries as a flat 1.22 file in ``folder`` (what AIMET 1.22's own reader needs); its path."""
        path = os.path.join(folder, "param_encodings_flat.json")
        with open(path, "w") as f:
            json.dump(self.entries, f, sort_keys=True, indent=4)
        return path


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _problem(path: str, key: str, channel: int, text: str) -> InputError:
    return InputError(f"encodings file {path}: {key}[{channel}] {text}", ENCODINGS_FIX)


def _check_entry(path: str, key: str, channel: int, entry, notes: Dict[str, int]) -> dict:
    """One per-channel entry, checked and normalised to what AIMET 1.22 reads."""
    if not isinstance(entry, dict):
        raise _problem(path, key, channel, f"is a {type(entry).__name__}, not an encoding object")
    entry = dict(entry)
    missing = [name for name in ("bitwidth", "is_symmetric") + NUMBER_FIELDS if name not in entry]
    if missing:
        raise _problem(path, key, channel, f"lacks {', '.join(missing)}")
    if "dtype" not in entry:
        entry["dtype"] = "int"
        notes["dtype"] = notes.get("dtype", 0) + 1
    if entry["dtype"] != "int":
        raise _problem(path, key, channel, f"has dtype {entry['dtype']!r}; only integer encodings (\"int\") are supported")
    bitwidth = entry["bitwidth"]
    if not isinstance(bitwidth, int) or isinstance(bitwidth, bool) or not MIN_BITWIDTH <= bitwidth <= MAX_BITWIDTH:
        raise _problem(path, key, channel, f"bitwidth {bitwidth!r} is not a whole number from {MIN_BITWIDTH} to {MAX_BITWIDTH}")
    symmetric = entry["is_symmetric"]
    if isinstance(symmetric, bool):
        entry["is_symmetric"] = str(symmetric)
        notes["is_symmetric"] = notes.get("is_symmetric", 0) + 1
    elif symmetric not in ("True", "False"):
        raise _problem(path, key, channel, f"is_symmetric {symmetric!r} is not \"True\" or \"False\"")
    for name in NUMBER_FIELDS:
        if not _number(entry[name]):
            raise _problem(path, key, channel, f"{name} {entry[name]!r} is not a finite number")
    if not entry["scale"] > 0:
        raise _problem(path, key, channel, f"scale {entry['scale']!r} is not positive")
    if entry["offset"] != round(entry["offset"]):
        raise _problem(path, key, channel, f"offset {entry['offset']!r} is not a whole number")
    if entry["min"] > entry["max"]:
        raise _problem(path, key, channel, f"min {entry['min']!r} is above max {entry['max']!r}")
    return entry


def read_encodings(path: str) -> EncodingsFile:
    """A 1.22-style weight encodings file, flat or nested under ``param_encodings``, every entry checked."""
    with user_path("encodings file", path, "pass --encodings with a readable .encodings file"):
        if os.path.isdir(path):
            raise IsADirectoryError(21, "Is a directory", path)
        with open(path, "rb") as f:
            raw = f.read()
    try:
        content = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise InputError(f"encodings file {path} is not JSON ({error})", "download it again") from None
    layout = "flat"
    if isinstance(content, dict) and "param_encodings" in content:
        content, layout = content["param_encodings"], "nested"
    if not isinstance(content, dict) or not content:
        raise InputError(f"encodings file {path} holds no parameter encodings", "pass a 1.22-style .encodings file")
    notes: Dict[str, int] = {}
    entries: Encodings = {}
    for key, channels in content.items():
        if not isinstance(channels, list) or not channels:
            raise InputError(f"encodings file {path}: {key!r} is not a list of per-channel encodings", ENCODINGS_FIX)
        entries[key] = [_check_entry(path, key, c, entry, notes) for c, entry in enumerate(channels)]
        if len({e["bitwidth"] for e in entries[key]}) > 1:
            raise InputError(f"encodings file {path}: {key} mixes bitwidths across channels", ENCODINGS_FIX)
    notices = []
    if layout == "nested":
        notices.append(f"{path}: entries read from its param_encodings section (AIMET 1.22 itself looks only at the top level)")
    if notes.get("is_symmetric"):
        count = notes["is_symmetric"]
        notices.append(f"{path}: {count} entries give is_symmetric as a JSON boolean; read as the string AIMET writes")
    if notes.get("dtype"):
        notices.append(f"{path}: {notes['dtype']} entries have no dtype; read as \"int\"")
    return EncodingsFile(path, entries, layout, notices)


def model_param_channels(model: nn.Module) -> Dict[str, int]:
    """``<conv>.weight`` and ``<conv>.bias`` of every convolution, with its output channels: what a sim quantizes."""
    channels = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            channels[f"{name}.weight"] = module.out_channels
            channels[f"{name}.bias"] = module.out_channels
    return channels


def match_encodings(
    encodings: EncodingsFile, channels: Mapping[str, int], enabled: Optional[Set[str]] = None
) -> Tuple[List[str], List[str]]:
    """Every key names a parameter of a quantized module, with one entry per output channel.

    Returns (keys of enabled quantizers, keys of others). ``enabled`` defaults to the weights, as under the
    per-channel config; a key of a parameter whose quantizer is disabled (a ``*.bias``) is set and frozen as
    AIMET 1.22 does, and quantizes nothing.
    """
    used: List[str] = []
    others: List[str] = []
    for key, entries in encodings.entries.items():
        if key not in channels:
            near = [k for k in channels if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0]]
            hint = f"; the model has {near}" if near else ""
            raise InputError(
                f"encodings file {encodings.path}: key {key!r} matches no parameter of the model{hint}",
                "use the encodings that belong to the quantized checkpoint (same module names)",
            )
        if len(entries) != channels[key]:
            raise InputError(
                f"encodings file {encodings.path}: {key} has {len(entries)} entries for {channels[key]} output channels",
                "use the encodings that belong to the quantized checkpoint",
            )
        on = key in enabled if enabled is not None else key.endswith(".weight")
        (used if on else others).append(key)
    return used, others
