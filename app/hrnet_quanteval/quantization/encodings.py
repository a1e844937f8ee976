"""1.22-style weight encodings files: reading, checking against the sim's parameter quantizers."""
from __future__ import annotations

import json
from typing import Dict, List

from ..errors import InputError

Encodings = Dict[str, List[dict]]


def read_encodings(path: str) -> Encodings:
    """A 1.22-style weight encodings file: a flat JSON dict ``{"<module>.<param>": [per-channel entries]}``.

    A file that nests its entries under ``param_encodings`` is read from there (AIMET 1.22 itself would
    silently match none of its keys).
    """
    try:
        with open(path) as f:
            content = json.load(f)
    except OSError as error:
        raise InputError(f"encodings file {path} cannot be read ({error.strerror})", "pass --encodings FILE") from None
    except ValueError as error:
        raise InputError(f"encodings file {path} is not JSON ({error})", "download it again") from None
    if isinstance(content, dict) and isinstance(content.get("param_encodings"), dict):
        content = content["param_encodings"]
    if not isinstance(content, dict) or not content:
        raise InputError(f"encodings file {path} holds no parameter encodings", "pass a 1.22-style .encodings file")
    for key, entries in content.items():
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            raise InputError(f"encodings file {path}: entry {key!r} is not a list of per-channel encodings", "check the file")
        missing = {"bitwidth", "is_symmetric", "min", "max", "offset", "scale"} - set(entries[0])
        if missing:
            raise InputError(f"encodings file {path}: entry {key!r} lacks {sorted(missing)}", "check the file")
    return content


def match_encodings(encodings: Encodings, channels: Dict[str, int], path: str) -> None:
    """Every key names a parameter quantizer of the sim, with one entry per output channel."""
    for key, entries in encodings.items():
        if key not in channels:
            near = [k for k in channels if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0]]
            hint = f"; the sim has {near}" if near else ""
            raise InputError(
                f"encodings file {path}: key {key!r} matches no parameter quantizer of the model{hint}",
                "use the encodings that belong to the quantized checkpoint (same module names)",
            )
        if len(entries) != channels[key]:
            raise InputError(
                f"encodings file {path}: {key} has {len(entries)} entries for {channels[key]} output channels",
                "use the encodings that belong to the quantized checkpoint",
            )
