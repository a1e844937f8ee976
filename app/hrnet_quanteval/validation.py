"""Opening a dataset for a run: where its files are, the annotation file checked field by field, the instances
selected, every image checked and fingerprinted.

Everything here runs before any compute, so a bad dataset costs seconds, not an FP32 pass. The checks cover
what the pipeline and pycocotools' COCOeval read; a problem is reported with the file, the entry and the value.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from . import data
from .errors import InputError
from .files import check_listable_dir, check_readable_file, user_path
from .progress import Progress
from .runtypes import EvalSet

COCO_2014_HELP = (
    "the zoo evaluated COCO val2017 (its code reads annotations/person_keypoints_val2017.json and images/val2017/; "
    "its doc's 2014 links are wrong): download val2017.zip and annotations_trainval2017.zip from "
    "cocodataset.org and unpack them into the dataset folder"
)
VAL2017_FIX = "download annotations_trainval2017.zip again and unpack it into the dataset folder"
NUM_KEYPOINT_VALUES = 3 * data.NUM_JOINTS  # x, y, v per joint: what COCOeval's 17 sigmas expect
MAX_ID = 2**63 - 1  # ids go through int64 arrays (numpy, pycocotools)
SHOWN_PROBLEMS = 5


# -- where the files are ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """The annotation file and the image folder of a dataset; ``root`` is the folder given, if one was."""

    annotation_file: str
    image_dir: str
    root: Optional[str] = None


def find_layout(root: Optional[str] = None, annotation_file: Optional[str] = None, image_dir: Optional[str] = None) -> Layout:
    """The dataset's files: a COCO root (``images/val2017/`` or a plain unzip's ``val2017/`` beside
    ``annotations/``), or any person-keypoint annotation file with the folder of its images."""
    if annotation_file is not None or image_dir is not None:
        if annotation_file is None or image_dir is None:
            given, missing = ("--annotation-file", "--image-dir") if annotation_file else ("--image-dir", "--annotation-file")
            raise InputError(f"{given} was given without {missing}", "pass both, or --evaluation-dataset DIR alone")
        check_readable_file(annotation_file, "annotation file", "pass --annotation-file with a COCO person-keypoint JSON")
        check_listable_dir(image_dir, "image folder", "pass --image-dir with the folder that holds the images")
        return Layout(annotation_file, image_dir, None)
    if root is None:
        raise InputError("no dataset was given", "pass --evaluation-dataset DIR (or --annotation-file FILE --image-dir DIR)")
    check_listable_dir(root, "dataset folder", "pass --evaluation-dataset with your COCO root (a folder you can read)")
    annotation_file = os.path.join(root, data.ANNOTATION_FILE)
    if not os.path.isfile(annotation_file):
        found_2014 = [p for p in ("annotations/person_keypoints_val2014.json", "images/val2014", "val2014")
                      if os.path.exists(os.path.join(root, p))]
        if found_2014:
            raise InputError(f"{root} holds COCO 2014 ({', '.join(found_2014)}), not val2017", COCO_2014_HELP)
        if os.path.lexists(annotation_file):  # a folder, a broken link: say which
            check_readable_file(annotation_file, "annotation file", VAL2017_FIX)
        raise InputError(
            f"annotation file {annotation_file} is missing",
            "the folder needs annotations/person_keypoints_val2017.json and images/val2017/ (or val2017/) "
            "(from annotations_trainval2017.zip and val2017.zip)",
        )
    check_readable_file(annotation_file, "annotation file", VAL2017_FIX)
    for folder in (data.IMAGE_DIR, data.IMAGE_SET):  # images/val2017 (the zoo's layout), val2017 (a plain unzip)
        candidate = os.path.join(root, folder)
        if os.path.isdir(candidate):
            check_listable_dir(candidate, "image folder", "make the images readable (chmod -R a+rX)")
            return Layout(annotation_file, candidate, root)
    raise InputError(
        f"{root} has no image folder: neither {os.path.join(root, data.IMAGE_DIR)} nor {os.path.join(root, data.IMAGE_SET)}",
        "unpack val2017.zip into the dataset folder (it creates val2017/)",
    )


# -- the annotation file ---------------------------------------------------------------------------------


def read_annotations(path: str) -> dict:
    """The annotation file's JSON, or an exit-2 error saying why it cannot be read."""
    with user_path("annotation file", path, VAL2017_FIX):
        with open(path, "rb") as f:
            raw = f.read()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise InputError(f"annotation file {path} is not valid JSON ({error}); it may be truncated", VAL2017_FIX) from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Problems:
    """Collects what is wrong with the annotation file; raises once with the first few and the count."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.items: List[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def raise_if_any(self, fix: str) -> None:
        if not self.items:
            return
        shown = "; ".join(self.items[:SHOWN_PROBLEMS])
        more = f" (and {len(self.items) - SHOWN_PROBLEMS} more)" if len(self.items) > SHOWN_PROBLEMS else ""
        count = "1 problem" if len(self.items) == 1 else f"{len(self.items)} problems"
        raise InputError(f"annotation file {self.path} has {count}: {shown}{more}", fix)


def _wrong(record: dict, field: str, expected: str) -> str:
    """``<field> is missing``, or ``<field> <value> is not <expected>``."""
    if field not in record:
        return f"{field} is missing"
    return f"{field} {_short(record[field])} is not {expected}"


def _check_id(problems: _Problems, where: str, record: dict, field: str) -> bool:
    value = record.get(field)
    if not _is_int(value) or not 0 <= value <= MAX_ID:
        problems.add(where, _wrong(record, field, "a whole number between 0 and 2^63-1"))
        return False
    return True


def check_annotations(content, path: str) -> None:
    """Every field the pipeline and COCOeval read, checked before pycocotools indexes the file.

    COCOeval reads the keypoints, ``num_keypoints`` and ``iscrowd`` of every ground-truth annotation of the
    evaluated images; the loader reads ``bbox``, ``area`` and ``category_id``, and each image's size.
    """
    problems = _Problems(path)
    if not isinstance(content, dict):
        raise InputError(f"annotation file {path} holds a JSON {type(content).__name__}, not an object", VAL2017_FIX)
    for key in ("images", "annotations", "categories"):
        if key not in content:
            problems.add("top level", f"'{key}' is missing")
        elif not isinstance(content[key], list):
            problems.add("top level", f"'{key}' is a {type(content[key]).__name__}, not a list")
    problems.raise_if_any("use person_keypoints_val2017.json from annotations_trainval2017.zip")
    categories = set()
    keypoint_categories = 0
    for i, category in enumerate(content["categories"]):
        where = f"categories[{i}]"
        if not isinstance(category, dict):
            problems.add(where, f"is a {type(category).__name__}, not an object")
            continue
        if _check_id(problems, where, category, "id"):
            categories.add(category["id"])
        if "keypoints" in category:
            keypoint_categories += 1
            if not isinstance(category["keypoints"], list) or len(category["keypoints"]) != data.NUM_JOINTS:
                problems.add(where, f"keypoints {_short(category['keypoints'])} is not a list of {data.NUM_JOINTS} joint names")
    if not problems.items and not keypoint_categories:
        raise InputError(
            f"annotation file {path} is not COCO person keypoints: no category has keypoints (an instances_ or captions_ file?)",
            "use person_keypoints_val2017.json from annotations_trainval2017.zip",
        )
    images = set()
    for i, image in enumerate(content["images"]):
        where = f"images[{i}]"
        if not isinstance(image, dict):
            problems.add(where, f"is a {type(image).__name__}, not an object")
            continue
        where = f"images[{i}] (id {_short(image.get('id'))})"
        if _check_id(problems, where, image, "id"):
            if image["id"] in images:
                problems.add(where, "the id appears twice")
            images.add(image["id"])
        for field in ("width", "height"):
            if not _is_number(image.get(field)) or not image[field] > 0:
                problems.add(where, _wrong(image, field, "a positive number"))
        name = image.get("file_name")
        if name is not None and (not isinstance(name, str) or not name.strip() or "\0" in name):
            problems.add(where, f"file_name {_short(name)} is not a file name")
    annotation_ids = set()
    for i, ann in enumerate(content["annotations"]):
        if not isinstance(ann, dict):
            problems.add(f"annotations[{i}]", f"is a {type(ann).__name__}, not an object")
            continue
        where = f"annotations[{i}] (id {_short(ann.get('id'))})"
        if _check_id(problems, where, ann, "id"):
            if ann["id"] in annotation_ids:
                problems.add(where, "the id appears twice")
            annotation_ids.add(ann["id"])
        _check_id(problems, where, ann, "image_id")
        if _check_id(problems, where, ann, "category_id") and ann["category_id"] not in categories:
            problems.add(where, f"category_id {ann['category_id']} is not among the categories {sorted(categories)}")
        if ann.get("iscrowd") not in (0, 1) or isinstance(ann.get("iscrowd"), float):
            problems.add(where, _wrong(ann, "iscrowd", "0 or 1"))
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            problems.add(where, _wrong(ann, "bbox", "[x, y, width, height] in numbers"))
        if not _is_number(ann.get("area")):
            problems.add(where, _wrong(ann, "area", "a number"))
        keypoints = ann.get("keypoints")
        if not isinstance(keypoints, list) or len(keypoints) != NUM_KEYPOINT_VALUES:
            count = f"has {len(keypoints)} values" if isinstance(keypoints, list) else ("is missing" if keypoints is None else
                                                                                         f"is {_short(keypoints)}")
            problems.add(where, f"keypoints {count}; COCO person keypoints have {NUM_KEYPOINT_VALUES} (x, y, v for 17 joints)")
        elif not all(_is_number(v) for v in keypoints):
            bad = next(v for v in keypoints if not _is_number(v))
            problems.add(where, f"keypoints hold {_short(bad)}, not a number")
        if not _is_int(ann.get("num_keypoints")) or ann["num_keypoints"] < 0:
            problems.add(where, _wrong(ann, "num_keypoints", "a count"))
    problems.raise_if_any(
        "fix those entries (or use the original person_keypoints_val2017.json from annotations_trainval2017.zip)"
    )


def load_index(content: dict):
    """pycocotools' COCO index over an already checked annotation dict (the file is read once)."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = content
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


# -- the images ------------------------------------------------------------------------------------------

# A marker after entropy-coded data: 0xFF followed by anything but a stuffed zero or a restart marker.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")
_STANDALONE_MARKERS = {0x01, 0xD8} | set(range(0xD0, 0xD8))  # TEM, SOI, RSTn carry no length


def jpeg_structure(content: bytes) -> Optional[str]:
    """None when the JPEG's segments run from its start marker to its end marker; else what is wrong.

    Bytes after the end marker are allowed (decoders ignore them). A file that ends first is truncated:
    libjpeg then warns and fills the missing rows with grey, so its pixels are not the original's.
    """
    size = len(content)
    pos = 2
    while True:
        if pos >= size:
            return f"truncated JPEG ({size} bytes, no end-of-image marker)"
        if content[pos] != 0xFF:
            return f"not a well-formed JPEG (no marker at byte {pos})"
        while pos < size and content[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= size:
            return f"truncated JPEG ({size} bytes, no end-of-image marker)"
        marker = content[pos]
        pos += 1
        if marker == 0xD9:
            return None
        if marker in _STANDALONE_MARKERS:
            continue
        if pos + 2 > size:
            return f"truncated JPEG ({size} bytes, ends inside a segment header)"
        length = int.from_bytes(content[pos:pos + 2], "big")
        if length < 2:
            return f"not a well-formed JPEG (segment length {length} at byte {pos})"
        pos += length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            found = _NEXT_MARKER.search(content, min(pos, size))
            if found is None:
                return f"truncated JPEG ({size} bytes, no end-of-image marker)"
            pos = found.start()


def image_verdict(path: str) -> Tuple[Optional[str], Optional[str]]:
    """(problem, sha256) of one image file; problem None means the decoder will accept it whole."""
    try:
        with open(path, "rb") as f:
            content = f.read()
    except FileNotFoundError:
        return "missing", None
    except OSError as error:
        from .files import os_words

        return f"cannot be read ({os_words(error)})", None
    digest = hashlib.sha256(content).hexdigest()
    if not content:
        return "empty (0 bytes)", digest
    problem = jpeg_structure(content) if content[:2] == b"\xff\xd8" else "not a JPEG"
    if problem is None or problem.startswith("truncated"):
        return problem, digest
    # not a (well-formed) JPEG: what OpenCV decodes is usable (a PNG named .jpg, say), as it is for upstream
    decoded = cv2.imdecode(np.frombuffer(content, np.uint8), data.IMREAD_FLAGS)
    if decoded is None:
        return f"cannot be decoded as an image ({len(content)} bytes, starts with {content[:4].hex()})", digest
    return None, digest


class ImageMemo:
    """Per-file verdicts and hashes kept between runs, keyed by path, size, mtime and inode (any change rehashes)."""

    FILE = "image-index.json"

    def __init__(self, cache_dir: Optional[str]) -> None:
        self.path = os.path.join(cache_dir, self.FILE) if cache_dir else None
        self.entries: Dict[str, list] = {}
        self.changed = False
        if self.path:
            try:
                with open(self.path) as f:
                    loaded = json.load(f)
                self.entries = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self.entries = {}

    @staticmethod
    def _stamp(path: str) -> Optional[list]:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns, st.st_ino]

    def get(self, path: str) -> Optional[Tuple[Optional[str], str]]:
        entry = self.entries.get(os.path.abspath(path))
        stamp = self._stamp(path)
        if entry is None or stamp is None or entry[0] != stamp:
            return None
        return entry[1], entry[2]

    def put(self, path: str, problem: Optional[str], digest: Optional[str]) -> None:
        stamp = self._stamp(path)
        if stamp is not None and digest is not None:
            self.entries[os.path.abspath(path)] = [stamp, problem, digest]
            self.changed = True

    def save(self) -> None:
        """Best effort: a memo that cannot be written only costs the next run its shortcut."""
        if not self.path or not self.changed:
            return
        from .runs import write_atomic

        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            write_atomic(self.path, json.dumps(self.entries))
        except Exception:  # noqa: BLE001 - never let the memo stop a run
            pass


def _first(items: Sequence[str], separator: str) -> str:
    return separator.join(items[:SHOWN_PROBLEMS]) + (" ..." if len(items) > SHOWN_PROBLEMS else "")


def check_images(paths: Sequence[str], memo: Optional[ImageMemo] = None, quiet: bool = True) -> str:
    """Every image a run needs exists and decodes whole; all are checked, the first few problems named.

    Returns the images' fingerprint: a sha256 over each image's name and content hash, in loader order.
    """
    unique = list(dict.fromkeys(paths))
    memo = memo or ImageMemo(None)
    verdicts: Dict[str, Tuple[Optional[str], Optional[str]]] = {}
    todo = []
    for path in unique:
        known = memo.get(path)
        if known is None:
            todo.append(path)
        else:
            verdicts[path] = known
    if todo:
        progress = Progress(len(todo), "checking images", quiet=quiet or len(todo) < 500)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # hashing releases the GIL
            for path, verdict in zip(todo, pool.map(image_verdict, todo)):
                verdicts[path] = verdict
                memo.put(path, *verdict)
                progress.update(1)
        progress.close()
        memo.save()
    problems = [(p, verdicts[p][0]) for p in unique if verdicts[p][0]]
    if problems:
        missing = [p for p, why in problems if why == "missing"]
        broken = [f"{p}: {why}" for p, why in problems if why != "missing"]
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(unique)} images are missing: {_first(missing, ', ')}")
        if broken:
            parts.append(f"{len(broken)} images are unusable: {_first(broken, '; ')}")
        raise InputError(
            "; ".join(parts),
            "unpack val2017.zip again so that every image of the annotation file is there and complete",
        )
    digest = hashlib.sha256()
    for path in unique:
        digest.update(f"{os.path.basename(path)}:{verdicts[path][1]}\n".encode())
    return digest.hexdigest()


# -- the whole dataset -----------------------------------------------------------------------------------


def open_dataset(
    root: Optional[str] = None, max_images: Optional[int] = None, *, annotation_file: Optional[str] = None,
    image_dir: Optional[str] = None, cache_dir: Optional[str] = None, quiet: bool = True,
) -> EvalSet:
    """Find, check and index the dataset and check every image the run needs, before any compute."""
    layout = find_layout(root, annotation_file, image_dir)
    content = read_annotations(layout.annotation_file)
    check_annotations(content, layout.annotation_file)
    coco = load_index(content)
    instances = data.select_instances(coco, layout.image_dir, max_images)
    if not len(instances):
        raise InputError(
            f"no person instances with keypoints in {layout.annotation_file}"
            + (f" among its first {max_images} images" if max_images is not None else ""),
            "check the annotation file" + (", or raise --max-images" if max_images is not None else ""),
        )
    images_sha256 = check_images(instances.paths, ImageMemo(cache_dir), quiet)
    return EvalSet(layout.root or os.path.dirname(os.path.abspath(layout.image_dir)), layout.annotation_file, coco,
                   instances, max_images, image_dir=layout.image_dir, images_sha256=images_sha256)
