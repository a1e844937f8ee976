"""``bench``: where a run's time goes, against the floor of the model's own forward passes.

On a synthetic set: per engine and repetition, FP32 evaluation (stages data, forward, flip, decode,
evaluation), then calibration and W8A8 evaluation when AIMET is installed; the pure model-forward time on the
same inputs (plain and mirrored, as the flip test runs them) is the floor. Medians over the repetitions.
``floor_ratio`` = native FP32 evaluation time / floor; with ``--engine both``, ``speedup_vs_reference`` =
reference end-to-end time / native end-to-end time, and parity is checked on the same run.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
from typing import Dict, List, Sequence

import torch

from . import data, parity, run, synth
from .errors import EnvironmentProblem
from .inference import Normalizer
from .model import W32_SPEC, build_hrnet, tiny_spec
from .progress import StageTimer
from .runs import check_writable, in_run_folder, write_atomic
from .runtypes import EvalSet, RunOptions
from .validation import open_dataset

STAGES = ("data", "forward", "flip", "decode", "evaluation", "calibration")


def _random_hrnet(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_hrnet(W32_SPEC if arch == "w32" else tiny_spec())
    for m in model.modules():  # BN statistics other than the identity, so folding does real work
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def synthetic_set(folder: str, instances: int, seed: int) -> EvalSet:
    """A synthetic set cut to the first images that hold at least ``instances`` people."""
    full = os.path.join(folder, "full")
    synth.generate(full, images=max(2, instances), seed=seed)
    evalset = open_dataset(full)
    counts = {}
    for image_id in evalset.instances.image_ids:
        counts[int(image_id)] = counts.get(int(image_id), 0) + 1
    total, images = 0, 0
    for image_id in evalset.instances.evaluated_image_ids:
        images += 1
        total += counts.get(image_id, 0)
        if total >= instances:
            break
    subset = data.write_reference_layout(evalset.annotation_file, evalset.image_dir, os.path.join(folder, "subset"), images)
    return open_dataset(subset)


def forward_floor(model: torch.nn.Module, evalset: EvalSet, options, device: torch.device) -> float:
    """Seconds for the model's forward passes alone, plain and mirrored, on inputs already on the device."""
    normalize = Normalizer(device)
    inputs = [normalize(crops.to(device)) for crops, _ in data.crop_loader(evalset.instances, options.batch_size, 0)]
    mirrored = [x.flip(3) for x in inputs]
    model = model.to(device).eval()
    timer = StageTimer(device)
    with torch.no_grad():
        start = timer.now()
        for x, xm in zip(inputs, mirrored):
            model(x)
            model(xm)
        timer.add("floor", start)
    return timer.seconds["floor"]


def _peak_rss_mib() -> Dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"main": round(own, 1), "workers": round(children, 1)}


def one_pass(engine, model, evalset, device, options, adapter, calibration_images: int) -> Dict[str, object]:
    """One engine's FP32 evaluation, then calibration and W8A8 evaluation; times in seconds."""
    from .quantization.simulate import QuantPlan

    timer = StageTimer(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory(prefix="hrnet-bench-") as out:
        start = timer.now()
        fp32 = engine.evaluate("fp32", model, evalset, device, out, options, timer)
        fp32_seconds = timer.now() - start
        record: Dict[str, object] = {"fp32_seconds": fp32_seconds, "fp32": fp32}
        if adapter is not None:
            plan = QuantPlan(param_bw=8, output_bw=8, calibration_images=calibration_images)
            start = timer.now()
            result, _ = run.quantize_and_evaluate(model, plan, evalset, device, out, options, timer, adapter, engine)
            record["w8a8_seconds"] = timer.now() - start
            record["w8a8"] = result
    record["end_to_end_seconds"] = fp32_seconds + float(record.get("w8a8_seconds", 0.0))
    record["stages"] = dict(timer.seconds)
    if device.type == "cuda":
        record["gpu_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return record


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summarize(passes: Dict[str, List[Dict[str, object]]], floors: List[float], instances: int) -> Dict[str, object]:
    """Medians per engine, the floor ratio and, with two engines, the speed-up."""
    engines: Dict[str, Dict[str, object]] = {}
    for name, runs in passes.items():
        fp32 = _median([r["fp32_seconds"] for r in runs])  # type: ignore[misc]
        entry: Dict[str, object] = {
            "fp32_seconds": fp32,
            "fp32_images_per_second": instances / fp32,
            "end_to_end_seconds": _median([r["end_to_end_seconds"] for r in runs]),  # type: ignore[misc]
            "stages": {s: _median([r["stages"].get(s, 0.0) for r in runs]) for s in STAGES + ("reference",)  # type: ignore[union-attr]
                       if any(s in r["stages"] for r in runs)},  # type: ignore[operator]
        }
        if "w8a8_seconds" in runs[0]:
            w8a8 = _median([r["w8a8_seconds"] for r in runs])  # type: ignore[misc]
            entry.update(w8a8_seconds=w8a8, w8a8_images_per_second=instances / w8a8)
        if "gpu_peak_mib" in runs[0]:
            entry["gpu_peak_mib"] = max(r["gpu_peak_mib"] for r in runs)  # type: ignore[type-var]
        engines[name] = entry
    floor = _median(floors)
    summary: Dict[str, object] = {"engines": engines, "forward_floor_seconds": floor, "repetitions": len(floors)}
    if "native" in engines:
        summary["floor_ratio"] = engines["native"]["fp32_seconds"] / floor  # type: ignore[operator]
    if "native" in engines and "reference" in engines:
        summary["speedup_vs_reference"] = (
            engines["reference"]["end_to_end_seconds"] / engines["native"]["end_to_end_seconds"]  # type: ignore[operator]
        )
    return summary


def format_summary(summary: Dict[str, object], instances: int) -> str:
    lines = [f"{instances} instances, {summary['repetitions']} repetitions, medians in seconds"]
    for name, entry in summary["engines"].items():  # type: ignore[union-attr]
        stages = ", ".join(f"{k} {v:.2f}" for k, v in entry["stages"].items())
        line = (f"{name:9s} FP32 {entry['fp32_seconds']:.2f} s ({entry['fp32_images_per_second']:.1f} img/s)")
        if "w8a8_seconds" in entry:
            line += f", calibration + W8A8 {entry['w8a8_seconds']:.2f} s ({entry['w8a8_images_per_second']:.1f} img/s)"
        line += f", end to end {entry['end_to_end_seconds']:.2f} s"
        lines += [line, f"          stages: {stages}"]
    lines.append(f"forward floor (plain + mirrored passes only): {summary['forward_floor_seconds']:.2f} s")
    if "floor_ratio" in summary:
        lines.append(f"floor_ratio (native FP32 evaluation / forward floor): {summary['floor_ratio']:.3f}")
    if "speedup_vs_reference" in summary:
        lines.append(f"speedup_vs_reference (reference / native, end to end): {summary['speedup_vs_reference']:.2f}x")
    return "\n".join(lines)


def run_bench(args, command: Sequence[str]) -> int:
    """The ``bench`` subcommand: exit 0 (and 1 when ``--engine both`` finds the engines disagree)."""
    from .quantization.simulate import load_adapter

    device = run.resolve_device(args.use_cuda)
    check_writable(args.results_dir)
    names = ["native", "reference"] if args.engine == "both" else [args.engine]
    if "reference" in names:
        from .engines.reference import find_lib

        find_lib()  # say how to get the lib before any work
    try:
        adapter = load_adapter()
    except EnvironmentProblem:
        adapter = None
        print("AIMET is not installed: timing FP32 only")
    options = RunOptions(args.batch_size, args.workers, quiet=True)
    model = _random_hrnet(args.arch)
    with tempfile.TemporaryDirectory(prefix="hrnet-quanteval-bench-") as folder:
        evalset = synthetic_set(folder, args.instances, args.seed)
        count = len(evalset.instances)
        calibration = min(args.calibration_images, count)

        def work(run_id: str, run_dir: str) -> int:
            passes: Dict[str, List[Dict[str, object]]] = {name: [] for name in names}
            floors: List[float] = []
            for repetition in range(args.repeat):
                for name in names:
                    engine = run.make_engine(name)  # a fresh engine: nothing cached from the last repetition
                    if name == "reference":
                        engine.prepare(evalset)  # its COCO index, like the native one, is built before timing
                    run.seed_everything(device)
                    passes[name].append(one_pass(engine, model, evalset, device, options, adapter, calibration))
                floors.append(forward_floor(model, evalset, options, device))
                print(f"repetition {repetition + 1}/{args.repeat} done")
            summary = summarize(passes, floors, count)
            summary.update(
                arch=args.arch, instances=count, images=len(evalset.instances.evaluated_image_ids), device=str(device),
                batch_size=args.batch_size, workers=args.workers, calibration_images=calibration,
                peak_rss_mib=_peak_rss_mib(), command=list(command), torch_threads=torch.get_num_threads(),
            )
            code = 0
            if len(names) == 2:
                checks = {}
                for model_key in ("fp32", "w8a8"):
                    if model_key in passes["native"][0]:
                        a, b = passes["native"][-1][model_key], passes["reference"][-1][model_key]
                        checks[model_key] = parity.compare(a.preds, b.preds, a.stats, b.stats)  # type: ignore[union-attr]
                summary["parity"] = {k: {x: v[x] for x in ("passed", "max_abs_px", "fraction_within_tolerance", "reasons")}
                                     for k, v in checks.items()}
                code = 0 if all(c["passed"] for c in checks.values()) else 1
            write_atomic(os.path.join(run_dir, "bench.json"), json.dumps(summary, indent=2) + "\n")
            print(format_summary(summary, count))
            if "parity" in summary:
                print("parity on this run: " + ", ".join(
                    f"{k} {'holds' if v['passed'] else 'FAILS'}" for k, v in summary["parity"].items()))  # type: ignore[union-attr]
            print(f"\nbench: {os.path.join(run_dir, 'bench.json')}")
            return code

        return in_run_folder(args.results_dir, args.run_id, "bench", work)

