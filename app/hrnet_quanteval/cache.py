"""FP32 results kept between runs: the FP32 row does not change when only the bitwidth does.

An entry is keyed by everything that can move an FP32 number: the checkpoint's sha256, the dataset
(annotation sha256, images, instances, ``--max-images``), the code (app version and git commit, torch,
numpy, OpenCV), the device and the batch size. It holds the ten stats, every instance's joints and the
COCO results file; it is written to a temporary folder and renamed, so a half-written entry is never read.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Dict, Optional

import numpy as np

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
