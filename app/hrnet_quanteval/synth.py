"""A synthetic COCO person-keypoint set in the val2017 layout, with people whose joints can be found.

Each person is a stick figure whose 17 joints are marked by glyphs: one colour per left/right pair (and one
for the nose), and a chiral shape: a square with a notch at the top right for left joints, its mirror image
for right joints, no notch for the nose. A horizontally flipped left joint therefore looks exactly like a
right one, which is what the flip test assumes of real people. Glyphs are drawn at a fixed size in the
256x192 crop frame, so a detector with fixed templates (``oracle``) finds them at every person size.

Besides people, images carry what the loader must filter out: crowd regions, keypoint-less persons, boxes
reaching past the image border, and images with nobody in them. Image order in the JSON is not sorted.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from .data import ANNOTATION_FILE, FLIP_PAIRS, IMAGE_DIR, NUM_JOINTS, SKELETON, image_path
from .transforms import INPUT_SIZE, PIXEL_STD, box_to_center_scale, clean_bbox

JOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# RGB colour per joint group: nose, then the eight left/right pairs in FLIP_PAIRS order
GROUP_COLORS: Tuple[Tuple[int, int, int], ...] = (
    (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0),
    (255, 0, 255), (0, 255, 255), (255, 128, 0), (128, 0, 255),
)
GLYPH_SIZE = 9  # side of a glyph in crop pixels
NOTCH_SIZE = 4  # side of the notch cut from its top corner
GT_AREA_FRACTION = 0.55  # annotated (segmentation) area as a fraction of the box area

# Frontal pose in box-normalised coordinates; the person's left is on the image's right.
CANONICAL_POSE = np.array(
    [
        (0.50, 0.13), (0.60, 0.05), (0.40, 0.05), (0.71, 0.14), (0.29, 0.14),
        (0.76, 0.27), (0.24, 0.27), (0.86, 0.43), (0.14, 0.43), (0.91, 0.58), (0.09, 0.58),
        (0.65, 0.58), (0.35, 0.58), (0.66, 0.76), (0.34, 0.76), (0.67, 0.93), (0.33, 0.93),
    ]
)


def joint_group(joint: int) -> int:
    """0 for the nose, 1..8 for the left/right pair the joint belongs to."""
    for group, pair in enumerate(FLIP_PAIRS, start=1):
        if joint in pair:
            return group
    return 0


def joint_side(joint: int) -> int:
    """+1 for a left joint, -1 for a right joint, 0 for the nose."""
    for left, right in FLIP_PAIRS:
        if joint == left:
            return 1
        if joint == right:
            return -1
    return 0


def glyph_mask(side: int, size: int = GLYPH_SIZE, notch: int = NOTCH_SIZE) -> np.ndarray:
    """Binary (size, size) glyph: a square, notched at the top right (left joint) or top left (right joint)."""
    mask = np.ones((size, size), dtype=np.float32)
    if side > 0:
        mask[:notch, size - notch:] = 0
    elif side < 0:
        mask[:notch, :notch] = 0
    return mask


def glyph_polygon(side: int, center: Tuple[float, float], pixel: float) -> np.ndarray:
    """Glyph outline in image pixels, centred on ``center``; ``pixel`` is one crop pixel in image pixels."""
    h = GLYPH_SIZE / 2.0
    c = h - NOTCH_SIZE
    square = [(-h, -h), (h, -h), (h, h), (-h, h)]
    if side > 0:
        outline = [(-h, -h), (c, -h), (c, -c), (h, -c), (h, h), (-h, h)]
    elif side < 0:
        outline = [(-c, -h), (h, -h), (h, h), (-h, h), (-h, -c), (-c, -c)]
    else:
        outline = square
    return np.array([(center[0] + x * pixel, center[1] + y * pixel) for x, y in outline])


@dataclass
class Person:
    box: Tuple[float, float, float, float]  # x, y, w, h
    joints: np.ndarray  # (17, 2) image pixels
    visible: np.ndarray  # (17,) bool: labelled and drawn
    crop_pixel: float  # image pixels per crop pixel


def crop_pixel_size(box: Tuple[float, float, float, float], width: int, height: int) -> float:
    """Image pixels per crop pixel for the crop the loader will cut around this box."""
    cleaned = clean_bbox(box, width, height)
    _, scale = box_to_center_scale(*cleaned)
    return float(scale[0]) * PIXEL_STD / INPUT_SIZE[0]


def crop_region(box: Tuple[float, float, float, float], width: int, height: int) -> Tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the image area that the loader's crop for this box covers."""
    center, scale = box_to_center_scale(*clean_bbox(box, width, height))
    half_w = float(scale[0]) * PIXEL_STD / 2
    half_h = half_w * INPUT_SIZE[1] / INPUT_SIZE[0]
    return center[0] - half_w, center[1] - half_h, center[0] + half_w, center[1] + half_h


def _overlaps(a: Sequence[float], b: Sequence[float], margin: float = 2.0) -> bool:
    return not (a[2] + margin < b[0] or b[2] + margin < a[0] or a[3] + margin < b[1] or b[3] + margin < a[1])


def _pose(rng: np.random.Generator) -> np.ndarray:
    pose = CANONICAL_POSE.copy()
    if rng.random() < 0.35:  # arms raised
        pose[7:11, 1] = (0.20, 0.20, 0.06, 0.06)
        pose[9:11, 0] = (0.95, 0.05)
    if rng.random() < 0.3:  # seen from behind: the person's left moves to the image's left
        pose[:, 0] = 1.0 - pose[:, 0]
    pose += rng.uniform(-0.012, 0.012, size=pose.shape)
    return np.clip(pose, 0.04, 0.96)


def _place_people(
    rng: np.random.Generator, width: int, height: int, count: int, heights: Tuple[float, float] = (120, 330)
) -> List[Person]:
    people: List[Person] = []
    regions: List[Tuple[float, float, float, float]] = []
    for _ in range(count * 25):
        if len(people) == count:
            break
        h = float(rng.uniform(heights[0], min(heights[1], height * 0.75)))
        w = h * float(rng.uniform(0.55, 0.8))
        x = float(rng.uniform(-0.1 * w, width - 0.9 * w))
        y = float(rng.uniform(0, height - h))
        box = (round(x, 2), round(y, 2), round(w, 2), round(h, 2))
        region = crop_region(box, width, height)
        if any(_overlaps(region, r) for r in regions):
            continue
        pose = _pose(rng)
        joints = np.stack([box[0] + pose[:, 0] * box[2], box[1] + pose[:, 1] * box[3]], axis=1)
        pixel = crop_pixel_size(box, width, height)
        margin = (GLYPH_SIZE / 2.0 + 1.0) * pixel  # a glyph cut by the image border is not drawn or labelled
        inside = (
            (joints[:, 0] >= margin) & (joints[:, 0] <= width - 1 - margin)
            & (joints[:, 1] >= margin) & (joints[:, 1] <= height - 1 - margin)
        )
        visible = inside & (rng.random(NUM_JOINTS) > 0.05)
        people.append(Person(box, joints, visible, pixel))
        regions.append(region)
    return people


def _background(rng: np.random.Generator, width: int, height: int, noise_std: float = 6.0) -> np.ndarray:
    base = rng.uniform(90, 150, size=3)
    gx = np.linspace(-20, 20, width)[None, :, None] * rng.uniform(-1, 1)
    gy = np.linspace(-20, 20, height)[:, None, None] * rng.uniform(-1, 1)
    noise = rng.normal(0, noise_std, size=(height, width, 3))
    return np.clip(base + gx + gy + noise, 0, 255).astype(np.uint8)


SUBPIXEL_BITS = 4


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points) * (1 << SUBPIXEL_BITS)).astype(np.int32)


def _draw_person(image: np.ndarray, person: Person) -> None:
    """Stick figure under the glyphs; RGB image, drawn in place."""
    limb = (70, 60, 55)
    thickness = max(2, int(round(3 * person.crop_pixel)))
    j = person.joints
    for a, b in SKELETON:
        pa = tuple(int(v) for v in _fixed(j[a]))
        pb = tuple(int(v) for v in _fixed(j[b]))
        cv2.line(image, pa, pb, limb, thickness, cv2.LINE_AA, SUBPIXEL_BITS)
    for joint in range(NUM_JOINTS):
        if not person.visible[joint]:
            continue
        polygon = glyph_polygon(joint_side(joint), (j[joint, 0], j[joint, 1]), person.crop_pixel)
        cv2.fillPoly(image, [_fixed(polygon)], GROUP_COLORS[joint_group(joint)], cv2.LINE_AA, SUBPIXEL_BITS)


def _annotation(person: Person, ann_id: int, image_id: int) -> dict:
    keypoints: List[float] = []
    for joint in range(NUM_JOINTS):
        if person.visible[joint]:
            keypoints += [round(float(person.joints[joint, 0]), 2), round(float(person.joints[joint, 1]), 2), 2]
        else:
            keypoints += [0, 0, 0]
    x, y, w, h = person.box
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "iscrowd": 0,
        "bbox": [x, y, w, h],
        "area": round(GT_AREA_FRACTION * w * h, 2),
        "num_keypoints": int(person.visible.sum()),
        "keypoints": keypoints,
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
    }


def _extra_annotation(rng: np.random.Generator, kind: str, ann_id: int, image_id: int, width: int, height: int) -> dict:
    """A crowd region or a person with no labelled keypoint: both must be filtered out."""
    w, h = float(rng.uniform(30, 60)), float(rng.uniform(40, 80))
    x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "iscrowd": 1 if kind == "crowd" else 0,
        "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
        "area": round(GT_AREA_FRACTION * w * h, 2),
        "num_keypoints": 0,
        "keypoints": [0] * (3 * NUM_JOINTS),
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
    }


def _write_jpeg(path: str, rgb: np.ndarray, photo_like: bool = False) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, 90 if photo_like else 95]
    if not photo_like and hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):  # full-resolution colour keeps glyphs intact
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"cannot write {path}")


def generate(root: str, images: int = 32, seed: int = 0, max_people: int = 3) -> Dict[str, int]:
    """Write ``images`` synthetic images and their annotation file under ``root``; returns counts."""
    if images < 1:
        raise ValueError("a synthetic set needs at least one image")
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, IMAGE_DIR), exist_ok=True)
    os.makedirs(os.path.dirname(os.path.join(root, ANNOTATION_FILE)), exist_ok=True)
    image_ids = rng.choice(np.arange(1, 600000), size=images, replace=False)  # unsorted, like COCO's file
    records, annotations = [], []
    ann_id = 1
    counts = {"images": images, "people": 0, "crowd": 0, "keypointless": 0}
    for n, image_id in enumerate(int(i) for i in image_ids):
        width, height = int(rng.integers(480, 641)), int(rng.integers(400, 481))
        canvas = _background(rng, width, height)
        people_wanted = 0 if n % 7 == 3 else int(rng.integers(1, max_people + 1))
        people = _place_people(rng, width, height, people_wanted)
        for person in people:
            _draw_person(canvas, person)
            annotations.append(_annotation(person, ann_id, image_id))
            ann_id += 1
        counts["people"] += len(people)
        for kind in ("crowd", "keypointless"):
            if rng.random() < 0.15:
                annotations.append(_extra_annotation(rng, kind, ann_id, image_id, width, height))
                ann_id += 1
                counts[kind] += 1
        _write_jpeg(image_path(root, image_id), canvas)
        records.append({"id": image_id, "file_name": "%012d.jpg" % image_id, "width": width, "height": height})
    rng.shuffle(annotations)  # the loader must keep per-image annotation-file order, not rely on ids
    dataset = {
        "info": {"description": "hrnet-quanteval synthetic person keypoints", "seed": seed},
        "licenses": [],
        "images": records,
        "annotations": annotations,
        "categories": [
            {
                "id": 1,
                "name": "person",
                "supercategory": "person",
                "keypoints": list(JOINT_NAMES),
                "skeleton": [[a + 1, b + 1] for a, b in SKELETON],
            }
        ],
    }
    with open(os.path.join(root, ANNOTATION_FILE), "w") as f:
        json.dump(dataset, f)
    return counts


# -- a set with COCO val2017's shape, for timing the pipeline at its scale (``bench --scale coco``) -----------

# COCO val2017's frequent image sizes (width, height), roughly in its proportions: most have 640 on the long side
COCO_SIZES: Tuple[Tuple[int, int], ...] = (
    (640, 480), (640, 427), (480, 640), (640, 424), (640, 426), (427, 640), (640, 360), (500, 375), (612, 612), (640, 512),
)
COCO_SIZE_WEIGHTS = (0.38, 0.18, 0.12, 0.07, 0.06, 0.05, 0.04, 0.04, 0.03, 0.03)
COCO_IMAGES, COCO_INSTANCES = 5000, 6352  # val2017 with ground-truth person boxes
PHOTO_NOISE = 22.0  # grain that brings a JPEG (quality 90, 4:2:0) to a photograph's size and decoding cost


def people_counts(images: int, instances: int, seed: int) -> List[int]:
    """One person in every image and the rest spread as twos and threes: ``instances`` people over ``images``."""
    extra = instances - images
    if extra < 0 or extra > 2 * images:
        raise ValueError(f"{instances} people do not fit {images} images at one to three each")
    threes = max(0, extra - images)
    counts = [3] * threes + [2] * (extra - 2 * threes) + [1] * (images - (extra - threes))
    np.random.default_rng(seed).shuffle(counts)
    return counts


def _coco_image(task: Tuple[str, int, int, int, int]) -> Tuple[dict, List[dict]]:
    """Draw and write one image of the COCO-shaped set: (its record, its people's annotations, ids from ``first``)."""
    root, seed, index, image_id, count = task
    rng = np.random.default_rng([seed, index])
    width, height = COCO_SIZES[int(rng.choice(len(COCO_SIZES), p=COCO_SIZE_WEIGHTS))]
    canvas = _background(rng, width, height, noise_std=PHOTO_NOISE)
    people: List[Person] = []
    for heights in ((120, 330), (70, 220), (40, 140)):  # smaller people when several must fit
        people = _place_people(rng, width, height, count, heights)
        if len(people) == count:
            break
    if len(people) != count:
        raise RuntimeError(f"could not place {count} people in a {width}x{height} image")
    for person in people:
        _draw_person(canvas, person)
    _write_jpeg(image_path(root, image_id), canvas, photo_like=True)
    record = {"id": image_id, "file_name": "%012d.jpg" % image_id, "width": width, "height": height}
    return record, [_annotation(person, 0, image_id) for person in people]


def generate_coco_shaped(
    root: str, images: int = COCO_IMAGES, instances: int = COCO_INSTANCES, seed: int = 0, workers: int = 1
) -> Dict[str, int]:
    """Write a set with COCO val2017's shape: ``images`` photo-sized JPEGs of COCO's size mix holding
    ``instances`` people, one to three per image; images drawn in ``workers`` processes, the same bytes for any
    number of them."""
    os.makedirs(os.path.join(root, IMAGE_DIR), exist_ok=True)
    os.makedirs(os.path.dirname(os.path.join(root, ANNOTATION_FILE)), exist_ok=True)
    ids = np.random.default_rng(seed).choice(np.arange(1, 600000), size=images, replace=False)
    tasks = [(root, seed, n, int(i), c) for n, (i, c) in enumerate(zip(ids, people_counts(images, instances, seed)))]
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            drawn = pool.map(_coco_image, tasks, chunksize=32)
    else:
        drawn = [_coco_image(task) for task in tasks]
    records, annotations = [], []
    for record, anns in drawn:
        records.append(record)
        for ann in anns:
            ann["id"] = len(annotations) + 1
            annotations.append(ann)
    dataset = {
        "info": {"description": "hrnet-quanteval synthetic person keypoints in COCO val2017's shape", "seed": seed},
        "licenses": [], "images": records, "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(JOINT_NAMES),
                        "skeleton": [[a + 1, b + 1] for a, b in SKELETON]}],
    }
    with open(os.path.join(root, ANNOTATION_FILE), "w") as f:
        json.dump(dataset, f)
    return {"images": images, "people": len(annotations)}
