"""The ``eval`` run: checks first, then inference, COCO evaluation and the report, per model."""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from . import data, environment, evaluation, report
from .errors import EnvironmentProblem, InputError
from .inference import StageTimer, predict
from .progress import Progress
from .runs import create_run_dir, mark


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_device(use_cuda: Optional[bool]) -> torch.device:
    """CUDA when asked for (error without a GPU), CPU when told so; ``None`` picks CUDA if present."""
    available = torch.cuda.is_available()
    if use_cuda and not available:
        raise EnvironmentProblem(
            "--use-cuda true was given but PyTorch sees no CUDA GPU",
            "check the NVIDIA driver (nvidia-smi), run the container with a GPU (the compose services reserve one; "
            "with docker run pass --gpus all), or pass --use-cuda false to evaluate on the CPU",
        )
    return torch.device("cuda" if (available if use_cuda is None else use_cuda) else "cpu")


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

    def describe(self) -> Dict[str, object]:
        return {
            "root": self.root,
            "annotation_file": self.annotation_file,
            "annotation_sha256": sha256_file(self.annotation_file),
            "images": len(self.instances.evaluated_image_ids),
            "instances": len(self.instances),
            "max_images": self.max_images,
        }


def open_dataset(root: str, max_images: Optional[int] = None) -> EvalSet:
    """Check the COCO folder and every image the run needs, before any compute."""
    if not os.path.exists(root):
        raise InputError(f"dataset folder {root} does not exist", "pass --evaluation-dataset with your COCO root")
    if not os.path.isdir(root):
        raise InputError(f"dataset path {root} is not a folder", "pass the COCO root folder, not a file")
    annotation_file = os.path.join(root, data.ANNOTATION_FILE)
    if not os.path.isfile(annotation_file):
        raise InputError(
            f"annotation file {annotation_file} is missing",
            "the folder needs annotations/person_keypoints_val2017.json and images/val2017/",
        )
    try:
        coco = data.load_coco(annotation_file)
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(
            f"annotation file {annotation_file} is not COCO keypoint JSON ({type(error).__name__}: {error})",
            "download annotations_trainval2017.zip again and unpack it into the dataset folder",
        ) from None
    instances = data.select_instances(coco, root, max_images)
    if not len(instances):
        raise InputError(f"no person instances with keypoints in {annotation_file}", "check the annotation file")
    missing = [p for p in dict.fromkeys(instances.paths) if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(
            f"{len(missing)} of {len(set(instances.paths))} images are missing under {os.path.join(root, data.IMAGE_DIR)}: {shown}",
            "unpack val2017.zip into images/ so that images/val2017/<12-digit id>.jpg exist",
        )
    return EvalSet(root, annotation_file, coco, instances, max_images)


def evaluate_model(
    name: str,
    model: nn.Module,
    evalset: EvalSet,
    device: torch.device,
    run_dir: str,
    batch_size: int,
    workers: int,
    quiet: bool = False,
    timer: Optional[StageTimer] = None,
) -> Dict[str, float]:
    """Flip-test inference on every instance, results file, COCOeval; returns the ten stats."""
    instances = evalset.instances
    timer = timer or StageTimer(device)
    loader = data.crop_loader(instances, batch_size, workers, pin_memory=device.type == "cuda")
    progress = Progress(len(instances), f"{name} evaluation", quiet=quiet)
    preds = predict(
        model.to(device), loader, len(instances), instances.heatmap_to_image(), device,
        on_batch=progress.update, timer=timer,
    )
    progress.close()
    start = time.perf_counter()
    results = evaluation.coco_results(
        instances.image_ids, preds, instances.centers, instances.scales, instances.areas
    )
    results_file = os.path.join(run_dir, f"keypoints_{name}_results.json")
    evaluation.write_results(results_file, results)
    image_ids = instances.evaluated_image_ids if evalset.max_images is not None else None
    stats, log = evaluation.coco_stats(evalset.coco, results_file, image_ids)
    with open(os.path.join(run_dir, f"cocoeval_{name}.txt"), "w") as f:
        f.write(log)
    timer.add("evaluation", start)
    return stats


def run_eval(args, command: Sequence[str]) -> int:
    """The ``eval`` subcommand: FP32 evaluation of a checkpoint, report and verdict; returns the exit code."""
    from .checkpoint import load_hrnet

    device = resolve_device(args.use_cuda)
    if args.fp32_checkpoint is None:
        raise InputError("no model given", "pass --fp32-checkpoint with an HRNet-W32 state dict")
    evalset = open_dataset(args.evaluation_dataset, args.max_images)
    model = load_hrnet(args.fp32_checkpoint)
    run_id, run_dir = create_run_dir(args.results_dir, args.run_id, "fp32")
    try:
        seed_everything(device)
        timer = StageTimer(device)
        models: Dict[str, Dict[str, float]] = {}
        models["fp32"] = evaluate_model(
            "fp32", model, evalset, device, run_dir, args.batch_size, args.workers, args.quiet, timer
        )
        stack = environment.stack()
        dataset_info = evalset.describe()
        outcome = report.verdict(models, dataset_info, stack)
        record = {
            "schema_version": report.SCHEMA_VERSION,
            "run_id": run_id,
            "status": "complete",
            "command": list(command),
            "models": models,
            "published": {
                "source": report.PUBLISHED_SOURCE,
                "targets": report.PUBLISHED,
                "tolerance": outcome["tolerance"],
            },
            "verdict": outcome,
            "timings": {k: round(v, 3) for k, v in timer.seconds.items()},
            "environment": environment.describe(device),
            "artifacts": {"fp32_checkpoint": {"path": args.fp32_checkpoint, "sha256": sha256_file(args.fp32_checkpoint)}},
            "dataset": dataset_info,
            "settings": {"batch_size": args.batch_size, "workers": args.workers, "flip_test": True, "device": str(device)},
            "results_files": {name: f"keypoints_{name}_results.json" for name in models},
        }
        report.write_report(run_dir, record)
        mark(run_dir, "complete")
    except KeyboardInterrupt:
        mark(run_dir, "interrupted")
        raise
    except BaseException as error:
        mark(run_dir, "failed", f"{type(error).__name__}: {error}")
        raise
    print(report.format_table(models, str(outcome["text"])))
    print(f"\nreport: {os.path.join(run_dir, 'report.json')}")
    return 1 if outcome["status"] == "not_reproduced" else 0
