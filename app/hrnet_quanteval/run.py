"""A run, top to bottom: checks, sources, FP32 evaluation, quantized evaluation, report.

``run_eval`` is the ``eval`` command; ``selftest``, ``parity`` and ``bench`` are thin commands over the
same steps (``execute``, ``quantize_and_evaluate``, ``build_report``, ``finish``). The stages themselves
live below this module: datasets in ``validation``, files in ``artifacts``, the FP32 results cache in
``cache``, engines in ``engines``, AIMET in ``quantization``, the verdict and files in ``report``.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from . import environment, report
from .engines.base import Engine
from .engines.native import DEFAULT_CROP_CACHE_MB, NativeEngine
from .errors import EnvironmentProblem, stage
from .files import check_creatable_dir, check_empty_or_new_dir
from .progress import Progress, StageTimer
from .runs import check_writable, in_run_folder, mark, signals_deferred
from .runtypes import EvalSet, Evaluation, Outcome, RunOptions


def run_eval(args, command: Sequence[str]) -> int:
    """The ``eval`` command; returns the exit code (0 reproduced or no target, 1 not reproduced)."""
    from .artifacts import default_cache_dir, resolve_sources
    from .cache import Fp32Cache, fp32_cache_material
    from .checkpoint import load_hrnet
    from .quantization.base import check_bitwidths
    from .quantization.simulate import QuantPlan, check_plan, load_adapter

    # 1. checks that cost nothing, before any download or compute
    with stage("checking the host and the flags"):
        device = resolve_device(args.use_cuda)
        check_writable(args.results_dir)
        if args.artifacts_dir:
            check_creatable_dir(args.artifacts_dir, "artifacts folder", "pass --artifacts-dir with a folder you can write to")
        plan = adapter = None
        if not args.fp32_only:
            check_bitwidths(args.default_param_bw, args.default_output_bw)
            if args.export:
                check_empty_or_new_dir(args.export, "export folder", "pass --export with a new or empty folder")
            adapter = load_adapter()  # fail before any download or compute when AIMET is missing
    with stage("opening the dataset"):
        evalset = open_evalset(args)
    # 2. the files to evaluate: local ones, or the zoo's (cached, downloaded when missing), all checked
    with stage("fetching the zoo's files"):
        sources = resolve_sources(args, quantize=not args.fp32_only)
    for notice in sources.notices:
        print(notice)
    with stage("reading the checkpoints"):
        fp32 = load_hrnet(sources.fp32) if sources.fp32 is not None else None
        quant_source = load_hrnet(sources.quantized) if sources.quantized is not None else None
        if not args.fp32_only:
            plan = QuantPlan(
                param_bw=args.default_param_bw, output_bw=args.default_output_bw,
                calibration_images=args.calibration_images, encodings=sources.encodings,
                fold_batch_norms=sources.quantized is None, export_dir=args.export,
            )
            check_plan(plan, quant_source or fp32)  # the encodings file against the model, before FP32
    options = RunOptions(args.batch_size, args.workers, args.quiet)
    engine = make_engine(args.engine, args.crop_cache_mb)
    fp32_cache = None
    if fp32 is not None and not args.skip_fp32 and not args.no_cache:
        material = fp32_cache_material(
            sources.artifacts["fp32_checkpoint"]["sha256"], evalset, device, options, engine.name  # type: ignore[index]
        )
        fp32_cache = Fp32Cache(args.artifacts_dir or default_cache_dir(), material)

    def work(run_id: str, run_dir: str) -> int:
        # 3. FP32, then the quantized model; 4. the verdict and the report
        outcome = execute(
            evalset, device, run_dir, options, None if args.skip_fp32 else fp32, quant_source or fp32, plan, adapter,
            engine, fp32_cache,
        )
        verdict = report.verdict(outcome.models, evalset.describe(), environment.stack())
        record = build_report(run_id, command, outcome, verdict, evalset, device, options, sources.artifacts)
        finish(run_dir, record, outcome=outcome, evalset=evalset, visualize=args.visualize)
        return 1 if verdict["status"] == "not_reproduced" else 0

    return in_run_folder(args.results_dir, args.run_id, "fp32" if plan is None else plan.key, work)


def open_evalset(args) -> EvalSet:
    """The dataset the command's flags name (``--evaluation-dataset``, or ``--annotation-file`` + ``--image-dir``)."""
    from .artifacts import default_cache_dir
    from .validation import open_dataset

    return open_dataset(
        args.evaluation_dataset, getattr(args, "max_images", None), annotation_file=args.annotation_file,
        image_dir=args.image_dir, cache_dir=getattr(args, "artifacts_dir", None) or default_cache_dir(),
        quiet=getattr(args, "quiet", True),
    )


def resolve_device(use_cuda: Optional[bool]) -> torch.device:
    """CUDA when asked for (an error without a usable GPU), CPU when told so; ``None`` picks CUDA if usable."""
    from .preflight import check

    return torch.device("cuda" if check(use_cuda) else "cpu")


def seed_everything(device: torch.device) -> None:
    """The seed's determinism settings (its numpy and random are never used, so never seeded)."""
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(0)


def make_engine(name: str, crop_cache_mb: int = DEFAULT_CROP_CACHE_MB) -> Engine:
    """``native`` or ``reference`` (HRNet's own code; needs the prepared lib)."""
    if name == "reference":
        from .engines.reference import ReferenceEngine

        return ReferenceEngine()
    return NativeEngine(crop_cache_mb)


def execute(
    evalset: EvalSet, device: torch.device, run_dir: str, options: RunOptions,
    fp32: Optional[nn.Module] = None, quant_source: Optional[nn.Module] = None, plan=None, adapter=None,
    engine: Optional[Engine] = None, fp32_cache=None,
) -> Outcome:
    """The FP32 row (when a model is given; reused from ``fp32_cache`` when it has it) and the quantized one.

    The sim is built and calibrated first (on the first crops in loader order, which the native engine keeps),
    then both models are evaluated together, in one pass over the data where the engine can (native) or one
    after the other (reference). Each model's numbers are what a run of its own gives.
    """
    engine = engine or NativeEngine()
    seed_everything(device)
    outcome = Outcome(timer=StageTimer(device), engine=engine.name)
    with out_of_memory_advice(device, options.batch_size):
        pending: List[Tuple[str, nn.Module]] = []
        if fp32 is not None:
            cached = fp32_cache.reuse(run_dir, len(evalset.instances)) if fp32_cache is not None else None
            if cached is None:
                pending.append(("fp32", fp32))
            outcome.notes["fp32_results"] = fp32_cache.note if fp32_cache is not None else "computed (cache off)"
        if plan is not None:
            source = quant_source if quant_source is not None else fp32
            quantized = quantize_model(source, plan, evalset, device, options, outcome.timer, adapter, engine)
            outcome.quantization = quantized.info
            outcome.quantized_models[plan.key] = quantized.model
            pending.append((plan.key, quantized.model))
        names = " and ".join(name.upper() for name, _ in pending)
        with stage(f"{names} evaluation"):
            results = engine.evaluate_many(pending, evalset, device, run_dir, options, outcome.timer) if pending else {}
        if fp32 is not None:
            if cached is None and fp32_cache is not None:
                fp32_cache.keep(results["fp32"], run_dir)
                outcome.notes["fp32_results"] = fp32_cache.note
            record_model(outcome, "fp32", cached if cached is not None else results["fp32"])
        if plan is not None:
            record_model(outcome, plan.key, results[plan.key])
    return outcome


def record_model(outcome: Outcome, key: str, result: Evaluation) -> None:
    outcome.models[key] = result.stats
    outcome.evaluations[key] = result


def quantize_model(
    source: nn.Module, plan, evalset: EvalSet, device: torch.device, options: RunOptions, timer: StageTimer,
    adapter=None, engine: Optional[Engine] = None,
):
    """The AIMET sim of ``source``, built and calibrated on the first crops in loader order (``Quantized``)."""
    from .quantization.simulate import quantize

    engine = engine or NativeEngine()
    count = min(plan.calibration_images, len(evalset.instances))
    progress = Progress(count, f"{plan.key} calibration", quiet=options.quiet)
    calibrate = engine.calibration(evalset, count, options, device, progress.update)
    start = time.perf_counter()
    with stage(f"{plan.key.upper()} quantization and calibration"):
        quantized = quantize(source, plan, calibrate, device, adapter, accelerate=engine.name == "native")
    progress.close()
    timer.add("calibration", start)
    quantized.info["calibration_images"] = count
    return quantized


def quantize_and_evaluate(
    source: nn.Module, plan, evalset: EvalSet, device: torch.device, run_dir: str, options: RunOptions,
    timer: StageTimer, adapter=None, engine: Optional[Engine] = None,
):
    """Build and calibrate the AIMET sim, then evaluate it like FP32; the evaluation and the sim (``Quantized``)."""
    engine = engine or NativeEngine()
    quantized = quantize_model(source, plan, evalset, device, options, timer, adapter, engine)
    with stage(f"{plan.key.upper()} evaluation"):
        result = engine.evaluate(plan.key, quantized.model, evalset, device, run_dir, options, timer)
    return result, quantized


@contextlib.contextmanager
def out_of_memory_advice(device: torch.device, batch_size: int):
    """Turn CUDA running out of memory into an error that says which batch size to try."""
    try:
        yield
    except RuntimeError as error:
        if "out of memory" not in str(error):
            raise
        smaller = max(1, batch_size // 2)
        first = str(error).strip().splitlines()[0]
        raise EnvironmentProblem(
            f"{device.type.upper()} ran out of memory at --batch-size {batch_size} ({first})",
            f"run again with --batch-size {smaller}; the batch size does not change the numbers",
        ) from None


def build_report(
    run_id: str, command: Sequence[str], outcome: Outcome, verdict: Dict[str, object], evalset: EvalSet,
    device: torch.device, options: RunOptions, artifacts: Dict[str, object],
) -> Dict[str, object]:
    """report.json's content for a finished run."""
    return {
        "schema_version": report.SCHEMA_VERSION,
        "run_id": run_id,
        "status": "complete",
        "command": list(command),
        "models": outcome.models,
        "published": {"source": report.PUBLISHED_SOURCE, "targets": report.PUBLISHED, "tolerance": verdict.get("tolerance")},
        "verdict": verdict,
        "timings": {k: round(v, 3) for k, v in outcome.timer.seconds.items()} if outcome.timer else {},
        "environment": environment.describe(device),
        "artifacts": artifacts,
        "dataset": evalset.describe(),
        "quantization": outcome.quantization,
        "settings": {"batch_size": options.batch_size, "workers": options.workers, "flip_test": True,
                     "device": str(device), "engine": outcome.engine, **outcome.notes},
        "results_files": {name: f"keypoints_{name}_results.json" for name in outcome.models},
    }


def finish(
    run_dir: str, record: Dict[str, object], published: bool = True, outcome: Optional[Outcome] = None,
    evalset: Optional[EvalSet] = None, visualize: int = 0,
) -> None:
    """Pictures first (report.png, overlays), then report.md, report.json and the status; print the table and verdict."""
    from . import visualize as pictures

    with stage("writing the report"):
        chart = os.path.join(run_dir, "report.png")
        pictures.accuracy_chart(record["models"], report.PUBLISHED if published else {}, chart)  # type: ignore[arg-type]
        record["files"] = ["report.png"]
        if visualize and outcome is not None and evalset is not None and outcome.evaluations:
            predictions = {name: result.preds for name, result in outcome.evaluations.items()}
            folder = os.path.join(run_dir, "visualize")
            written = pictures.overlays(evalset.instances, evalset.coco, predictions, folder, visualize)
            record["files"] += [os.path.relpath(p, run_dir) for p in written]  # type: ignore[operator]
        with signals_deferred() as held:  # the report and the status are written whole, or not at all
            report.write_report(run_dir, record, published)
            mark(run_dir, "complete")
    print(report.format_table(record["models"], str(record["verdict"]["text"]), published))  # type: ignore[index,arg-type]
    print(f"\nreport: {os.path.join(run_dir, 'report.json')}")
    if held:
        print("a signal arrived while the report was being written; the run is complete and keeps its exit code",
              file=sys.stderr)
