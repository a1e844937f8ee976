"""``bench``: where a run's time goes, against floors measured in the same run.

``--scale small`` (default): a synthetic set of ``--instances`` people and an HRNet (``--arch w32`` or ``tiny``).
Per engine and repetition: FP32 evaluation, then (with AIMET) sim construction, calibration and W8A8 evaluation.
In the same run, the floors: the FP32 model's forward passes on the flip pairs, and the calibrated sim's on the
calibration crops and on the flip pairs. Medians over the repetitions.

- ``floor_ratio`` = native FP32 evaluation / FP32 forward floor;
- ``end_to_end_floor_ratio`` = the whole reproduction (FP32 evaluation + sim construction + calibration + W8A8
  evaluation) / (FP32 forward floor + sim construction + calibrated sim on the calibration crops + calibrated
  sim on the flip pairs): everything a run does beyond the forward passes it must make;
- ``speedup_vs_reference`` (``--engine both``) = reference end to end / native end to end, parity checked.

``--scale coco``: COCO val2017's shape (5000 photo-sized JPEGs of COCO's size mix, 6352 people; generated once,
kept in the cache folder) and a model of negligible cost, so what is timed is the pipeline: decoding and crops,
normalisation and flip, heatmap decoding and the way back, OKS-NMS, results files and COCOeval, for FP32 and W8A8.

- ``pipeline_seconds`` per engine (FP32 + W8A8, sim construction and calibration included);
- ``pipeline_floor_ratio`` = native ``pipeline_seconds`` / (decoding every image once + COCOeval of each model's
  results), the floor measured in the same run;
- ``pipeline_speedup_vs_reference`` = reference ``pipeline_seconds`` / native, parity checked on the same run.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from typing import Dict, List, Sequence

import torch
from torch import nn

from . import data, evaluation, parity, run, synth
from .errors import EnvironmentProblem
from .inference import Normalizer
from .model import W32_SPEC, build_hrnet, tiny_spec
from .progress import StageTimer
from .runs import check_writable, in_run_folder, write_atomic
from .runtypes import EvalSet, RunOptions
from .validation import open_dataset

STAGES = ("data", "forward", "flip", "decode", "evaluation", "calibration")
COCO_SET_VERSION = 3  # bump when generate_coco_shaped draws differently, so an old cached set is not reused


def _random_hrnet(arch: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_hrnet(W32_SPEC if arch == "w32" else tiny_spec())
    for m in model.modules():  # BN statistics other than the identity, so folding does real work
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


class CheapPoseNet(nn.Module):
    """A pose model of negligible cost: every eighth pixel of the input, a 1x1 convolution and a BatchNorm, each
    value then repeated over a 2x2 block: (B, 3, 256, 192) to (B, 17, 64, 48). Its layers (and so AIMET's input
    and output quantizers) see 32x24 maps, so even its quantized forward pass is cheap next to the pipeline
    around it. (A 1x1 convolution on the full 64x48 grid cost about 6 ms per batch of 32 on two cores, a fifth
    of the pipeline's CPU time: no longer negligible.)"""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, data.NUM_JOINTS, kernel_size=1)
        self.bn = nn.BatchNorm2d(data.NUM_JOINTS)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.1, 0.1)
            self.bn.running_var.uniform_(0.5, 1.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coarse = self.bn(self.conv(x[:, :, 2::8, 2::8].contiguous()))
        batch, joints, height, width = coarse.shape
        blocks = coarse[:, :, :, None, :, None].expand(batch, joints, height, 2, width, 2)
        return blocks.reshape(batch, joints, 2 * height, 2 * width)


def synthetic_set(folder: str, instances: int, seed: int) -> EvalSet:
    """A synthetic set cut to the first images that hold at least ``instances`` people."""
    full = os.path.join(folder, "full")
    synth.generate(full, images=max(2, instances), seed=seed)
    evalset = open_dataset(full)
    counts: Dict[int, int] = {}
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


def coco_shaped_set(cache_dir: str, images: int, seed: int, workers: int, quiet: bool) -> str:
    """The COCO-shaped set's folder, generated once per (size, seed) and kept in ``cache_dir``."""
    instances = round(images * synth.COCO_INSTANCES / synth.COCO_IMAGES)
    folder = os.path.join(cache_dir, f"bench-coco-v{COCO_SET_VERSION}-{images}-{seed}")
    if os.path.isfile(os.path.join(folder, data.ANNOTATION_FILE)):
        return folder
    if not quiet:
        print(f"drawing the COCO-shaped set once ({images} images, {instances} people) into {folder}")
    os.makedirs(cache_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".bench-coco-", dir=cache_dir)
    try:
        synth.generate_coco_shaped(work, images=images, instances=instances, seed=seed, workers=max(1, workers))
        os.replace(work, folder)  # complete or absent: an interrupted draw is never reused
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return folder


def forward_floor(model: nn.Module, evalset: EvalSet, count: int, options: RunOptions, device: torch.device,
                  flip: bool = True) -> float:
    """Seconds for the model's forward passes alone on the first ``count`` crops, already normalised on the device:
    plain and mirrored (the flip test's pairs), or plain only (calibration)."""
    normalize = Normalizer(device)
    instances = evalset.instances if count == len(evalset.instances) else evalset.instances.head(count)
    inputs = [normalize(crops.to(device)) for crops, _ in data.crop_loader(instances, options.batch_size, 0)]
    mirrored = [x.flip(3) for x in inputs] if flip else []
    model = model.to(device).eval()
    timer = StageTimer(device)
    with torch.no_grad():
        start = timer.now()
        for x in inputs + mirrored:
            model(x)
        timer.add("floor", start)
    return timer.seconds["floor"]


def _peak_rss_mib() -> Dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"main": round(own, 1), "workers": round(children, 1)}


def one_pass(name: str, model, evalset, device, options, adapter, calibration_images: int, out: str,
             fp32_alone: bool, floors: bool) -> Dict[str, object]:
    """One engine's whole reproduction as ``eval`` runs it (FP32, sim construction, calibration, W8A8), on a fresh
    engine; with ``fp32_alone`` also FP32 evaluated on its own (another fresh engine), and with ``floors`` the
    forward floors of the same models on the same inputs. Seconds."""
    from .quantization.simulate import QuantPlan

    def fresh():
        engine = run.make_engine(name)  # nothing cached from an earlier pass
        if name == "reference":
            engine.prepare(evalset)  # its COCO index, like the native one, is built before timing
        return engine

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    record: Dict[str, object] = {}
    if fp32_alone:
        timer = StageTimer(device)
        engine = fresh()
        run.seed_everything(device)
        start = timer.now()
        engine.evaluate("fp32", model, evalset, device, os.path.join(out, "fp32-alone"), options, timer)
        record["fp32_seconds"] = timer.now() - start
        if floors:
            record["fp32_floor_seconds"] = forward_floor(model, evalset, len(evalset.instances), options, device)
    plan = QuantPlan(param_bw=8, output_bw=8, calibration_images=calibration_images) if adapter is not None else None
    engine = fresh()
    start = time.perf_counter()
    outcome = run.execute(evalset, device, out, options, fp32=model, quant_source=model, plan=plan, adapter=adapter,
                          engine=engine)
    record["end_to_end_seconds"] = time.perf_counter() - start
    record["stages"] = dict(outcome.timer.seconds)  # type: ignore[union-attr]
    record.update({key: outcome.evaluations[key] for key in outcome.evaluations})
    if plan is not None:
        info = outcome.quantization
        record.update(sim_seconds=info["sim_seconds"], calibration_seconds=info["calibration_seconds"])
        if floors:
            sim = outcome.quantized_models[plan.key]
            count = int(info["calibration_images"])  # type: ignore[arg-type]
            record["calibration_floor_seconds"] = forward_floor(sim, evalset, count, options, device, flip=False)
            record["w8a8_floor_seconds"] = forward_floor(sim, evalset, len(evalset.instances), options, device)
            if "fp32_floor_seconds" not in record:
                record["fp32_floor_seconds"] = forward_floor(model, evalset, len(evalset.instances), options, device)
    if device.type == "cuda":
        record["gpu_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return record


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summarize(passes: Dict[str, List[Dict[str, object]]], instances: int) -> Dict[str, object]:
    """Medians per engine and the ratios (small scale)."""
    engines: Dict[str, Dict[str, object]] = {}
    for name, runs in passes.items():
        fp32 = _median([r["fp32_seconds"] for r in runs])  # type: ignore[misc]
        end_to_end = _median([r["end_to_end_seconds"] for r in runs])  # type: ignore[misc]
        entry: Dict[str, object] = {
            "fp32_seconds": fp32,
            "fp32_images_per_second": instances / fp32,
            "end_to_end_seconds": end_to_end,
            "stages": {s: _median([r["stages"].get(s, 0.0) for r in runs]) for s in STAGES + ("reference",)  # type: ignore[union-attr]
                       if any(s in r["stages"] for r in runs)},  # type: ignore[operator]
        }
        for key in ("sim_seconds", "calibration_seconds", "fp32_floor_seconds", "calibration_floor_seconds",
                    "w8a8_floor_seconds"):
            if key in runs[0]:
                entry[key] = _median([r[key] for r in runs])  # type: ignore[misc]
        if "gpu_peak_mib" in runs[0]:
            entry["gpu_peak_mib"] = max(r["gpu_peak_mib"] for r in runs)  # type: ignore[type-var]
        engines[name] = entry
    summary: Dict[str, object] = {"engines": engines, "repetitions": len(next(iter(passes.values())))}
    native = engines.get("native")
    if native is not None:
        summary["forward_floor_seconds"] = native["fp32_floor_seconds"]
        summary["floor_ratio"] = native["fp32_seconds"] / native["fp32_floor_seconds"]  # type: ignore[operator]
        if "w8a8_floor_seconds" in native:
            floor = sum(float(native[k]) for k in ("fp32_floor_seconds", "sim_seconds", "calibration_floor_seconds",  # type: ignore[arg-type]
                                                  "w8a8_floor_seconds"))
            summary["end_to_end_floor_seconds"] = floor
            summary["end_to_end_floor_ratio"] = float(native["end_to_end_seconds"]) / floor  # type: ignore[arg-type]
    if native is not None and "reference" in engines:
        summary["speedup_vs_reference"] = (
            engines["reference"]["end_to_end_seconds"] / native["end_to_end_seconds"]  # type: ignore[operator]
        )
    return summary


def format_summary(summary: Dict[str, object], instances: int) -> str:
    lines = [f"{instances} instances, {summary['repetitions']} repetitions, medians in seconds"]
    for name, entry in summary["engines"].items():  # type: ignore[union-attr]
        stages = ", ".join(f"{k} {v:.2f}" for k, v in entry["stages"].items())
        line = (f"{name:9s} FP32 alone {entry['fp32_seconds']:.2f} s ({entry['fp32_images_per_second']:.1f} img/s); "
                f"the whole reproduction (FP32 + sim + calibration + W8A8) {entry['end_to_end_seconds']:.2f} s")
        if "sim_seconds" in entry:
            line += f", of which sim construction {entry['sim_seconds']:.2f} s, calibration {entry['calibration_seconds']:.2f} s"
        lines += [line, f"          stages: {stages}"]
    if "forward_floor_seconds" in summary:
        lines.append(f"FP32 forward floor (plain + mirrored passes only): {summary['forward_floor_seconds']:.2f} s")
        lines.append(f"floor_ratio (native FP32 evaluation / forward floor): {summary['floor_ratio']:.3f}")
    if "end_to_end_floor_ratio" in summary:
        lines.append(f"end-to-end floor (forward passes it must make + sim construction): "
                     f"{summary['end_to_end_floor_seconds']:.2f} s")
        lines.append(f"end_to_end_floor_ratio (native end to end / that floor): {summary['end_to_end_floor_ratio']:.3f}")
    if "speedup_vs_reference" in summary:
        lines.append(f"speedup_vs_reference (reference / native, end to end): {summary['speedup_vs_reference']:.2f}x")
    return "\n".join(lines)


def _parity_on_the_run(passes: Dict[str, List[Dict[str, object]]]) -> Dict[str, Dict[str, object]]:
    checks = {}
    for model_key in ("fp32", "w8a8"):
        if model_key in passes["native"][-1]:
            a, b = passes["native"][-1][model_key], passes["reference"][-1][model_key]
            checks[model_key] = parity.compare(a.preds, b.preds, a.stats, b.stats)  # type: ignore[union-attr]
    return {k: {x: v[x] for x in ("passed", "max_abs_px", "fraction_within_tolerance", "reasons")} for k, v in checks.items()}


def pipeline_floor(evalset: EvalSet, results_files: Sequence[str]) -> Dict[str, float]:
    """What no pipeline can avoid, in this process: decoding every image of the run once, and COCOeval of each
    model's results file (the same call the run makes)."""
    start = time.perf_counter()
    for path in dict.fromkeys(evalset.instances.paths):
        data.read_bgr(path)
    decode = time.perf_counter() - start
    start = time.perf_counter()
    image_ids = evalset.instances.evaluated_image_ids if evalset.max_images is not None else None
    for results_file in results_files:
        evaluation.coco_stats(evalset.coco, results_file, image_ids)
    return {"decode_seconds": decode, "cocoeval_seconds": time.perf_counter() - start}


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
    if args.scale == "coco":
        return _run_coco_scale(args, command, device, names, adapter, options)
    model = _random_hrnet(args.arch)
    with tempfile.TemporaryDirectory(prefix="hrnet-quanteval-bench-") as folder:
        evalset = synthetic_set(folder, args.instances, args.seed)
        count = len(evalset.instances)
        calibration = min(args.calibration_images, count)

        def work(run_id: str, run_dir: str) -> int:
            passes: Dict[str, List[Dict[str, object]]] = {name: [] for name in names}
            for repetition in range(args.repeat):
                for name in names:
                    with tempfile.TemporaryDirectory(prefix="hrnet-bench-") as out:
                        os.makedirs(os.path.join(out, "fp32-alone"))
                        passes[name].append(one_pass(name, model, evalset, device, options, adapter, calibration, out,
                                                     fp32_alone=True, floors=name == "native"))
                print(f"repetition {repetition + 1}/{args.repeat} done")
            summary = summarize(passes, count)
            summary.update(scale="small", arch=args.arch, **_run_facts(args, command, device, evalset, calibration))
            code = 0
            if len(names) == 2:
                summary["parity"] = _parity_on_the_run(passes)
                code = 0 if all(c["passed"] for c in summary["parity"].values()) else 1  # type: ignore[union-attr]
            return _finish(run_dir, summary, format_summary(summary, count), code)

        return in_run_folder(args.results_dir, args.run_id, "bench", work)


def _run_coco_scale(args, command, device, names, adapter, options) -> int:
    """FP32 + W8A8 through each engine on the COCO-shaped set with a negligible model; the pipeline floor."""
    from .artifacts import default_cache_dir

    root = coco_shaped_set(default_cache_dir(), args.coco_images, args.seed, args.workers, args.quiet)
    evalset = open_dataset(root, quiet=args.quiet)
    model = CheapPoseNet()
    count = len(evalset.instances)
    calibration = min(args.calibration_images, count)

    def work(run_id: str, run_dir: str) -> int:
        passes: Dict[str, List[Dict[str, object]]] = {name: [] for name in names}
        floors: List[Dict[str, float]] = []
        for repetition in range(args.repeat):
            for name in names:
                folder = os.path.join(run_dir, f"{name}-{repetition + 1}")
                os.makedirs(folder)
                passes[name].append(one_pass(name, model, evalset, device, options, adapter, calibration, folder,
                                             fp32_alone=False, floors=False))
            last = passes[names[0]][-1]
            files = [last[k].results_file for k in ("fp32", "w8a8") if k in last]  # type: ignore[union-attr]
            floors.append(pipeline_floor(evalset, files))
            print(f"repetition {repetition + 1}/{args.repeat} done")
        summary = summarize_pipeline(passes, floors)
        summary.update(scale="coco", dataset=root, **_run_facts(args, command, device, evalset, calibration))
        code = 0
        if len(names) == 2:
            summary["parity"] = _parity_on_the_run(passes)
            code = 0 if all(c["passed"] for c in summary["parity"].values()) else 1  # type: ignore[union-attr]
        return _finish(run_dir, summary, format_pipeline(summary), code)

    return in_run_folder(args.results_dir, args.run_id, "bench-coco", work)


def _run_facts(args, command: Sequence[str], device: torch.device, evalset: EvalSet, calibration: int) -> Dict[str, object]:
    """What bench.json records about the run at either scale: the set, the settings, memory and threads."""
    return dict(
        images=len(evalset.instances.evaluated_image_ids), instances=len(evalset.instances), device=str(device),
        batch_size=args.batch_size, workers=args.workers, calibration_images=calibration,
        peak_rss_mib=_peak_rss_mib(), command=list(command), torch_threads=torch.get_num_threads(),
        gomp_spincount=os.environ.get("GOMP_SPINCOUNT"),
    )


def summarize_pipeline(passes: Dict[str, List[Dict[str, object]]], floors: List[Dict[str, float]]) -> Dict[str, object]:
    """Medians of the pipeline's seconds per engine, the floor and the two ratios (COCO scale)."""
    engines = {}
    for name, runs in passes.items():
        engines[name] = {
            "pipeline_seconds": _median([float(r["end_to_end_seconds"]) for r in runs]),  # type: ignore[arg-type]
            "sim_seconds": _median([float(r.get("sim_seconds", 0.0)) for r in runs]),  # type: ignore[arg-type]
            "calibration_seconds": _median([float(r.get("calibration_seconds", 0.0)) for r in runs]),  # type: ignore[arg-type]
            "stages": {s: _median([r["stages"].get(s, 0.0) for r in runs]) for s in STAGES + ("reference",)  # type: ignore[union-attr]
                       if any(s in r["stages"] for r in runs)},  # type: ignore[operator]
        }
    floor = {k: _median([f[k] for f in floors]) for k in ("decode_seconds", "cocoeval_seconds")}
    floor["seconds"] = floor["decode_seconds"] + floor["cocoeval_seconds"]
    summary: Dict[str, object] = {"engines": engines, "pipeline_floor": floor, "repetitions": len(floors)}
    summary["pipeline_seconds"] = {name: entry["pipeline_seconds"] for name, entry in engines.items()}
    if "native" in engines:
        summary["pipeline_floor_ratio"] = engines["native"]["pipeline_seconds"] / floor["seconds"]  # type: ignore[operator]
    if "native" in engines and "reference" in engines:
        summary["pipeline_speedup_vs_reference"] = (
            engines["reference"]["pipeline_seconds"] / engines["native"]["pipeline_seconds"]  # type: ignore[operator]
        )
    return summary


def format_pipeline(summary: Dict[str, object]) -> str:
    floor = summary["pipeline_floor"]
    lines = [f"COCO-shaped set: {summary['images']} images, {summary['instances']} instances, "
             f"{summary['repetitions']} repetitions, medians in seconds"]
    for name, entry in summary["engines"].items():  # type: ignore[union-attr]
        stages = ", ".join(f"{k} {v:.2f}" for k, v in entry["stages"].items())
        lines.append(f"{name:9s} pipeline {entry['pipeline_seconds']:.2f} s (FP32 and W8A8, of which sim construction "
                     f"{entry['sim_seconds']:.2f} s, calibration {entry['calibration_seconds']:.2f} s)")
        lines.append(f"          stages: {stages}")
    lines.append(f"pipeline floor: decoding every image once {floor['decode_seconds']:.2f} s + COCOeval of each model "  # type: ignore[index]
                 f"{floor['cocoeval_seconds']:.2f} s = {floor['seconds']:.2f} s")  # type: ignore[index]
    if "pipeline_floor_ratio" in summary:
        lines.append(f"pipeline_floor_ratio (native pipeline / floor): {summary['pipeline_floor_ratio']:.3f}")
    if "pipeline_speedup_vs_reference" in summary:
        lines.append(f"pipeline_speedup_vs_reference (reference / native): {summary['pipeline_speedup_vs_reference']:.2f}x")
    return "\n".join(lines)


def _finish(run_dir: str, summary: Dict[str, object], text: str, code: int) -> int:
    write_atomic(os.path.join(run_dir, "bench.json"), json.dumps(summary, indent=2) + "\n")
    print(text)
    if "parity" in summary:
        print("parity on this run: " + ", ".join(
            f"{k} {'holds' if v['passed'] else 'FAILS'}" for k, v in summary["parity"].items()))  # type: ignore[union-attr]
    print(f"\nbench: {os.path.join(run_dir, 'bench.json')}")
    return code
