"""The reference engine: the seed's own code path through HRNet's (patched) lib.

HRNet's ``config`` system with the zoo's settings, its ``COCODataset`` and the patched ``validate`` from
``core/function.py`` evaluate the same model objects (FP32, or the AIMET sim) that the native engine gets.
The lib is found through ``HRNET_LIB`` (set in the images; ``build/hrnet-lib`` from ``make reference-lib``
otherwise). Its generic top-level packages (``config``, ``core``, ``dataset``, ``models``, ``nms``,
``utils``) are imported through a finder that is active only while importing and are then moved out of
``sys.modules``, so they never shadow anything else.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import io
import os
import shutil
import sys
import tempfile
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..data import ANNOTATION_FILE, image_path, write_reference_layout
from ..errors import EnvironmentProblem
from ..evaluation import STAT_NAMES
from ..inference import MEAN, STD
from ..progress import StageTimer
from ..runtypes import EvalSet, Evaluation, RunOptions
from .base import Calibrate, Engine

LIB_PACKAGES = ("config", "core", "dataset", "models", "nms", "utils")
LIB_ENV = "HRNET_LIB"
LOCAL_LIB = os.path.join("build", "hrnet-lib")
# HRNet's names for COCOeval's ten stats, in order (coco.py), mapped to ours
LIB_STAT_NAMES = ("AP", "Ap .5", "AP .75", "AP (M)", "AP (L)", "AR", "AR .5", "AR .75", "AR (M)", "AR (L)")
RESULTS_NAME = "keypoints_val2017_results_0.json"

# The zoo's hrnet.yaml values the evaluation reads (spec 8.4). The debug image dumps, on in the zoo's
# yaml, stay off: they only write JPEGs.
ZOO_SETTINGS = [
    "DATASET.DATASET", "coco", "DATASET.COLOR_RGB", True, "DATASET.DATA_FORMAT", "jpg", "DATASET.TEST_SET", "val2017",
    "MODEL.NAME", "pose_hrnet", "MODEL.NUM_JOINTS", 17, "MODEL.IMAGE_SIZE", [192, 256],
    "MODEL.HEATMAP_SIZE", [48, 64], "MODEL.SIGMA", 2, "MODEL.TARGET_TYPE", "gaussian",
    "TEST.USE_GT_BBOX", True, "TEST.FLIP_TEST", True, "TEST.POST_PROCESS", True, "TEST.SHIFT_HEATMAP", True,
    "TEST.OKS_THRE", 0.9, "TEST.IN_VIS_THRE", 0.2, "TEST.IMAGE_THRE", 0.0, "TEST.NMS_THRE", 1.0, "TEST.SOFT_NMS", False,
    "LOSS.USE_TARGET_WEIGHT", True, "PRINT_FREQ", 100, "RANK", 0,
    "DEBUG.DEBUG", False, "DEBUG.SAVE_BATCH_IMAGES_GT", False, "DEBUG.SAVE_BATCH_IMAGES_PRED", False,
    "DEBUG.SAVE_HEATMAPS_GT", False, "DEBUG.SAVE_HEATMAPS_PRED", False,
]


def find_lib(explicit: Optional[str] = None) -> str:
    """The prepared HRNet lib folder, or an error saying how to get one."""
    candidates = [explicit, os.environ.get(LIB_ENV), LOCAL_LIB]
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "core", "function.py")):
            return os.path.abspath(path)
    named = next((p for p in candidates[:2] if p), None)
    where = f"{LIB_ENV}={named} holds no prepared lib" if named else f"{LIB_ENV} is not set and {LOCAL_LIB} does not exist"
    raise EnvironmentProblem(
        f"the reference engine needs HRNet's patched lib: {where}",
        "in the images it is /opt/hrnet/lib; locally clone HRNet-Human-Pose-Estimation, check out "
        "00d7bf72f56382165e504b10ff0dddb82dca6fd2 and run `make reference-lib HRNET_SRC=<that checkout>`",
    )


class _LibFinder(importlib.abc.MetaPathFinder):
    """Resolves HRNet's top-level package names to the lib folder; submodules follow their package's path."""

    def __init__(self, root: str) -> None:
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        if "." in fullname or fullname not in LIB_PACKAGES:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [self.root])


def _is_lib_module(name: str) -> bool:
    return name.split(".")[0] in LIB_PACKAGES


@contextlib.contextmanager
def isolated_imports(root: str):
    """Import HRNet's packages from ``root``; afterwards they are gone from ``sys.modules`` again."""
    shadowed = {name: module for name, module in sys.modules.items() if _is_lib_module(name)}
    for name in shadowed:
        del sys.modules[name]
    finder = _LibFinder(root)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if _is_lib_module(n)]:
            del sys.modules[name]
        sys.modules.update(shadowed)


class HRNetLib:
    """The pieces of HRNet's lib the seed's flow uses, imported in isolation."""

    def __init__(self, root: Optional[str] = None) -> None:
        self.root = find_lib(root)
        fix = ("prepare HRNet's lib with scripts/prepare-hrnet-lib.sh (make reference-lib) and point HRNET_LIB at it; "
               "it needs yacs, json_tricks, scipy and torchvision")
        try:
            with isolated_imports(self.root):
                config = importlib.import_module("config")
                self.COCODataset = importlib.import_module("dataset.coco").COCODataset
                self.validate = importlib.import_module("core.function").validate
                self.JointsMSELoss = importlib.import_module("core.loss").JointsMSELoss
                cfg = config.cfg.clone()
                cfg.defrost()
                cfg.merge_from_list(ZOO_SETTINGS)
                cfg.freeze()
        except ImportError as error:
            raise EnvironmentProblem(f"HRNet's lib at {self.root} does not import ({error})", fix) from None
        except Exception as error:  # noqa: BLE001 - a broken lib, or another project's folder of the same names
            what = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            raise EnvironmentProblem(f"{self.root} is not HRNet's prepared lib ({what})", fix) from None
        self.cfg = cfg

    def dataset(self, root: str):
        """HRNet's COCODataset over val2017 with the seed's ToTensor + Normalize transform."""
        import torchvision.transforms as transforms

        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=list(MEAN), std=list(STD))])
        with contextlib.redirect_stdout(io.StringIO()):
            return self.COCODataset(self.cfg, root, "val2017", False, transform)


class ReferenceEngine(Engine):
    """Evaluation and calibration through HRNet's code, with the same interface as the native engine."""

    name = "reference"

    def __init__(self, lib_root: Optional[str] = None) -> None:
        self.lib = HRNetLib(lib_root)
        self._datasets: Dict[str, object] = {}
        self._shims: Dict[Tuple[str, str, Optional[int]], "tempfile.TemporaryDirectory[str]"] = {}

    def prepare(self, evalset: EvalSet) -> None:
        """Build HRNet's COCO index for ``evalset`` now (the native engine's is built by ``open_dataset``)."""
        self._dataset(self._root(evalset))

    def _root(self, evalset: EvalSet) -> str:
        """A folder HRNet's loader can read: the dataset itself in the zoo's layout, else a linked copy of it.

        HRNet reads only ``<root>/annotations/person_keypoints_val2017.json`` and ``<root>/images/val2017/<id>.jpg``
        over whole files; other layouts, other sets and ``--max-images`` get a folder of links in that layout.
        """
        root = evalset.root
        if root is not None and evalset.max_images is None and (
            os.path.abspath(evalset.annotation_file) == os.path.abspath(os.path.join(root, ANNOTATION_FILE))
            and all(path == image_path(root, int(i)) for path, i in zip(evalset.instances.paths, evalset.instances.image_ids))
        ):
            return root
        key = (os.path.abspath(evalset.annotation_file), os.path.abspath(evalset.image_dir), evalset.max_images)
        if key not in self._shims:
            folder = tempfile.TemporaryDirectory(prefix="hrnet-reference-layout-")
            write_reference_layout(evalset.annotation_file, evalset.image_dir, folder.name, evalset.max_images)
            self._shims[key] = folder
        return self._shims[key].name

    def _dataset(self, root: str):
        if root not in self._datasets:
            self._datasets[root] = self.lib.dataset(root)
        return self._datasets[root]

    def _loader(self, root: str, batch_size: int, workers: int, device: torch.device):
        return torch.utils.data.DataLoader(
            self._dataset(root), batch_size=batch_size, shuffle=False, num_workers=workers,
            pin_memory=device.type == "cuda",
        )

    def evaluate(self, name: str, model: nn.Module, evalset: EvalSet, device: torch.device, run_dir: str,
                 options: RunOptions, timer: StageTimer) -> Evaluation:
        """The seed's ``validate`` on ``model``; the results file lands as ``keypoints_<name>_results.json``."""
        root = self._root(evalset)
        dataset = self._dataset(root)
        captured: Dict[str, object] = {}
        original = dataset.evaluate

        def capture(cfg, preds, output_dir, all_boxes, img_path, *args, **kwargs):
            captured["preds"] = np.array(preds, copy=True)
            result = original(cfg, preds, output_dir, all_boxes, img_path, *args, **kwargs)
            captured["stats"] = result[0]
            return result

        dataset.evaluate = capture
        log = io.StringIO()
        start = timer.now()
        try:
            with tempfile.TemporaryDirectory(prefix="hrnet-reference-") as out, contextlib.redirect_stdout(log):
                criterion = self.lib.JointsMSELoss(use_target_weight=True).to(device)
                loader = self._loader(root, options.batch_size, options.workers, device)
                self.lib.validate(self.lib.cfg, loader, dataset, model.to(device), criterion, out, out)
                results_file = os.path.join(run_dir, f"keypoints_{name}_results.json")
                shutil.copyfile(os.path.join(out, "results", RESULTS_NAME), results_file)
        finally:
            dataset.evaluate = original
        timer.add("reference", start)
        with open(os.path.join(run_dir, f"cocoeval_{name}.txt"), "w") as f:
            f.write(log.getvalue())
        lib_stats = captured["stats"]
        stats = {ours: float(lib_stats[theirs]) for ours, theirs in zip(STAT_NAMES, LIB_STAT_NAMES)}
        return Evaluation(stats, captured["preds"], results_file)

    def calibration(self, evalset: EvalSet, count: int, options: RunOptions, device: torch.device,
                    on_batch: Optional[Callable[[int], None]] = None) -> Calibrate:
        """The zoo's callback: forward passes over the lib's loader from its start, first ``count`` samples only."""

        def calibrate(model: nn.Module) -> None:
            seen = 0
            loader = self._loader(self._root(evalset), options.batch_size, options.workers, device)
            with torch.no_grad():
                for inputs, _target, _weight, _meta in loader:
                    inputs = inputs[: count - seen]
                    model(inputs.to(device))
                    seen += len(inputs)
                    if on_batch is not None:
                        on_batch(len(inputs))
                    if seen >= count:
                        break

        return calibrate
