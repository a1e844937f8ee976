"""FP32 results kept between runs: the FP32 row does not change when only the bitwidth does.

An entry is keyed by everything that can move an FP32 number: the checkpoint's sha256, the dataset
(annotation sha256, every image's content hash, counts, ``--max-images``), the code (app version and git commit, torch,
numpy, OpenCV), the device and the batch size. It holds the ten stats, every instance's joints and the
COCO results file; it is written to a temporary folder and renamed, so a half-written entry is never read.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from typing import Dict, Optional

import numpy as np
import torch

from . import environment
from .runtypes import EvalSet, Evaluation, RunOptions

FOLDER = "fp32-results"


def cache_key(material: Dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


class ResultsCache:
    def __init__(self, root: str) -> None:
        self.root = os.path.join(root, FOLDER)

    def path(self, material: Dict[str, object]) -> str:
        return os.path.join(self.root, cache_key(material))

    def load(self, material: Dict[str, object]) -> Optional[Dict[str, object]]:
        """``{"stats", "preds", "results_file", "folder"}`` of a stored entry, or None."""
        folder = self.path(material)
        try:
            with open(os.path.join(folder, "key.json")) as f:
                if json.load(f) != json.loads(json.dumps(material)):
                    return None  # a hash collision or an older layout
            with open(os.path.join(folder, "stats.json")) as f:
                stats = json.load(f)
            preds = np.load(os.path.join(folder, "preds.npy"))
        except (OSError, ValueError):
            return None
        return {"stats": stats, "preds": preds, "results_file": os.path.join(folder, "results.json"), "folder": folder}

    def store(
        self, material: Dict[str, object], stats: Dict[str, float], preds: np.ndarray, results_file: str, log: str
    ) -> bool:
        """Best effort: a cache that cannot be written only costs the next run its shortcut."""
        folder = self.path(material)
        work = None
        try:
            os.makedirs(self.root, exist_ok=True)
            work = tempfile.mkdtemp(prefix=".entry-", dir=self.root)
            with open(os.path.join(work, "key.json"), "w") as f:
                json.dump(material, f, sort_keys=True, indent=1)
            with open(os.path.join(work, "stats.json"), "w") as f:
                json.dump(stats, f)
            with open(os.path.join(work, "cocoeval.txt"), "w") as f:
                f.write(log)
            np.save(os.path.join(work, "preds.npy"), preds)
            shutil.copyfile(results_file, os.path.join(work, "results.json"))
            if os.path.isdir(folder):
                shutil.rmtree(folder)
            os.replace(work, folder)
            return True
        except OSError:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
            return False


class Fp32Cache:
    """The FP32 row of one run: reused from the results cache when the same key was computed before."""

    def __init__(self, root: str, material: Dict[str, object]) -> None:
        self.cache = ResultsCache(root)
        self.material = material
        self.note = "computed"

    def reuse(self, run_dir: str, instances: int) -> Optional[Evaluation]:
        """The stored FP32 evaluation copied into ``run_dir``, or None (a miss, or an entry that is broken:
        a file missing or unreadable, or joints for another number of instances; then FP32 is recomputed)."""
        hit = self.cache.load(self.material)
        if hit is None:
            return None
        results_file = os.path.join(run_dir, "keypoints_fp32_results.json")
        try:
            if len(hit["preds"]) != instances:  # type: ignore[arg-type]
                raise ValueError(f"{len(hit['preds'])} instances stored, {instances} evaluated")  # type: ignore[arg-type]
            shutil.copyfile(str(hit["results_file"]), results_file)
            shutil.copyfile(os.path.join(str(hit["folder"]), "cocoeval.txt"), os.path.join(run_dir, "cocoeval_fp32.txt"))
        except (OSError, ValueError) as error:
            for name in ("keypoints_fp32_results.json", "cocoeval_fp32.txt"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(run_dir, name))
            self.note = f"cache entry {hit['folder']} was broken ({error}); recomputed"
            print(f"fp32: the cached entry {hit['folder']} is broken ({error}); computing FP32 again")
            return None
        self.note = f"reused from {hit['folder']}"
        print(f"fp32: results reused from the cache ({hit['folder']}): same checkpoint, images, annotations, code and "
              "device; --no-cache recomputes them")
        return Evaluation(hit["stats"], hit["preds"], results_file)  # type: ignore[arg-type]

    def keep(self, result: Evaluation, run_dir: str) -> None:
        with open(os.path.join(run_dir, "cocoeval_fp32.txt")) as f:
            log = f.read()
        if self.cache.store(self.material, result.stats, result.preds, result.results_file, log):
            earlier = self.note + "; " if "recomputed" in self.note else ""
            self.note = earlier + f"computed and cached in {self.cache.path(self.material)}"


def source_fingerprint(package: str = os.path.dirname(os.path.abspath(__file__))) -> str:
    """sha256 over this package's Python sources, subpackages included: any code change makes a new cache key."""
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(package):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digest.update(os.path.relpath(path, package).encode() + b"\0" + f.read())
    return digest.hexdigest()


def fp32_cache_material(
    checkpoint_sha256: str, evalset: EvalSet, device: torch.device, options: RunOptions, engine: str
) -> Dict[str, object]:
    """Everything that can move an FP32 number, as the cache key's material."""
    env = environment.describe(device)
    return {
        "checkpoint_sha256": checkpoint_sha256,
        # what the data is (annotation and image hashes, counts), not where it is
        "dataset": {k: v for k, v in evalset.describe().items() if k not in ("root", "annotation_file", "image_dir")},
        "code": {k: env.get(k) for k in ("app_version", "app_git_commit", "torch", "numpy", "opencv", "pycocotools")},
        "source_sha256": source_fingerprint(),
        # on the CPU the thread count may decide how a convolution's sums are split
        "device": {k: env.get(k) for k in ("device", "gpu_name", "cuda", "cudnn", "torch_threads")},
        "batch_size": options.batch_size,
        "engine": engine,
    }
