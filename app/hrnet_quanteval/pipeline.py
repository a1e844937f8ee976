"""A run: checks first, then FP32 and quantized evaluation, then the report. Shared by ``eval`` and ``selftest``."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from . import data, environment, evaluation, report
from .artifacts import sha256_file
from .errors import EnvironmentProblem, InputError, Terminated
from .inference import Normalizer, StageTimer, predict
from .progress import Progress
from .runs import check_writable, create_run_dir, mark, write_atomic


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


@dataclass
class EvalSet:
    """The dataset as one run evaluates it."""

    root: str
    annotation_file: str
    coco: object
    instances: data.Instances
    max_images: Optional[int]
    _annotation_sha256: Optional[str] = field(default=None, repr=False)

    def describe(self) -> Dict[str, object]:
        if self._annotation_sha256 is None:  # COCO's file is 10 MB: hash it once per run, not per report section
            self._annotation_sha256 = sha256_file(self.annotation_file)
        return {
            "root": self.root,
            "annotation_file": self.annotation_file,
            "annotation_sha256": self._annotation_sha256,
            "images": len(self.instances.evaluated_image_ids),
            "instances": len(self.instances),
            "max_images": self.max_images,
        }


COCO_2014_HELP = (
    "the zoo evaluated COCO val2017 (its code reads annotations/person_keypoints_val2017.json and images/val2017/; "
    "its doc's 2014 links are wrong): download val2017.zip and annotations_trainval2017.zip from "
    "cocodataset.org and unpack them into the dataset folder"
)


def _check_keypoint_json(annotation_file: str) -> None:
    """The annotation file is whole JSON in COCO's person-keypoint shape, checked before pycocotools indexes it."""
    try:
        with open(annotation_file) as f:
            content = json.load(f)
    except ValueError as error:
        raise InputError(
            f"annotation file {annotation_file} is not valid JSON ({error}); it may be truncated",
            "download annotations_trainval2017.zip again and unpack it into the dataset folder",
        ) from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(content, dict) or k not in content]
    people = [c for c in content.get("categories", []) if isinstance(c, dict) and "keypoints" in c] if not missing else []
    if missing or not people:
        what = f"it lacks {', '.join(missing)}" if missing else "no category has keypoints (an instances_ or captions_ file?)"
        raise InputError(
            f"annotation file {annotation_file} is not COCO person keypoints: {what}",
            "use person_keypoints_val2017.json from annotations_trainval2017.zip",
        )


def open_dataset(root: str, max_images: Optional[int] = None) -> EvalSet:
    """Check the COCO folder and every image the run needs, before any compute."""
    if not os.path.exists(root):
        raise InputError(f"dataset folder {root} does not exist", "pass --evaluation-dataset with your COCO root")
    if not os.path.isdir(root):
        raise InputError(f"dataset path {root} is not a folder", "pass the COCO root folder, not a file")
    annotation_file = os.path.join(root, data.ANNOTATION_FILE)
    if not os.path.isfile(annotation_file):
        found_2014 = [p for p in ("annotations/person_keypoints_val2014.json", "images/val2014")
                      if os.path.exists(os.path.join(root, p))]
        if found_2014:
            raise InputError(f"{root} holds COCO 2014 ({', '.join(found_2014)}), not val2017", COCO_2014_HELP)
        raise InputError(
            f"annotation file {annotation_file} is missing",
            "the folder needs annotations/person_keypoints_val2017.json and images/val2017/ "
            "(from annotations_trainval2017.zip and val2017.zip)",
        )
    _check_keypoint_json(annotation_file)
    try:
        coco = data.load_coco(annotation_file)
        instances = data.select_instances(coco, root, max_images)
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(
            f"annotation file {annotation_file} is not COCO keypoint JSON ({type(error).__name__}: {error})",
            "download annotations_trainval2017.zip again and unpack it into the dataset folder",
        ) from None
    if not len(instances):
        raise InputError(f"no person instances with keypoints in {annotation_file}", "check the annotation file")
    data.check_images(instances.paths)
    return EvalSet(root, annotation_file, coco, instances, max_images)


@dataclass
class RunOptions:
    batch_size: int = 32
    workers: int = 0
    quiet: bool = False


@dataclass
class Outcome:
    """What the models scored, how long each stage took, and what quantization did."""

    models: Dict[str, Dict[str, float]] = field(default_factory=dict)
    timer: Optional[StageTimer] = None
    quantization: Dict[str, object] = field(default_factory=dict)
    engine: str = "native"
    evaluations: Dict[str, object] = field(default_factory=dict)
    notes: Dict[str, object] = field(default_factory=dict)


@dataclass
class Evaluation:
    """One model's evaluation: the ten stats, every instance's joints (N, 17, 3), the results file."""

    stats: Dict[str, float]
    preds: np.ndarray
    results_file: str


DEFAULT_CROP_CACHE_MB = 2048  # COCO val2017's 6352 crops take 936 MB


class NativeEngine:
    """This package's own pipeline: uint8 crops decoded once per run, flip test and decoding on the device."""

    name = "native"

    def __init__(self, crop_cache_mb: int = DEFAULT_CROP_CACHE_MB) -> None:
        self.crop_cache_mb = crop_cache_mb
        self._caches: Dict[str, data.CropCache] = {}

    def _crops(self, evalset: EvalSet, count: int, options: RunOptions, device: torch.device):
        """(uint8 crops, indices) for the first ``count`` instances: from memory when cached, else decoded and cached."""
        key = evalset.annotation_file
        if key not in self._caches:
            self._caches[key] = data.CropCache(
                len(evalset.instances), self.crop_cache_mb * 2**20, pin_memory=device.type == "cuda"
            )
        cache = self._caches[key]
        if cache.holds(count):
            yield from cache.batches(count, options.batch_size)
            return
        instances = evalset.instances if count == len(evalset.instances) else evalset.instances.head(count)
        for crops, index in data.crop_loader(instances, options.batch_size, options.workers, device.type == "cuda"):
            cache.put(crops, index)
            yield crops, index

    def evaluate(
        self, name: str, model: nn.Module, evalset: EvalSet, device: torch.device, run_dir: str,
        options: RunOptions, timer: StageTimer,
    ) -> Evaluation:
        """Flip-test inference on every instance, results file, COCOeval."""
        instances = evalset.instances
        progress = Progress(len(instances), f"{name} evaluation", quiet=options.quiet)
        preds = predict(
            model.to(device), self._crops(evalset, len(instances), options, device), len(instances),
            instances.heatmap_to_image(), device, on_batch=progress.update, timer=timer,
        )
        progress.close()
        start = time.perf_counter()
        results = evaluation.coco_results(instances.image_ids, preds, instances.centers, instances.scales, instances.areas)
        results_file = os.path.join(run_dir, f"keypoints_{name}_results.json")
        evaluation.write_results(results_file, results)
        image_ids = instances.evaluated_image_ids if evalset.max_images is not None else None
        stats, log = evaluation.coco_stats(evalset.coco, results_file, image_ids)
        write_atomic(os.path.join(run_dir, f"cocoeval_{name}.txt"), log)
        timer.add("evaluation", start)
        return Evaluation(stats, preds, results_file)

    def calibration(
        self, evalset: EvalSet, count: int, options: RunOptions, device: torch.device,
        on_batch: Optional[Callable[[int], None]] = None,
    ) -> Callable[[nn.Module], None]:
        """The zoo's calibration callback: forward passes without flip over the first ``count`` crops in loader order.

        With the min/max scheme only the set of crops matters, not how it is split into batches.
        """
        normalize = Normalizer(device)

        def calibrate(model: nn.Module) -> None:
            with torch.no_grad():
                for batch, index in self._crops(evalset, count, options, device):
                    model(normalize(batch.to(device, non_blocking=True)))
                    if on_batch is not None:
                        on_batch(len(index))

        return calibrate


def make_engine(name: str, crop_cache_mb: int = DEFAULT_CROP_CACHE_MB):
    """``native`` or ``reference`` (HRNet's own code; needs the prepared lib)."""
    if name == "reference":
        from .reference import ReferenceEngine

        return ReferenceEngine()
    return NativeEngine(crop_cache_mb)


def quantize_and_evaluate(
    source: nn.Module, plan, evalset: EvalSet, device: torch.device, run_dir: str, options: RunOptions,
    timer: StageTimer, adapter=None, engine=None,
):
    """Build and calibrate the AIMET sim on the first crops in loader order, then evaluate it like FP32."""
    from .quantization import quantize

    engine = engine or NativeEngine()
    count = min(plan.calibration_images, len(evalset.instances))
    progress = Progress(count, f"{plan.key} calibration", quiet=options.quiet)
    calibrate = engine.calibration(evalset, count, options, device, progress.update)
    start = time.perf_counter()
    quantized = quantize(source, plan, calibrate, device, adapter, accelerate=engine.name == "native")
    progress.close()
    timer.add("calibration", start)
    quantized.info["calibration_images"] = count
    result = engine.evaluate(plan.key, quantized.model, evalset, device, run_dir, options, timer)
    return result, quantized.info


def execute(
    evalset: EvalSet, device: torch.device, run_dir: str, options: RunOptions,
    fp32: Optional[nn.Module] = None, quant_source: Optional[nn.Module] = None, plan=None, adapter=None,
    engine=None, fp32_cache=None,
) -> Outcome:
    """FP32 evaluation (when a model is given; reused from ``fp32_cache`` when it has it), then the quantized one."""
    engine = engine or NativeEngine()
    seed_everything(device)
    outcome = Outcome(timer=StageTimer(device), engine=engine.name)
    with out_of_memory_advice(device, options.batch_size):
        _execute(outcome, engine, evalset, device, run_dir, options, fp32, quant_source, plan, adapter, fp32_cache)
    return outcome


def _execute(outcome, engine, evalset, device, run_dir, options, fp32, quant_source, plan, adapter, fp32_cache) -> None:
    if fp32 is not None:
        result = fp32_cache.reuse(run_dir) if fp32_cache is not None else None
        if result is None:
            result = engine.evaluate("fp32", fp32, evalset, device, run_dir, options, outcome.timer)
            if fp32_cache is not None:
                fp32_cache.keep(result, run_dir)
        outcome.notes["fp32_results"] = fp32_cache.note if fp32_cache is not None else "computed (cache off)"
        outcome.models["fp32"] = result.stats
        outcome.evaluations["fp32"] = result
    if plan is not None:
        result, info = quantize_and_evaluate(
            quant_source if quant_source is not None else fp32, plan, evalset, device, run_dir, options,
            outcome.timer, adapter, engine,
        )
        outcome.models[plan.key] = result.stats
        outcome.evaluations[plan.key] = result
        outcome.quantization = info


def build_report(
    run_id: str, command: Sequence[str], outcome: Outcome, verdict: Dict[str, object], evalset: EvalSet,
    device: torch.device, options: RunOptions, artifacts: Dict[str, object],
) -> Dict[str, object]:
    return {
        "schema_version": report.SCHEMA_VERSION,
        "run_id": run_id,
        "status": "complete",
        "command": list(command),
        "models": outcome.models,
        "published": {"source": report.PUBLISHED_SOURCE, "targets": report.PUBLISHED, "tolerance": verdict.get("tolerance")},
        "verdict": verdict,
        "timings": {k: round(v, 3) for k, v in outcome.timer.seconds.items()},
        "environment": environment.describe(device),
        "artifacts": artifacts,
        "dataset": evalset.describe(),
        "quantization": outcome.quantization,
        "settings": {"batch_size": options.batch_size, "workers": options.workers, "flip_test": True,
                     "device": str(device), "engine": outcome.engine, **outcome.notes},
        "results_files": {name: f"keypoints_{name}_results.json" for name in outcome.models},
    }


def in_run_folder(results_dir: str, run_id: Optional[str], label: str, work: Callable[[str, str], int]) -> int:
    """Create the run folder, run ``work(run_id, run_dir)``, and mark the folder with how it ended.

    An interrupted or failed run keeps whatever it wrote but never gets a report.json; status.json says why.
    """
    run_id, run_dir = create_run_dir(results_dir, run_id, label)
    try:
        code = work(run_id, run_dir)
    except KeyboardInterrupt:
        _mark_quietly(run_dir, "interrupted", "SIGINT")
        raise
    except Terminated:
        _mark_quietly(run_dir, "interrupted", "SIGTERM")
        raise
    except BaseException as error:
        _mark_quietly(run_dir, "failed", f"{type(error).__name__}: {error}")
        raise
    mark(run_dir, "complete")
    return code


def _mark_quietly(run_dir: str, status: str, detail: str) -> None:
    try:
        mark(run_dir, status, detail)
    except (OSError, EnvironmentProblem):  # a full disk must not hide the error that stopped the run
        pass


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


def finish(
    run_dir: str, record: Dict[str, object], published: bool = True, outcome: Optional[Outcome] = None,
    evalset: Optional[EvalSet] = None, visualize: int = 0,
) -> None:
    """Pictures first (report.png, overlays), then report.md and report.json; print the table and verdict."""
    from . import visualize as pictures

    pictures.accuracy_chart(record["models"], report.PUBLISHED if published else {}, os.path.join(run_dir, "report.png"))
    record["files"] = ["report.png"]
    if visualize and outcome is not None and evalset is not None and outcome.evaluations:
        predictions = {name: result.preds for name, result in outcome.evaluations.items()}
        written = pictures.overlays(evalset.instances, evalset.coco, predictions, os.path.join(run_dir, "visualize"), visualize)
        record["files"] += [os.path.relpath(p, run_dir) for p in written]
    report.write_report(run_dir, record, published)
    print(report.format_table(record["models"], str(record["verdict"]["text"]), published))  # type: ignore[index]
    print(f"\nreport: {os.path.join(run_dir, 'report.json')}")


@dataclass
class Sources:
    """Which files a run evaluates, and how the quantized model is made."""

    fp32: Optional[str] = None
    quantized: Optional[str] = None  # path (a): wrap this checkpoint as it is
    encodings: Optional[str] = None
    artifacts: Dict[str, object] = field(default_factory=dict)
    notices: Sequence[str] = ()


def resolve_sources(args, quantize: bool) -> Sources:
    """Local files where given, the zoo's release files (cached, downloaded if needed) for the rest.

    With ``--fp32-checkpoint`` and no ``--quantized-checkpoint`` the FP32 model itself is folded and
    quantized (path b, weight encodings from ``--encodings`` or from the weights). Otherwise the quantized
    checkpoint (``--quantized-checkpoint`` or the zoo's) is wrapped as it is with frozen weight encodings
    (``--encodings`` or the zoo's): the zoo's path (a).
    """
    from .artifacts import ArtifactStore, fp32_name, quantized_names

    own_fp32 = args.fp32_checkpoint is not None
    path_a = quantize and (args.quantized_checkpoint is not None or not own_fp32)
    need_fp32 = not args.skip_fp32 or (quantize and not path_a)
    wanted: Dict[str, str] = {}  # role -> release name
    if need_fp32 and not own_fp32:
        wanted["fp32_checkpoint"] = fp32_name()
    if path_a:
        if args.quantized_checkpoint is None or args.encodings is None:
            if (args.default_param_bw, args.default_output_bw) not in ((8, 8), (4, 8)):
                raise InputError(
                    f"the zoo publishes W8A8 and W4A8 only, not W{args.default_param_bw}A{args.default_output_bw}",
                    "pass --fp32-checkpoint to fold and quantize an FP32 model yourself, or use --default-param-bw 8 or 4",
                )
            checkpoint, encodings = quantized_names(args.default_param_bw, args.default_output_bw)
            if args.quantized_checkpoint is None:
                wanted["quantized_checkpoint"] = checkpoint
            if args.encodings is None:
                wanted["encodings"] = encodings
    sources = Sources()
    local = {"fp32_checkpoint": args.fp32_checkpoint if need_fp32 else None,
             "quantized_checkpoint": args.quantized_checkpoint if path_a else None,
             "encodings": args.encodings if quantize else None}
    for role, path in local.items():
        if path is not None:
            if not os.path.isfile(path):
                raise InputError(f"{role.replace('_', ' ')} {path} does not exist", "check the path")
            sources.artifacts[role] = {"path": path, "sha256": sha256_file(path), "source": "local file"}
    if wanted:
        store = ArtifactStore.from_options(args.artifacts_dir, args.artifacts_url, args.offline, args.quiet)
        fetched = store.fetch_all(list(wanted.values()))
        for role, name in wanted.items():
            sources.artifacts[role] = dict(fetched[name].record(), source="zoo release")
            local[role] = fetched[name].path
        sources.notices = list(store.notices)
    sources.fp32, sources.quantized, sources.encodings = local["fp32_checkpoint"], local["quantized_checkpoint"], local["encodings"]
    return sources


class Fp32Cache:
    """The FP32 row of one run: reused from the results cache when the same key was computed before."""

    def __init__(self, root: str, material: Dict[str, object]) -> None:
        from .cache import ResultsCache

        self.cache = ResultsCache(root)
        self.material = material
        self.note = "computed"

    def reuse(self, run_dir: str) -> Optional[Evaluation]:
        hit = self.cache.load(self.material)
        if hit is None:
            return None
        results_file = os.path.join(run_dir, "keypoints_fp32_results.json")
        shutil.copyfile(str(hit["results_file"]), results_file)
        shutil.copyfile(os.path.join(str(hit["folder"]), "cocoeval.txt"), os.path.join(run_dir, "cocoeval_fp32.txt"))
        self.note = f"reused from {hit['folder']}"
        print(f"fp32: results reused from the cache ({hit['folder']}): same checkpoint, dataset, code and device; "
              "--no-cache recomputes them")
        return Evaluation(hit["stats"], hit["preds"], results_file)  # type: ignore[arg-type]

    def keep(self, result: Evaluation, run_dir: str) -> None:
        with open(os.path.join(run_dir, "cocoeval_fp32.txt")) as f:
            log = f.read()
        if self.cache.store(self.material, result.stats, result.preds, result.results_file, log):
            self.note = f"computed and cached in {self.cache.path(self.material)}"


def source_fingerprint() -> str:
    """sha256 over this package's Python sources: any code change makes a new cache key."""
    digest = hashlib.sha256()
    package = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(os.listdir(package)):
        if name.endswith(".py"):
            with open(os.path.join(package, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()


def fp32_cache_material(sources, evalset: EvalSet, device: torch.device, options: RunOptions, engine) -> Dict[str, object]:
    env = environment.describe(device)
    return {
        "checkpoint_sha256": sources.artifacts["fp32_checkpoint"]["sha256"],
        "dataset": {k: v for k, v in evalset.describe().items() if k != "root" and k != "annotation_file"},
        "code": {k: env.get(k) for k in ("app_version", "app_git_commit", "torch", "numpy", "opencv", "pycocotools")},
        "source_sha256": source_fingerprint(),
        "device": {k: env.get(k) for k in ("device", "gpu_name", "cuda", "cudnn")},
        "batch_size": options.batch_size,
        "engine": engine.name,
    }


def run_eval(args, command: Sequence[str]) -> int:
    """The ``eval`` subcommand; returns the exit code."""
    from .checkpoint import load_hrnet
    from .quantization import QuantPlan, check_bitwidths, load_adapter

    device = resolve_device(args.use_cuda)
    check_writable(args.results_dir)
    plan = adapter = None
    if not args.fp32_only:
        check_bitwidths(args.default_param_bw, args.default_output_bw)
        adapter = load_adapter()  # fail before any download or compute when AIMET is missing
    evalset = open_dataset(args.evaluation_dataset, args.max_images)
    sources = resolve_sources(args, quantize=not args.fp32_only)
    for notice in sources.notices:
        print(notice)
    if not args.fp32_only:
        plan = QuantPlan(
            param_bw=args.default_param_bw, output_bw=args.default_output_bw,
            calibration_images=args.calibration_images, encodings=sources.encodings,
            fold_batch_norms=sources.quantized is None, export_dir=args.export,
        )
    fp32 = load_hrnet(sources.fp32) if sources.fp32 is not None else None
    quant_source = load_hrnet(sources.quantized) if sources.quantized is not None else None
    options = RunOptions(args.batch_size, args.workers, args.quiet)
    label = "fp32" if plan is None else plan.key
    engine = make_engine(args.engine, args.crop_cache_mb)
    fp32_cache = None
    if fp32 is not None and not args.skip_fp32 and not args.no_cache:
        from .artifacts import default_cache_dir

        material = fp32_cache_material(sources, evalset, device, options, engine)
        fp32_cache = Fp32Cache(args.artifacts_dir or default_cache_dir(), material)

    def work(run_id: str, run_dir: str) -> int:
        outcome = execute(
            evalset, device, run_dir, options, None if args.skip_fp32 else fp32, quant_source or fp32, plan, adapter,
            engine, fp32_cache,
        )
        verdict = report.verdict(outcome.models, evalset.describe(), environment.stack())
        record = build_report(run_id, command, outcome, verdict, evalset, device, options, sources.artifacts)
        finish(run_dir, record, outcome=outcome, evalset=evalset, visualize=args.visualize)
        return 1 if verdict["status"] == "not_reproduced" else 0

    return in_run_folder(args.results_dir, args.run_id, label, work)
