"""Pictures of a run, drawn with OpenCV (present on every stack): the accuracy chart and skeleton overlays."""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Sequence, Tuple

import cv2
import numpy as np

from .data import NUM_JOINTS, SKELETON, read_rgb
from .evaluation import IN_VIS_THRESHOLD

CHART_SIZE = (960, 540)  # width, height of report.png
PANEL_WIDTH = 480  # each overlay panel is scaled to this width
FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (150, 150, 150)
MEASURED = {"AP": (66, 135, 245), "AR": (245, 158, 66)}  # RGB
PANEL_COLORS = [(40, 200, 40), (240, 80, 60), (60, 120, 250), (230, 200, 40)]  # GT, then one per model


def _text(image: np.ndarray, text: str, org: Tuple[int, int], scale: float = 0.5, color=BLACK, thickness: int = 1) -> None:
    cv2.putText(image, text, org, FONT, scale, color, thickness, cv2.LINE_AA)


def _write_png(path: str, rgb: np.ndarray) -> None:
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def accuracy_chart(models: Mapping[str, Mapping[str, float]], published: Mapping[str, Mapping[str, float]], path: str) -> None:
    """report.png: measured AP and AR per model as bars, the published values as black ticks with their numbers."""
    width, height = CHART_SIZE
    image = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, width - 30, 60, height - 70
    _text(image, "COCO keypoint AP and AR: measured (bars) vs published (black ticks)", (left, 30), 0.6, BLACK, 1)
    for i in range(11):  # y axis 0..1
        value = i / 10
        y = int(bottom - value * (bottom - top))
        cv2.line(image, (left, y), (right, y), (230, 230, 230) if i else GREY, 1)
        _text(image, f"{value:.1f}", (left - 40, y + 5), 0.45, BLACK)
    names = list(models)
    slot = (right - left) / max(1, len(names))
    bar = min(70, slot / 3)
    for k, name in enumerate(names):
        center = left + slot * (k + 0.5)
        for j, stat in enumerate(("AP", "AR")):
            x0 = int(center + (j - 1) * bar + (j * 6 - 3))
            x1 = int(x0 + bar)
            value = float(models[name].get(stat, 0.0))
            y = int(bottom - max(0.0, min(1.0, value)) * (bottom - top))
            cv2.rectangle(image, (x0, y), (x1, bottom), MEASURED[stat], -1)
            _text(image, f"{value:.3f}", (x0 + 2, max(top + 12, y - 6)), 0.42, BLACK)
            target = published.get(name, {}).get(stat)
            if target is not None:
                ty = int(bottom - target * (bottom - top))
                cv2.line(image, (x0 - 4, ty), (x1 + 4, ty), BLACK, 3)
                _text(image, f"pub {target:.3f}", (x0 - 4, ty + 16 if ty + 16 < bottom else ty - 20), 0.38, BLACK)
        _text(image, name.upper(), (int(center - 25), bottom + 25), 0.6, BLACK, 2)
    for j, (stat, color) in enumerate(MEASURED.items()):
        x = right - 170 + j * 85
        cv2.rectangle(image, (x, bottom + 40), (x + 18, bottom + 54), color, -1)
        _text(image, stat, (x + 24, bottom + 53), 0.5, BLACK)
    _write_png(path, image)


def _draw_skeleton(image: np.ndarray, joints: np.ndarray, visible: np.ndarray, color, scale: float) -> None:
    thickness = max(1, int(round(2 * scale)))
    for a, b in SKELETON:
        if visible[a] and visible[b]:
            pa = tuple(int(round(v)) for v in joints[a] * scale)
            pb = tuple(int(round(v)) for v in joints[b] * scale)
            cv2.line(image, pa, pb, color, thickness, cv2.LINE_AA)
    for j in range(NUM_JOINTS):
        if visible[j]:
            p = tuple(int(round(v)) for v in joints[j] * scale)
            cv2.circle(image, p, thickness + 2, color, -1, cv2.LINE_AA)


def overlays(
    instances, coco, predictions: Mapping[str, np.ndarray], folder: str, count: int,
) -> List[str]:
    """One PNG per image for the first ``count`` images with people: ground truth, then each model's skeletons."""
    os.makedirs(folder, exist_ok=True)
    written: List[str] = []
    by_image: Dict[int, List[int]] = {}
    for k, image_id in enumerate(instances.image_ids):
        by_image.setdefault(int(image_id), []).append(k)
    for image_id, members in list(by_image.items())[:count]:
        rgb = read_rgb(instances.paths[members[0]])
        scale = PANEL_WIDTH / rgb.shape[1]
        base = cv2.resize(rgb, (PANEL_WIDTH, int(round(rgb.shape[0] * scale))), interpolation=cv2.INTER_AREA)
        panels = []
        titles = ["ground truth"] + [name.upper() for name in predictions]
        for p, title in enumerate(titles):
            panel = base.copy()
            color = PANEL_COLORS[p % len(PANEL_COLORS)]
            for k in members:
                if p == 0:
                    ann = coco.anns[int(instances.annotation_ids[k])]
                    kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(NUM_JOINTS, 3)
                    _draw_skeleton(panel, kp[:, :2], kp[:, 2] > 0, color, scale)
                else:
                    pred = predictions[list(predictions)[p - 1]][k]
                    _draw_skeleton(panel, pred[:, :2], pred[:, 2] > IN_VIS_THRESHOLD, color, scale)
            cv2.rectangle(panel, (0, 0), (PANEL_WIDTH, 26), WHITE, -1)
            _text(panel, f"{title}  (image {image_id})", (6, 18), 0.55, BLACK, 1)
            panels.append(panel)
        path = os.path.join(folder, f"{image_id:012d}.png")
        _write_png(path, np.concatenate(panels, axis=1))
        written.append(path)
    return written


def panel_size(image_shape: Sequence[int], panels: int) -> Tuple[int, int]:
    """(width, height) of an overlay PNG for an image of ``image_shape`` (H, W, ...)."""
    return PANEL_WIDTH * panels, int(round(image_shape[0] * PANEL_WIDTH / image_shape[1]))

