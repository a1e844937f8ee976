"""Opening a dataset for a run: the annotation file checked, the instances selected, every image checked.

Everything here runs before any compute, so a bad dataset costs seconds, not an FP32 pass.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

from . import data
from .errors import InputError
from .runtypes import EvalSet

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
    check_images(instances.paths)
    return EvalSet(root, annotation_file, coco, instances, max_images)


def image_problem(path: str) -> Optional[str]:
    """Why an image file is unusable, from its size and JPEG markers alone (cheap enough for all 5000), or None."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return "missing"
    if size == 0:
        return "empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(max(0, size - 64))
        tail = f.read()
    if head != b"\xff\xd8":
        return f"not a JPEG ({size} bytes, starts with {head.hex()})"
    if b"\xff\xd9" not in tail:
        return f"truncated JPEG ({size} bytes, no end-of-image marker)"
    return None


def check_images(paths: Sequence[str]) -> None:
    """Every image a run needs exists and looks like a whole JPEG; all are checked, the first few named."""
    unique = list(dict.fromkeys(paths))
    problems = [(p, why) for p, why in ((p, image_problem(p)) for p in unique) if why]
    if not problems:
        return
    missing = [p for p, why in problems if why == "missing"]
    broken = [(p, why) for p, why in problems if why != "missing"]
    parts = []
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        parts.append(f"{len(missing)} of {len(unique)} images are missing: {shown}")
    if broken:
        shown = "; ".join(f"{p}: {why}" for p, why in broken[:5]) + (" ..." if len(broken) > 5 else "")
        parts.append(f"{len(broken)} images are unusable: {shown}")
    raise InputError(
        "; ".join(parts),
        "unpack val2017.zip again into images/ so that images/val2017/<12-digit id>.jpg exist and are complete",
    )
