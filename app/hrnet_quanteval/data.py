"""COCO val2017 person keypoints with ground-truth boxes: instance selection and 256x192 crops.

Faithful to the reference loader (spec section 2): images in annotation-file order (not sorted), crowd
annotations dropped, boxes cleaned, non-person and keypoint-less annotations skipped, one sample per kept
annotation. The crops are returned as uint8; normalisation runs later on the model's device.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import InputError
from .transforms import HEATMAP_SIZE, box_to_center_scale, clean_bbox, crop_image, crop_matrix

IMAGE_SET = "val2017"
ANNOTATION_FILE = os.path.join("annotations", f"person_keypoints_{IMAGE_SET}.json")
IMAGE_DIR = os.path.join("images", IMAGE_SET)
PERSON_CATEGORY = 1
NUM_JOINTS = 17
# left/right joint pairs of COCO (0 is the nose): eyes, ears, shoulders, elbows, wrists, hips, knees, ankles
FLIP_PAIRS: Tuple[Tuple[int, int], ...] = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
# COCO's person skeleton (limbs between joints), 0-based
SKELETON: Tuple[Tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)
# OpenCV IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION: 8-bit BGR, EXIF orientation ignored
IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def image_path(root: str, image_id: int) -> str:
    """Where the reference looks for an image: ``<root>/images/val2017/<12-digit id>.jpg``."""
    return os.path.join(root, IMAGE_DIR, image_name(image_id))


def image_name(image_id: int) -> str:
    """The reference's file name for an image id (COCO's own ``file_name`` for val2017)."""
    return "%012d.jpg" % image_id


def image_file(image_dir: str, record: dict) -> str:
    """An image record's file: its ``file_name`` where it has one (any COCO-format set), else the id's name."""
    return os.path.join(image_dir, record.get("file_name") or image_name(record["id"]))


def load_coco(annotation_file: str):
    """pycocotools COCO object for the annotation file, its progress prints kept off the terminal."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(annotation_file)


@dataclass
class Instances:
    """The evaluated person samples, in loader order."""

    image_ids: np.ndarray  # (N,) int64
    paths: List[str]
    centers: np.ndarray  # (N, 2) f32
    scales: np.ndarray  # (N, 2) f32
    annotation_ids: np.ndarray  # (N,) int64
    evaluated_image_ids: List[int]  # every image visited, in visiting order (also those without persons)
    _to_image: Optional[np.ndarray] = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    def head(self, count: int) -> "Instances":
        """The first ``count`` samples in loader order (calibration uses them)."""
        return self.rows(0, count)

    def rows(self, start: int, end: int) -> "Instances":
        """Samples ``start`` to ``end`` in loader order."""
        return Instances(
            self.image_ids[start:end], self.paths[start:end], self.centers[start:end], self.scales[start:end],
            self.annotation_ids[start:end], list(dict.fromkeys(int(i) for i in self.image_ids[start:end])),
        )

    @property
    def areas(self) -> np.ndarray:
        """The crop area used by OKS-NMS: prod(scale * 200) in f32, widened to f64."""
        s = self.scales * np.float32(200)
        return (s[:, 0] * s[:, 1]).astype(np.float64)

    def heatmap_to_image(self) -> np.ndarray:
        """(N, 2, 3) f64 matrices from heatmap pixels back to image pixels (solved once, reused by every pass)."""
        if self._to_image is None:
            matrices = [crop_matrix(c, s, HEATMAP_SIZE, inverse=True) for c, s in zip(self.centers, self.scales)]
            self._to_image = np.stack(matrices) if matrices else np.zeros((0, 2, 3))
        return self._to_image


def select_instances(coco, image_dir: str, max_images: Optional[int] = None) -> Instances:
    """Samples of the reference COCO loader with GT boxes (spec 2.2-2.4), optionally of the first images only."""
    image_ids = list(coco.getImgIds())  # annotation-file order, as upstream
    if max_images is not None:
        image_ids = image_ids[:max_images]
    ids, paths, centers, scales, ann_ids = [], [], [], [], []
    for image_id in image_ids:
        record = coco.loadImgs(image_id)[0]
        width, height = record["width"], record["height"]
        path = image_file(image_dir, record)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)):
            box = clean_bbox(ann["bbox"], width, height)
            if box is None or not ann["area"] > 0:
                continue
            if ann["category_id"] != PERSON_CATEGORY or max(ann["keypoints"]) == 0:
                continue
            center, scale = box_to_center_scale(*box)
            ids.append(image_id)
            paths.append(path)
            centers.append(center)
            scales.append(scale)
            ann_ids.append(ann["id"])
    return Instances(
        image_ids=np.asarray(ids, dtype=np.int64),
        paths=paths,
        centers=np.asarray(centers, dtype=np.float32).reshape(-1, 2),
        scales=np.asarray(scales, dtype=np.float32).reshape(-1, 2),
        annotation_ids=np.asarray(ann_ids, dtype=np.int64),
        evaluated_image_ids=[int(i) for i in image_ids],
    )


def read_rgb(path: str) -> np.ndarray:
    """Decode an image as 8-bit RGB HxWx3, or raise InputError naming the file."""
    return cv2.cvtColor(read_bgr(path), cv2.COLOR_BGR2RGB)


def read_bgr(path: str) -> np.ndarray:
    """Decode an image as OpenCV gives it, 8-bit BGR HxWx3 (EXIF orientation ignored), or raise InputError."""
    if not os.path.isfile(path):
        raise InputError(f"image file {path} is missing", "restore it from val2017.zip (images/val2017/)")
    image = cv2.imread(path, IMREAD_FLAGS)
    if image is None:
        size = os.path.getsize(path)
        raise InputError(
            f"image file {path} ({size} bytes) cannot be decoded as an image",
            "replace it with the original from val2017.zip",
        )
    return image


class CropDataset(Dataset):
    """Instance crops as (3, 256, 192) uint8 tensors with their sample index."""

    def __init__(self, paths: Sequence[str], centers: np.ndarray, scales: np.ndarray) -> None:
        self.paths = list(paths)
        self.centers = centers
        self.scales = scales
        self._last: Tuple[Optional[str], Optional[np.ndarray]] = (None, None)

    def __len__(self) -> int:
        return len(self.paths)

    def _image(self, path: str) -> np.ndarray:
        # the people of one image are consecutive samples and land in one worker's batch: decode it once
        if self._last[0] != path:
            self._last = (path, read_bgr(path))
        return self._last[1]  # type: ignore[return-value]

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        # The reference converts the whole image to RGB, then warps. The warp treats each channel alike (one
        # matrix, one interpolation, a zero border in all three), so warping the BGR image and reversing the
        # channels of the 256x192 crop gives the same bytes for a fraction of the work.
        crop = crop_image(self._image(self.paths[index]), self.centers[index], self.scales[index])
        return torch.from_numpy(np.ascontiguousarray(crop[:, :, ::-1].transpose(2, 0, 1))), index


CROP_BYTES = 3 * 256 * 192


class CropCache:
    """Crops kept in memory (uint8) after their first decode, so calibration and the quantized pass reuse them.

    Holds at most ``max_bytes`` (the first crops in loader order; the rest are decoded again when needed).
    The crops are exactly what the loader produced, so reusing them changes no number.
    """

    def __init__(self, count: int, max_bytes: int, pin_memory: bool = False) -> None:
        self.capacity = max(0, min(count, max_bytes // CROP_BYTES))
        self.pin_memory = pin_memory
        self.store: Optional[torch.Tensor] = None
        self.filled = np.zeros(count, dtype=bool)

    def put(self, crops: torch.Tensor, index: torch.Tensor) -> None:
        if not self.capacity:
            return
        if self.store is None:
            self.store = torch.empty((self.capacity,) + tuple(crops.shape[1:]), dtype=torch.uint8)
            if self.pin_memory:
                self.store = self.store.pin_memory()
        rows = index.numpy()
        keep = rows < self.capacity
        if keep.any():
            self.store[torch.from_numpy(rows[keep])] = crops[torch.from_numpy(keep)]
            self.filled[rows[keep]] = True

    def holds(self, count: int) -> bool:
        """Whether the first ``count`` crops are all in memory."""
        return count <= self.capacity and bool(self.filled[:count].all())

    def prefix(self, count: int) -> int:
        """How many of the first ``count`` crops are in memory without a gap."""
        missing = np.flatnonzero(~self.filled[:count])
        return int(missing[0]) if missing.size else count

    def batches(self, count: int, batch_size: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, count, batch_size):
            end = min(count, start + batch_size)
            yield self.store[start:end], torch.arange(start, end)


def _yield_to_the_model(worker_id: int) -> None:
    """A loader process yields the CPU to the main process: where cores are few, the model's multi-threaded
    operations stall whenever a worker takes one of their threads' cores, while the workers only need the
    cycles left. (No OpenCV call here: reconfiguring its thread pool in a forked child can deadlock.)"""
    try:
        os.nice(WORKER_NICENESS)
    except OSError:  # not allowed here: the workers keep the main process's priority
        pass


WORKER_NICENESS = 10


def crop_loader(instances: Instances, batch_size: int, workers: int, pin_memory: bool = False) -> DataLoader:
    """An unshuffled loader over the instance crops: batch order is sample order."""
    dataset = CropDataset(instances.paths, instances.centers, instances.scales)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                      worker_init_fn=_yield_to_the_model if workers else None)


def write_reference_layout(annotation_file: str, image_dir: str, dest: str, max_images: Optional[int] = None) -> str:
    """A COCO folder in the zoo's layout (``annotations/person_keypoints_val2017.json``, ``images/val2017/<id>.jpg``)
    for any person-keypoint set: the first ``max_images`` images (all by default), images linked, not copied.

    HRNet's own loader (the reference engine) reads nothing else; the native engine reads any layout.
    """
    with open(annotation_file) as f:
        dataset = json.load(f)
    if max_images is not None:
        dataset["images"] = dataset["images"][:max_images]
        keep = {image["id"] for image in dataset["images"]}
        dataset["annotations"] = [a for a in dataset["annotations"] if a["image_id"] in keep]
    os.makedirs(os.path.join(dest, os.path.dirname(ANNOTATION_FILE)), exist_ok=True)
    with open(os.path.join(dest, ANNOTATION_FILE), "w") as f:
        json.dump(dataset, f)
    os.makedirs(os.path.join(dest, IMAGE_DIR), exist_ok=True)
    for record in dataset["images"]:
        source = os.path.abspath(image_file(image_dir, record))
        if os.path.exists(source):
            os.symlink(source, image_path(dest, record["id"]))
    return dest
