"""Box, centre/scale and affine-crop math of the reference pipeline (spec sections 2.3, 2.4, 3.2, 5.3).

Every function reproduces the reference's dtypes: boxes in f64, centre and scale stored as f32, affine
anchor points in f32, matrices solved by OpenCV in f64.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

INPUT_SIZE: Tuple[int, int] = (192, 256)  # (width, height) of the network input
HEATMAP_SIZE: Tuple[int, int] = (48, 64)  # (width, height) of the output heatmaps
ASPECT_RATIO = INPUT_SIZE[0] * 1.0 / INPUT_SIZE[1]
PIXEL_STD = 200
BOX_ENLARGE = 1.25


def clean_bbox(bbox: Sequence[float], width: int, height: int) -> Optional[Tuple[float, float, float, float]]:
    """Clip a COCO ``[x, y, w, h]`` box to the image; None when nothing is left.

    The kept box is about one pixel narrower and shorter than the annotated one, as upstream.
    """
    x, y, w, h = (float(v) for v in bbox)
    x1 = max(0.0, x)
    y1 = max(0.0, y)
    x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
    y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
    if x2 >= x1 and y2 >= y1:
        return x1, y1, x2 - x1, y2 - y1
    return None


def box_to_center_scale(x: float, y: float, w: float, h: float) -> Tuple[np.ndarray, np.ndarray]:
    """Centre (f32) and scale (f32, in units of 200 px, enlarged 1.25x) of the crop for a clean box."""
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    if w > ASPECT_RATIO * h:
        h = w * 1.0 / ASPECT_RATIO
    elif w < ASPECT_RATIO * h:
        w = h * ASPECT_RATIO
    scale = np.array([w * 1.0 / PIXEL_STD, h * 1.0 / PIXEL_STD], dtype=np.float32)
    # GT boxes always have a centre other than -1, so the enlargement always applies (multiplied in f32)
    scale = scale * np.float32(BOX_ENLARGE)
    return center, scale


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a - b
    return b + np.array([-d[1], d[0]], dtype=np.float32)


def anchor_points(center: np.ndarray, scale: np.ndarray, output_size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """The three f32 point pairs (image, output) that define the crop, rotation 0.

    Only ``scale[0]`` is used, and the output direction uses the output *width*, as upstream.
    """
    src_w = np.float32(scale[0]) * np.float32(PIXEL_STD)
    dst_w, dst_h = output_size
    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = np.asarray(center, dtype=np.float64) + np.array([0.0, -0.5 * float(src_w)])
    dst[0] = [dst_w * 0.5, dst_h * 0.5]
    dst[1] = [dst_w * 0.5, dst_h * 0.5 - dst_w * 0.5]
    src[2] = _third_point(src[0], src[1])
    dst[2] = _third_point(dst[0], dst[1])
    return src, dst


def crop_matrix(
    center: np.ndarray, scale: np.ndarray, output_size: Tuple[int, int] = INPUT_SIZE, inverse: bool = False
) -> np.ndarray:
    """2x3 f64 affine matrix from image to output pixels (or back with ``inverse``), solved by OpenCV."""
    src, dst = anchor_points(center, scale, output_size)
    if inverse:
        return cv2.getAffineTransform(dst, src)
    return cv2.getAffineTransform(src, dst)


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map (..., 2) points through one 2x3 matrix (or a stack matching the leading dims), in f64."""
    pts = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    x, y = pts[..., 0], pts[..., 1]
    if m.ndim == 3:  # one matrix per leading row
        m = m.reshape(m.shape[:1] + (1,) * (pts.ndim - 2) + (2, 3))
    out_x = m[..., 0, 0] * x + m[..., 0, 1] * y + m[..., 0, 2]
    out_y = m[..., 1, 0] * x + m[..., 1, 1] * y + m[..., 1, 2]
    return np.stack([out_x, out_y], axis=-1)


def crop_image(image: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The 256x192 uint8 crop of one instance, bilinear with a black constant border."""
    matrix = crop_matrix(center, scale, INPUT_SIZE)
    return cv2.warpAffine(image, matrix, INPUT_SIZE, flags=cv2.INTER_LINEAR)
