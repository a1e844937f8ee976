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

    Both axes at once, in f64: the box starts at its corner moved into the image, and spans ``size - 1``
    pixels from there (never fewer than 0), cut at the last pixel row/column. So the kept box is about one
    pixel narrower and shorter than the annotated one, as upstream's.
    """
    corner, size = np.asarray(bbox, dtype=np.float64).reshape(2, 2)
    first = np.maximum(corner, 0.0)
    last = np.minimum(first + np.maximum(size - 1.0, 0.0), np.array([width, height], dtype=np.float64) - 1.0)
    if not np.all(last >= first):
        return None
    return (*first.tolist(), *(last - first).tolist())


def _fit_aspect(w: float, h: float) -> Tuple[float, float]:
    """Grow the box's short side so that width / height is the network input's (0.75); f64, as upstream."""
    width_for_height = h * ASPECT_RATIO
    if w > width_for_height:
        return w, w / ASPECT_RATIO
    if w < width_for_height:
        return width_for_height, h
    return w, h


def box_to_center_scale(x: float, y: float, w: float, h: float) -> Tuple[np.ndarray, np.ndarray]:
    """Centre (f32) and scale (f32, in units of 200 px, enlarged 1.25x) of the crop for a clean box.

    Centre and aspect-fitted size are f64 until stored as f32; the 1.25 enlargement is a product in f32.
    GT boxes never have the centre -1 that would skip the enlargement upstream, so it always applies.
    """
    center = np.array([x + 0.5 * w, y + 0.5 * h], dtype=np.float32)
    size = np.array(_fit_aspect(w, h), dtype=np.float64)
    scale = (size / PIXEL_STD).astype(np.float32)
    return center, scale * np.float32(BOX_ENLARGE)


# (dy, dx) times this is (dx, dy) turned a quarter turn: (-dy, dx)
_QUARTER_TURN = np.array([-1.0, 1.0], dtype=np.float32)


def _right_angle_corner(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For f32 points (..., 2): b plus (a - b) turned a quarter turn, so a, b and the result make a right angle at b."""
    return b + (a - b)[..., ::-1] * _QUARTER_TURN


def anchor_points(center: np.ndarray, scale: np.ndarray, output_size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """The three f32 point pairs (image, output) that define the crop, rotation 0.

    Anchor 0 is the centre on both sides, anchor 1 lies straight above it at half the crop's width (on the
    output side too: upstream measures that side by the output *width*), anchor 2 completes the right angle
    at anchor 1. Only ``scale[0]`` is used. Image-side anchor 1 is summed in f64 and stored as f32.
    """
    out_w, out_h = output_size
    crop_w = np.float32(scale[0]) * np.float32(PIXEL_STD)  # image pixels across the output width, f32
    anchors = np.zeros((2, 3, 2), dtype=np.float32)  # [image, output] x anchor x (x, y)
    anchors[0, 0] = center
    anchors[0, 1] = np.asarray(center, dtype=np.float64) + (0.0, -0.5 * float(crop_w))
    anchors[1, 0] = (0.5 * out_w, 0.5 * out_h)
    anchors[1, 1] = (0.5 * out_w, 0.5 * out_h - 0.5 * out_w)
    anchors[:, 2] = _right_angle_corner(anchors[:, 0], anchors[:, 1])
    return anchors[0], anchors[1]


def crop_matrix(
    center: np.ndarray, scale: np.ndarray, output_size: Tuple[int, int] = INPUT_SIZE, inverse: bool = False
) -> np.ndarray:
    """2x3 f64 affine matrix from image to output pixels (or back with ``inverse``), solved by OpenCV."""
    src, dst = anchor_points(center, scale, output_size)
    if inverse:
        return cv2.getAffineTransform(dst, src)
    return cv2.getAffineTransform(src, dst)


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map (..., 2) points through one 2x3 matrix (or a stack matching the leading dims), in f64.

    Each point is the product of its 2x3 matrix with the column [x, y, 1], taken by ``np.matmul`` on
    C-contiguous f64 operands. For a (2, 3) @ (3, 1) product numpy calls BLAS ``dgemv``, the routine behind
    upstream's ``np.dot(t, [x, y, 1])`` too, so the two agree to the last bit whatever order of terms and
    fused multiply-adds the machine's BLAS kernel uses. ``m00*x + m01*y + m02`` term by term does not: on an
    AVX-512 machine OpenBLAS's kernel gave ``fma(m00, x, m01*y) + m02``, and results files differed in the
    last f32 bit of a few coordinates in 10^5 (tests/test_upstream_constants.py holds this to upstream).
    """
    pts = np.asarray(points, dtype=np.float64)
    m = np.ascontiguousarray(matrix, dtype=np.float64)
    if m.ndim == 3:  # one matrix per leading row
        m = m.reshape(m.shape[:1] + (1,) * (pts.ndim - 2) + (2, 3))
    columns = np.concatenate([pts, np.ones(pts.shape[:-1] + (1,))], axis=-1)[..., None]  # (..., 3, 1)
    return np.matmul(m, columns)[..., 0]


def crop_image(image: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The 256x192 uint8 crop of one instance, bilinear with a black constant border."""
    matrix = crop_matrix(center, scale, INPUT_SIZE)
    return cv2.warpAffine(image, matrix, INPUT_SIZE, flags=cv2.INTER_LINEAR)
