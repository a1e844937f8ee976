"""``diagnose``: which quantized layers cost accuracy, and whether frozen weight encodings fit their weights.

Three signals per quantized layer (a module of the sim with an enabled quantizer, named as in the model; on
aimet-torch 2.x the call sites of a shared ReLU form one layer, as they share one quantizer):

1. **Output SQNR**: the calibrated sim, every quantizer on, against the FP32 model at the same point, on the
   first N crops in loader order. The FP32 reference is the FP32 model with its BatchNorms folded by the
   same adapter (and, on aimet-torch 2.x, its ReLU call sites split like the sim's), so module names match
   the sim's one for one. Forward hooks on both models collect every call of a module (a reused module fires
   several times per forward); signal and noise are pooled over calls and crops:
   ``10 * log10(sum(fp^2) / sum((q - fp)^2))``. It measures the drift accumulated up to that layer.
2. **Sensitivity**: only that layer's quantizers on (input, weight, output), every other quantizer off, the N
   crops run without flip, and the heatmaps compared with the FP32 reference's: heatmap MSE, and the mean
   keypoint displacement in image pixels after decoding (``inference.decode`` and ``inference.to_image``
   with the instances' heatmap-to-image matrices; mean over joints and crops of the Euclidean distance).
   This is AIMET QuantAnalyzer's per-layer analysis ("enable one quantizer group, the rest in FP32"), done
   with our own loop on both generations: QuantAnalyzer reduces each layer to one scalar score from an
   evaluation callback, while this needs the heatmaps and the keypoints. The adapters only turn quantizers
   on and off (``enable_only``, ``restore_quantizers``).
3. **Weight encodings frozen from a file**: per output channel, the file's scale against the scale AIMET
   1.22's TF scheme computes from the same (folded) weights, and the weight SQNR under each grid (1.22's
   quantize-dequantize: clamp, round half away from zero). A layer whose weights lose more than
   ``FLAG_DB`` (6 dB, about one bit) under the file's grid than under the computed grid is *flagged*.

Ranking, most harmful first: flagged layers first; then by a score, the mean of three ranks (displacement
descending, heatmap MSE descending, output SQNR ascending; ties share their mean rank); ties broken by name.
The numbers are deterministic: the same inputs give the same JSON apart from timings.
"""
from __future__ import annotations

import collections
import copy
import json
import math
import os
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import nn

from . import environment, run
from .engines.base import Engine
from .engines.native import NativeEngine
from .errors import InputError, stage
from .files import check_creatable_dir
from .inference import decode, to_image
from .progress import Progress, StageTimer
from .runs import check_writable, in_run_folder, mark, signals_deferred, write_atomic
from .runtypes import EvalSet, RunOptions

SCHEMA_VERSION = 1
DEFAULT_IMAGES = 64
FLAG_DB = 6.0  # a file grid this much worse than the computed one (in weight SQNR) is flagged: about one bit
SQNR_CHUNK = 4  # crops per forward in the SQNR pass, which holds every FP32 layer output (W32: ~100 MB a crop)
TOP = 20  # rows of diagnose.md's table
LEGACY_MIN_RANGE = 0.01  # AIMET 1.22 TfEncodingAnalyzer: the smallest max - min of a computed encoding

KINDS = ((nn.Conv2d, "conv"), (nn.ReLU, "relu"), (nn.Upsample, "upsample"), (nn.Linear, "linear"),
         (nn.Identity, "identity"))


# ---------------------------------------------------------------------------------------------- the command
def run_diagnose(args, command: Sequence[str]) -> int:
    """The ``diagnose`` command: checks like ``eval``, then ``diagnose`` into a new run folder; exit 0."""
    from .artifacts import resolve_sources
    from .checkpoint import load_hrnet
    from .quantization.base import check_bitwidths
    from .quantization.simulate import QuantPlan, check_plan, load_adapter

    with stage("checking the host and the flags"):
        device = run.resolve_device(args.use_cuda)
        check_writable(args.results_dir)
        if args.artifacts_dir:
            check_creatable_dir(args.artifacts_dir, "artifacts folder", "pass --artifacts-dir with a folder you can write to")
        check_bitwidths(args.default_param_bw, args.default_output_bw)
        adapter = load_adapter()
    with stage("opening the dataset"):
        evalset = run.open_evalset(args)
    with stage("fetching the zoo's files"):
        sources = resolve_sources(args, quantize=True)
    for notice in sources.notices:
        print(notice)
    with stage("reading the checkpoints"):
        fp32 = load_hrnet(sources.fp32)  # type: ignore[arg-type]
        quant_source = load_hrnet(sources.quantized) if sources.quantized is not None else None
        plan = QuantPlan(
            param_bw=args.default_param_bw, output_bw=args.default_output_bw,
            calibration_images=args.calibration_images, encodings=sources.encodings,
            fold_batch_norms=sources.quantized is None,
        )
        check_plan(plan, quant_source or fp32)
        if quant_source is not None:
            check_same_network(fp32, quant_source, sources.fp32, sources.quantized)  # type: ignore[arg-type]
    options = RunOptions(args.batch_size, args.workers, args.quiet)

    def work(run_id: str, run_dir: str) -> int:
        result = diagnose(fp32, plan, evalset, device, options, adapter, args.images, quant_source)
        record = {"schema_version": SCHEMA_VERSION, "run_id": run_id, "status": "complete", "command": list(command)}
        record.update(result)
        record["dataset"] = evalset.describe()
        record["artifacts"] = sources.artifacts
        record["environment"] = environment.describe(device)
        write_outputs(run_dir, record)
        print(summary_text(record))
        print(f"\ndiagnose: {os.path.join(run_dir, 'diagnose.json')}")
        return 0

    return in_run_folder(args.results_dir, args.run_id, "diagnose", work)


def check_same_network(fp32: nn.Module, quantized: nn.Module, fp32_path: str, quantized_path: str) -> None:
    """The FP32 checkpoint, folded, has the quantized checkpoint's modules and shapes (else layers cannot be matched)."""
    from .checkpoint import state_mismatch
    from .model import to_folded_structure

    folded = to_folded_structure(copy.deepcopy(fp32))
    mismatch = state_mismatch(quantized.state_dict(), folded.state_dict())
    if mismatch:
        raise InputError(
            f"the FP32 checkpoint {fp32_path}, with its BatchNorms folded, is not the network of the quantized "
            f"checkpoint {quantized_path}: {mismatch}",
            "pass --fp32-checkpoint with the FP32 weights the quantized checkpoint was made from",
        )


# ---------------------------------------------------------------------------------------------- the analysis
def diagnose(
    fp32: nn.Module, plan, evalset: EvalSet, device: torch.device, options: RunOptions, adapter, images: int,
    quantized_source: Optional[nn.Module] = None, engine: Optional[Engine] = None,
) -> Dict[str, object]:
    """Everything ``diagnose.json`` says about the models: ranking, flagged layers, weight encodings, settings,
    timings. ``fp32`` is the FP32 model (folded here); ``quantized_source`` a quantized checkpoint's model to
    wrap as it is (path a), else ``fp32`` is folded and quantized (path b), as ``eval`` does."""
    if images < 1:
        raise InputError(f"--images {images}: at least one crop is needed", "pass --images 1 or more")
    with run.out_of_memory_advice(device, options.batch_size):
        return _diagnose(fp32, plan, evalset, device, options, adapter, images, quantized_source, engine)


def _diagnose(
    fp32: nn.Module, plan, evalset: EvalSet, device: torch.device, options: RunOptions, adapter, images: int,
    quantized_source: Optional[nn.Module], engine: Optional[Engine],
) -> Dict[str, object]:
    from .quantization.base import INPUT_SHAPE
    from .quantization.simulate import quantize

    run.seed_everything(device)
    engine = engine or NativeEngine()
    timer = StageTimer(device)
    instances = evalset.instances
    count = min(images, len(instances))
    calibration = min(plan.calibration_images, len(instances))

    with stage("loading the crops"):
        start = timer.now()
        inputs = first_crops(engine, evalset, count, options, device)
        timer.add("crops", start)
    with stage("folding the FP32 reference"):
        start = timer.now()
        reference = copy.deepcopy(fp32).to(device).eval()
        adapter.fold(reference, INPUT_SHAPE)
        adapter.match_sim_layout(reference)
        timer.add("reference", start)
    source = quantized_source if quantized_source is not None else fp32
    progress = Progress(calibration, f"{plan.key} calibration", quiet=options.quiet)
    calibrate = engine.calibration(evalset, calibration, options, device, progress.update)
    with stage(f"{plan.key.upper()} quantization and calibration"):
        # weights quantized per forward pass (accelerate=False): every weight quantizer stays switchable
        quantized = quantize(source, plan, calibrate, device, adapter, accelerate=False)
    progress.close()
    timer.seconds["sim"] = float(quantized.info.get("sim_seconds", 0.0))
    timer.seconds["calibration"] = float(quantized.info.get("calibration_seconds", 0.0))
    sim = quantized.sim
    layers = adapter.quantized_layers(sim)
    enabled_keys = adapter.enabled_param_keys(sim)

    matrices = instances.heatmap_to_image()[:count]
    with stage("output SQNR"):
        start = timer.now()
        sqnr, depth, fp_heatmaps, whole = output_sqnr(reference, quantized.model, layers, inputs, matrices, options.quiet)
        timer.add("output_sqnr", start)
    order = sorted(layers, key=lambda name: (depth.get(name, len(depth)), name))
    with stage("per-layer sensitivity"):
        start = timer.now()
        sensitivity = layer_sensitivity(adapter, sim, quantized.model, order, inputs, fp_heatmaps, matrices, options.quiet)
        timer.add("sensitivity", start)
    with stage("checking the weight encodings"):
        start = timer.now()
        weights_model = reference if quantized_source is None else quantized_source
        checked = check_weight_encodings(plan.checked_encodings, weights_model, enabled_keys)
        timer.add("weight_encodings", start)

    entries = []
    for name in order:
        module = reference.get_submodule(layers[name]["modules"][0])
        weight = checked.get(f"{name}.weight", {})
        entries.append({
            "layer": name,
            "kind": kind_of(module),
            "depth": depth.get(name),
            "quantizers": layers[name]["quantizers"],
            "calls_per_forward": sqnr[name]["calls"],
            "output_sqnr_db": sqnr[name]["db"],
            "sensitivity_heatmap_mse": sensitivity[name]["heatmap_mse"],
            "sensitivity_displacement_px": sensitivity[name]["displacement_px"],
            "weight_sqnr_file_db": weight.get("file_sqnr_db"),
            "weight_sqnr_computed_db": weight.get("computed_sqnr_db"),
            "file_scale_ratio": weight.get("scale_ratio_median"),
            "flagged": bool(weight.get("flagged", False)),
            "reasons": list(weight.get("reasons", [])),
        })
    ranking = rank(entries)
    info = {k: v for k, v in quantized.info.items() if not k.endswith("_seconds") and k != "aimet"}
    return {
        "images": count,
        "calibration_images": calibration,
        "aimet": adapter.describe(),
        "ranking": [_json_ready(e) for e in ranking],
        "flagged": [e["layer"] for e in ranking if e["flagged"]],
        "whole_model": _json_ready(whole),
        "weight_encodings": {k: _json_ready(v) for k, v in checked.items()},
        "quantization": info,
        "settings": {
            "images": count, "calibration_images": calibration, "param_bw": plan.param_bw, "output_bw": plan.output_bw,
            "encodings": plan.encodings, "flag_threshold_db": FLAG_DB, "flip_test": False,
            "quantized_model": "the quantized checkpoint as it is (path a)" if quantized_source is not None
            else "the FP32 model, BatchNorms folded (path b)",
            "reference": "the FP32 model, BatchNorms folded by the same AIMET",
            "images_requested": images, "quantized_vs_reference_weights": compare_weights(quantized_source, reference),
            "device": str(device), "batch_size": options.batch_size, "workers": options.workers,
        },
        "timings": {k: round(v, 3) for k, v in timer.seconds.items()},
    }


def compare_weights(quantized_source: Optional[nn.Module], reference: nn.Module) -> Optional[Dict[str, object]]:
    """Path (a): are the quantized checkpoint's weights those of the folded FP32 model? If not, every SQNR and
    sensitivity includes that difference (the checkpoint may come from another fold, or from AdaRound)."""
    if quantized_source is None:
        return None
    mine = reference.state_dict()
    signal = noise = 0.0
    for key, value in quantized_source.state_dict().items():
        if key in mine and value.is_floating_point():
            fp = mine[key].detach().double().cpu()
            signal += float(fp.pow(2).sum())
            noise += float((value.detach().double().cpu() - fp).pow(2).sum())
    return {"identical": noise == 0.0, "sqnr_db": _json_ready(_db(signal, noise))}


def first_crops(engine: Engine, evalset: EvalSet, count: int, options: RunOptions, device: torch.device) -> List[torch.Tensor]:
    """The first ``count`` crops in loader order, normalised, as the calibration callback feeds them (batches)."""
    batches: List[torch.Tensor] = []

    class Capture(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batches.append(x.detach().clone())
            return x

    engine.calibration(evalset, count, options, device)(Capture())
    if sum(len(b) for b in batches) != count:
        raise RuntimeError(f"the calibration callback gave {sum(len(b) for b in batches)} crops, not {count}")
    return batches


def _tensor(output) -> Optional[torch.Tensor]:
    """A module's output as a plain tensor (aimet-torch 2.x returns tensor subclasses); lists are flattened."""
    if isinstance(output, torch.Tensor):
        return output.detach().as_subclass(torch.Tensor)
    if isinstance(output, (list, tuple)):
        parts = [t.detach().as_subclass(torch.Tensor).reshape(-1) for t in output if isinstance(t, torch.Tensor)]
        return torch.cat(parts) if parts else None
    return None


def _chunks(batches: Sequence[torch.Tensor], size: int):
    """(first crop index, chunk) over the batches, at most ``size`` crops at a time."""
    first = 0
    for batch in batches:
        for k in range(0, len(batch), size):
            chunk = batch[k: k + size]
            yield first, chunk
            first += len(chunk)


def _displacement(heatmaps: torch.Tensor, reference_joints: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """(B, J) image-pixel distances between the decoded joints of ``heatmaps`` and ``reference_joints``."""
    joints = to_image(decode(heatmaps).cpu().numpy(), matrices)
    return np.linalg.norm(joints[..., :2].astype(np.float64) - reference_joints[..., :2].astype(np.float64), axis=-1)


def output_sqnr(
    reference: nn.Module, model: nn.Module, layers: Dict[str, Dict[str, List[str]]], inputs: Sequence[torch.Tensor],
    matrices: np.ndarray, quiet: bool = True,
):
    """Per layer: pooled output SQNR of ``model`` (the sim) against ``reference``; each layer's depth (order of its
    first call); the reference's heatmaps and decoded joints per crop; and the whole model's heatmap error."""
    module_layer = {module: name for name, layer in layers.items() for module in layer["modules"]}
    pending: Dict[str, Deque[torch.Tensor]] = {module: collections.deque() for module in module_layer}
    sums = {name: [0.0, 0.0, 0] for name in layers}  # signal, noise, calls
    depth: Dict[str, int] = {}

    def fp_hook(module_name: str) -> Callable:
        layer = module_layer[module_name]

        def hook(module, args, output) -> None:
            value = _tensor(output)
            if value is None:
                return
            if layer not in depth:
                depth[layer] = len(depth)
            pending[module_name].append(value.clone())  # later in-place ops (ReLU, +=) must not change it

        return hook

    def sim_hook(module_name: str) -> Callable:
        layer = module_layer[module_name]

        def hook(module, args, output) -> None:
            value = _tensor(output)
            if value is None:
                return
            fp = pending[module_name].popleft().double()
            sums[layer][0] += float(fp.pow(2).sum())
            sums[layer][1] += float((value.double() - fp).pow(2).sum())
            sums[layer][2] += 1

        return hook

    handles = [reference.get_submodule(m).register_forward_hook(fp_hook(m)) for m in module_layer]
    handles += [model.get_submodule(m).register_forward_hook(sim_hook(m)) for m in module_layer]
    total = sum(len(b) for b in inputs)
    progress = Progress(total, "output SQNR", quiet=quiet)
    heatmaps: List[torch.Tensor] = []
    joints: List[np.ndarray] = []
    whole = [0.0, 0.0, 0.0, 0]  # heatmap signal, heatmap noise, displacement sum, joints
    passes = 0
    model.eval()
    try:
        with torch.no_grad():
            for first, chunk in _chunks(inputs, SQNR_CHUNK):
                passes += 1
                fp = _tensor(reference(chunk.clone()))  # AIMET 1.22 quantizes a model input in place: clones
                q = _tensor(model(chunk.clone()))
                left = [m for m, d in pending.items() if d]
                if left:
                    raise RuntimeError(f"the sim called {left[0]} fewer times than the FP32 reference")
                rows = matrices[first: first + len(chunk)]
                fp_joints = to_image(decode(fp).cpu().numpy(), rows)
                heatmaps.append(fp)
                joints.append(fp_joints)
                whole[0] += float(fp.double().pow(2).sum())
                whole[1] += float((q.double() - fp.double()).pow(2).sum())
                moved = _displacement(q, fp_joints, rows)
                whole[2] += float(moved.sum())
                whole[3] += moved.size
                progress.update(len(chunk))
    finally:
        for handle in handles:
            handle.remove()
        progress.close()
    sqnr = {name: {"db": _db(signal, noise), "calls": calls // max(1, passes)} for name, (signal, noise, calls) in sums.items()}
    elements = sum(h.numel() for h in heatmaps)
    summary = {"output_sqnr_db": _db(whole[0], whole[1]), "heatmap_mse": whole[1] / max(1, elements),
               "displacement_px": whole[2] / max(1, whole[3])}
    return sqnr, depth, (heatmaps, joints), summary


def layer_sensitivity(
    adapter, sim, model: nn.Module, order: Sequence[str], inputs: Sequence[torch.Tensor], fp_heatmaps,
    matrices: np.ndarray, quiet: bool = True,
) -> Dict[str, Dict[str, float]]:
    """Per layer, only its quantizers on: heatmap MSE and mean keypoint displacement (px) against the FP32 reference."""
    heatmaps, joints = fp_heatmaps
    reference = torch.cat(heatmaps)
    fp_joints = np.concatenate(joints)
    progress = Progress(len(order), "sensitivity (layers)", quiet=quiet)
    out: Dict[str, Dict[str, float]] = {}
    model.eval()
    try:
        with torch.no_grad():
            for name in order:
                adapter.enable_only(sim, [name])
                noise, moved, first = 0.0, 0.0, 0
                for batch in inputs:
                    q = _tensor(model(batch.clone()))
                    fp = reference[first: first + len(batch)]
                    noise += float((q.double() - fp.double()).pow(2).sum())
                    rows = slice(first, first + len(batch))
                    moved += float(_displacement(q, fp_joints[rows], matrices[rows]).sum())
                    first += len(batch)
                out[name] = {"heatmap_mse": noise / reference.numel(), "displacement_px": moved / fp_joints[..., 0].size}
                progress.update(1)
    finally:
        adapter.restore_quantizers(sim)
        progress.close()
    return out


# ---------------------------------------------------------------------------------------------- weight encodings
def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's ``roundf``, as AIMET 1.22's kernel rounds: halves away from zero (exact for every finite float)."""
    magnitude = np.abs(x)
    whole = np.floor(magnitude)
    return np.copysign(whole + (magnitude - whole >= 0.5).astype(x.dtype), x)


def legacy_weight_grid(weights: np.ndarray, bitwidth: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per output channel (rows of ``weights``): (scale, offset) that AIMET 1.22's TF scheme computes, symmetric
    with unsigned symmetric on (the zoo's config): ``max(|w|) / floor((2^bw - 1) / 2)`` with offset
    ``-ceil((2^bw - 1) / 2)``; a channel with no negative weight gets the asymmetric grid ``max / (2^bw - 1)``
    with offset 0. The range always holds 0 and spans at least 0.01, in double, as 1.22 computes it."""
    steps = float(2**bitwidth - 1)
    low = np.minimum(0.0, weights.min(axis=1).astype(np.float64))
    high = np.maximum(0.0, weights.max(axis=1).astype(np.float64))
    high = np.maximum(high, low + LEGACY_MIN_RANGE)
    signed = low < 0.0
    absmax = np.maximum(np.abs(low), np.abs(high))
    scale = np.where(signed, absmax / math.floor(steps / 2), (high - low) / steps)
    offset = np.where(signed, -float(math.ceil(steps / 2)), 0.0)
    return scale, offset


def quantize_dequantize(weights: np.ndarray, scale: np.ndarray, offset: np.ndarray, bitwidth: int) -> np.ndarray:
    """AIMET 1.22's kernel per channel, in float32: clamp to the grid, ``round(x / scale - offset)``, back."""
    x = weights.astype(np.float32)
    delta = scale.astype(np.float32)[:, None]
    zero = offset.astype(np.float32)[:, None]
    low, high = delta * zero, delta * (zero + np.float32(2**bitwidth - 1))
    x = np.fmax(np.fmin(x, high), low)
    return delta * (round_half_away(x / delta - zero) + zero)


def _db(signal: float, noise: float) -> Optional[float]:
    """10 log10(signal / noise); inf when the noise is 0; None when there is no signal either."""
    if noise == 0.0:
        return math.inf if signal > 0.0 else None
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def check_weight_encodings(encodings, model: nn.Module, enabled_keys) -> Dict[str, Dict[str, object]]:
    """Per weight encoding frozen from a file: file against computed grid, weight SQNR under each, flagged or not."""
    if encodings is None:
        return {}
    out: Dict[str, Dict[str, object]] = {}
    for key in sorted(encodings.entries):
        if key not in enabled_keys or not key.endswith(".weight"):
            continue  # a disabled quantizer's entry (*.bias) quantizes nothing
        entries = encodings.entries[key]
        weight = model.get_submodule(key[: -len(".weight")]).weight.detach().float().cpu().numpy()
        weights = weight.reshape(weight.shape[0], -1)
        bitwidth = int(entries[0]["bitwidth"])
        file_scale = np.array([float(e["scale"]) for e in entries], dtype=np.float64)
        file_offset = np.array([round(float(e["offset"])) for e in entries], dtype=np.float64)
        scale, offset = legacy_weight_grid(weights, bitwidth)
        signal = float(np.square(weights.astype(np.float64)).sum())
        noise = {}
        for name, (s, o) in (("file", (file_scale, file_offset)), ("computed", (scale, offset))):
            error = quantize_dequantize(weights, s, o, bitwidth).astype(np.float64) - weights
            noise[name] = float(np.square(error).sum())
        ratio = file_scale / scale
        file_db, computed_db = _db(signal, noise["file"]), _db(signal, noise["computed"])
        flagged = file_db is not None and computed_db is not None and file_db < computed_db - FLAG_DB
        reasons = []
        if flagged:
            reasons.append(
                f"its weight encoding from {encodings.path} fits its weights {computed_db - file_db:.1f} dB worse than "
                f"the encoding computed from them (weight SQNR {file_db:.1f} dB against {computed_db:.1f} dB; "
                f"file scale / computed scale: median {np.median(ratio):.3g}, {np.min(ratio):.3g} to {np.max(ratio):.3g})"
            )
        out[key] = {
            "bitwidth": bitwidth, "channels": len(entries),
            "file_sqnr_db": file_db, "computed_sqnr_db": computed_db,
            "scale_ratio_median": float(np.median(ratio)), "scale_ratio_min": float(np.min(ratio)),
            "scale_ratio_max": float(np.max(ratio)),
            "channels_off_by_more_than_1_percent": int(np.sum(np.abs(ratio - 1.0) > 0.01)),
            "flagged": flagged, "reasons": reasons,
        }
    return out


# ---------------------------------------------------------------------------------------------- ranking
def kind_of(module: nn.Module) -> str:
    for cls, name in KINDS:
        if isinstance(module, cls):
            return name
    return type(module).__name__.lower()


def _ranks(values: Dict[str, Optional[float]], descending: bool) -> Dict[str, float]:
    """1 = most harmful. Equal values share their mean rank; missing values (None) rank last, together."""
    present = sorted((v, n) for n, v in values.items() if v is not None and not math.isnan(v))
    if descending:
        present.reverse()
    ranks: Dict[str, float] = {}
    k = 0
    while k < len(present):
        j = k
        while j + 1 < len(present) and present[j + 1][0] == present[k][0]:
            j += 1
        for _, name in present[k: j + 1]:
            ranks[name] = (k + j) / 2 + 1
        k = j + 1
    missing = [n for n in values if n not in ranks]
    for name in missing:
        ranks[name] = len(present) + (len(missing) + 1) / 2
    return ranks


def rank(entries: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """Flagged layers first; then by the mean of three ranks (displacement and heatmap MSE descending, output
    SQNR ascending), lowest first; ties by name. Sets each entry's ``score`` (its mean rank)."""
    criteria = (("sensitivity_displacement_px", True), ("sensitivity_heatmap_mse", True), ("output_sqnr_db", False))
    per = [_ranks({e["layer"]: e[key] for e in entries}, descending) for key, descending in criteria]  # type: ignore[misc]
    for entry in entries:
        entry["score"] = sum(r[entry["layer"]] for r in per) / len(per)  # type: ignore[index]
    return sorted(entries, key=lambda e: (not e["flagged"], e["score"], e["layer"]))


def _json_ready(value):
    """inf, -inf and NaN become None (JSON has no such numbers); containers recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------- files
def write_outputs(run_dir: str, record: Dict[str, object]) -> None:
    """diagnose.png, then diagnose.md and diagnose.json (atomically, last) and the status."""
    with stage("writing the diagnosis"):
        chart(record["ranking"], os.path.join(run_dir, "diagnose.png"))  # type: ignore[arg-type]
        record["files"] = ["diagnose.json", "diagnose.md", "diagnose.png"]
        with signals_deferred():
            write_atomic(os.path.join(run_dir, "diagnose.md"), markdown(record))
            write_atomic(os.path.join(run_dir, "diagnose.json"), json.dumps(record, indent=2) + "\n")
            mark(run_dir, "complete")


def _fmt(value, digits: int = 2, missing: str = "-") -> str:
    if value is None:
        return missing
    if isinstance(value, float):
        if abs(value) >= 1e4 or (value != 0 and abs(value) < 10 ** -digits):
            return f"{value:.{digits}e}"
        return f"{value:.{digits}f}"
    return str(value)


COLUMNS = (
    ("layer", "the module's name in the model and the checkpoint (on aimet-torch 2.x a shared ReLU's call sites count "
              "as one layer, named after the module)"),
    ("kind", "the module's type: conv, relu, upsample; `quantizers` in diagnose.json lists which of its quantizers are "
             "on (input: the model input, on the first conv)"),
    ("depth", "order of the layer's first call in the forward pass (0 = first)"),
    ("out SQNR dB", "the layer's output in the calibrated sim (all quantizers on) against the FP32 model (BatchNorms "
                    "folded) at the same point, on the N crops, pooled over every call: 10 log10(sum fp^2 / sum (q - fp)^2). "
                    "The drift accumulated up to here; higher is better; `inf` means identical"),
    ("heatmap MSE", "only this layer's quantizers on, all others off: mean squared difference of the 17 heatmaps from "
                    "the FP32 model's (no flip)"),
    ("displacement px", "same run: mean distance in image pixels between its decoded joints and the FP32 model's, "
                        "over joints and crops"),
    ("W SQNR file / computed", "for a weight encoding frozen from a file: weight SQNR (dB) under the file's grid / "
                               "under the grid AIMET 1.22's TF scheme computes from the same weights; `-` without a file"),
    ("scale ratio", "median over channels of the file's scale / the computed scale (1 when the file fits the weights)"),
    ("flagged", f"the file's grid loses more than {FLAG_DB:g} dB (about one bit) of weight SQNR against the computed grid"),
    ("score", "mean of the layer's three ranks (displacement and heatmap MSE, most first; output SQNR, least first); "
              "lower is more harmful"),
)


def markdown(record: Dict[str, object]) -> str:
    ranking: List[Dict[str, object]] = record["ranking"]  # type: ignore[assignment]
    settings: Dict[str, object] = record["settings"]  # type: ignore[assignment]
    whole: Dict[str, object] = record["whole_model"]  # type: ignore[assignment]
    aimet: Dict[str, object] = record["aimet"]  # type: ignore[assignment]
    flagged = record["flagged"]
    lines = [
        f"# hrnet-quanteval diagnose: {record['run_id']}", "",
        f"W{settings['param_bw']}A{settings['output_bw']} sim ({aimet['package']} {aimet['version']}), calibrated on the "
        f"first {record['calibration_images']} crops, against the FP32 model on the first {record['images']} crops "
        f"in loader order. Quantized model: {settings['quantized_model']}; weight encodings: "
        f"{settings['encodings'] or 'computed from the weights'}.", "",
        f"Whole model, every quantizer on: heatmap SQNR {_fmt(whole['output_sqnr_db'], 2, 'inf')} dB, heatmap MSE "
        f"{_fmt(whole['heatmap_mse'], 3)}, mean keypoint displacement {_fmt(whole['displacement_px'], 3)} px.", "",
    ]
    if flagged:
        lines.append(f"**{len(flagged)} flagged** (a weight encoding from the file does not fit its weights):")
        for entry in ranking:
            if entry["flagged"]:
                lines.append(f"- `{entry['layer']}`: " + "; ".join(entry["reasons"]))  # type: ignore[arg-type]
    elif settings["encodings"]:
        lines.append("No layer flagged: every weight encoding from the file fits its weights within 6 dB of the computed one.")
    else:
        lines.append("No weight encodings were read from a file, so nothing can be flagged; the ranking is by the score.")
    lines += ["", f"## The {min(TOP, len(ranking))} most harmful layers of {len(ranking)}", "",
              "| # | layer | kind | depth | out SQNR dB | heatmap MSE | displacement px | W SQNR file / computed | "
              "scale ratio | flagged | score |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, e in enumerate(ranking[:TOP], start=1):
        weights = "-" if e["weight_sqnr_file_db"] is None and e["weight_sqnr_computed_db"] is None else (
            f"{_fmt(e['weight_sqnr_file_db'], 1, 'inf')} / {_fmt(e['weight_sqnr_computed_db'], 1, 'inf')}")
        lines.append(
            f"| {k} | `{e['layer']}` | {e['kind']} | {_fmt(e['depth'])} | {_fmt(e['output_sqnr_db'], 2, 'inf')} | "
            f"{_fmt(e['sensitivity_heatmap_mse'], 3)} | {_fmt(e['sensitivity_displacement_px'], 3)} | {weights} | "
            f"{_fmt(e['file_scale_ratio'], 3)} | {'**yes**' if e['flagged'] else 'no'} | {_fmt(e['score'], 1)} |"
        )
    lines += [
        "", "## Columns", "", "| column | meaning |", "|---|---|",
        *(f"| {column} | {meaning} |" for column, meaning in COLUMNS), "",
        "## Ranking", "",
        "Flagged layers first; then by the score, lowest first: the mean of the layer's rank by displacement "
        "(largest first), by heatmap MSE (largest first) and by output SQNR (lowest first); equal values share their "
        "mean rank; ties by name. Sensitivity measures what a layer costs on its own; output SQNR where the drift "
        "has grown by that point (it includes every earlier layer's error). diagnose.png plots both along the depth.",
        "", "## Timings (seconds)", "",
        ", ".join(f"{k} {v}" for k, v in record["timings"].items()),  # type: ignore[union-attr]
        "", "## Command", "", "`" + " ".join(record["command"]) + "`", "",  # type: ignore[arg-type]
    ]
    return "\n".join(lines)


def summary_text(record: Dict[str, object]) -> str:
    """What the terminal shows at the end: the top five and the flagged layers."""
    ranking: List[Dict[str, object]] = record["ranking"]  # type: ignore[assignment]
    lines = [f"{'layer':<42} {'out SQNR dB':>11} {'disp px':>9} {'flagged':>8}"]
    for e in ranking[:5]:
        lines.append(f"{str(e['layer']):<42} {_fmt(e['output_sqnr_db'], 2, 'inf'):>11} "
                     f"{_fmt(e['sensitivity_displacement_px'], 3):>9} {'yes' if e['flagged'] else 'no':>8}")
    flagged = record["flagged"]
    lines.append(f"{len(flagged)} flagged: {', '.join(flagged)}" if flagged else "no layer flagged")  # type: ignore[arg-type]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- diagnose.png
CHART_SIZE = (1200, 720)
FONT = cv2.FONT_HERSHEY_SIMPLEX
BLACK, GREY, LIGHT, RED = (0, 0, 0), (150, 150, 150), (232, 232, 232), (220, 30, 30)
SQNR_COLOR, DISPLACEMENT_COLOR = (40, 100, 220), (240, 150, 40)  # RGB


def _text(image: np.ndarray, text: str, org: Tuple[int, int], scale: float = 0.45, color=BLACK, thickness: int = 1) -> None:
    cv2.putText(image, text, org, FONT, scale, color, thickness, cv2.LINE_AA)


def _nice_top(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def chart(ranking: Sequence[Dict[str, object]], path: str) -> None:
    """Output SQNR (top) and sensitivity as displacement (bottom) per layer along the depth; flagged layers in red."""
    width, height = CHART_SIZE
    image = np.full((height, width, 3), 255, np.uint8)
    left, right = 80, width - 30
    panels = ((60, 330), (390, 650))  # top, bottom of each panel
    layers = sorted(ranking, key=lambda e: (e["depth"] is None, e["depth"] if e["depth"] is not None else 0, e["layer"]))
    count = max(1, len(layers))
    step = (right - left) / count

    def x_of(k: int) -> int:
        return int(left + step * (k + 0.5))

    _text(image, "diagnose: per-layer output SQNR and sensitivity along the network (flagged layers in red)",
          (left, 30), 0.6, BLACK, 1)
    finite = [float(e["output_sqnr_db"]) for e in layers if e["output_sqnr_db"] is not None]  # type: ignore[arg-type]
    sqnr_top = math.ceil(max(finite) / 10) * 10 if finite else 10.0
    sqnr_low = math.floor(min(finite) / 10) * 10 if finite else 0.0  # the range the layers span, in 10 dB steps
    sqnr_top = max(sqnr_top, sqnr_low + 10)
    moved = [float(e["sensitivity_displacement_px"] or 0.0) for e in layers]  # type: ignore[arg-type]
    moved_top = _nice_top(max(moved) if moved else 1.0)
    specs = (
        (panels[0], sqnr_low, sqnr_top, "output SQNR (dB), all quantizers on: higher is better", SQNR_COLOR),
        (panels[1], 0.0, moved_top, "sensitivity: keypoint displacement (px) with only this layer quantized", DISPLACEMENT_COLOR),
    )
    for (top, bottom), low, high, title, color in specs:
        _text(image, title, (left, top - 10), 0.5, color, 1)
        for i in range(6):
            value = low + (high - low) * i / 5
            y = int(bottom - (bottom - top) * i / 5)
            cv2.line(image, (left, y), (right, y), LIGHT if i else GREY, 1)
            _text(image, _fmt(value, 1 if high - low >= 5 else 3), (8, y + 5), 0.42, BLACK)
    for k, e in enumerate(layers):
        if e["flagged"]:
            cv2.line(image, (x_of(k), panels[0][0]), (x_of(k), panels[1][1]), (255, 200, 200), max(1, min(12, int(step))))
    (s_top, s_bottom), (d_top, d_bottom) = panels
    previous = None
    for k, e in enumerate(layers):
        value = e["output_sqnr_db"]
        v = sqnr_top if value is None else max(sqnr_low, min(sqnr_top, float(value)))  # type: ignore[arg-type]
        y = int(s_bottom - (v - sqnr_low) / (sqnr_top - sqnr_low) * (s_bottom - s_top))
        point = (x_of(k), y)
        if previous is not None:
            cv2.line(image, previous, point, GREY, 1, cv2.LINE_AA)
        previous = point
    for k, e in enumerate(layers):
        value = e["output_sqnr_db"]
        v = sqnr_top if value is None else max(sqnr_low, min(sqnr_top, float(value)))  # type: ignore[arg-type]
        y = int(s_bottom - (v - sqnr_low) / (sqnr_top - sqnr_low) * (s_bottom - s_top))
        cv2.circle(image, (x_of(k), y), 4 if e["flagged"] else 3, RED if e["flagged"] else SQNR_COLOR, -1, cv2.LINE_AA)
        d = float(e["sensitivity_displacement_px"] or 0.0)  # type: ignore[arg-type]
        y = int(d_bottom - min(d, moved_top) / moved_top * (d_bottom - d_top))
        half = max(1, int(step * 0.35))
        cv2.rectangle(image, (x_of(k) - half, y), (x_of(k) + half, d_bottom), RED if e["flagged"] else DISPLACEMENT_COLOR, -1)
    # name the flagged layers and the three most harmful others, above their bars
    named = [e for e in ranking if e["flagged"]][:4] + [e for e in ranking if not e["flagged"]][:3]
    for n, e in enumerate(named):
        k = layers.index(e)
        d = float(e["sensitivity_displacement_px"] or 0.0)  # type: ignore[arg-type]
        y = int(d_bottom - min(d, moved_top) / moved_top * (d_bottom - d_top)) - 6 - 14 * (n % 3)
        if e["flagged"]:  # flagged layers are named at the top of the panel, beside their red band
            y = d_top + 14 + 14 * n
        label = str(e["layer"])
        size = cv2.getTextSize(label, FONT, 0.4, 1)[0][0]
        x = min(max(left, x_of(k) - size // 2), right - size)
        _text(image, label, (x, max(d_top + 12, y)), 0.4, RED if e["flagged"] else BLACK)
    _text(image, f"layer depth: order of first call in the forward pass ({len(layers)} quantized layers)",
          (left, height - 35), 0.5, BLACK)
    for i in range(0, 6):
        k = min(count - 1, int(round(i * (count - 1) / 5)))
        _text(image, str(k), (x_of(k) - 8, d_bottom + 18), 0.42, BLACK)
    if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
