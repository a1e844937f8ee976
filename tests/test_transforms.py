import numpy as np
import pytest

from hrnet_quanteval.transforms import (
    HEATMAP_SIZE,
    INPUT_SIZE,
    apply_affine,
    box_to_center_scale,
    clean_bbox,
    crop_matrix,
)


def test_clean_bbox_shrinks_by_one_pixel_and_clips():
    assert clean_bbox([10.5, 20.25, 30, 40], 100, 100) == (10.5, 20.25, 29.0, 39.0)
    assert clean_bbox([-5, -5, 20, 20], 100, 100) == (0.0, 0.0, 19.0, 19.0)
    assert clean_bbox([90, 90, 50, 50], 100, 100) == (90.0, 90.0, 9.0, 9.0)


def test_clean_bbox_rejects_boxes_outside_the_image():
    assert clean_bbox([150, 10, 20, 20], 100, 100) is None
    assert clean_bbox([10, 120, 20, 20], 100, 100) is None


@pytest.mark.parametrize(
    "box, center, scale",
    [
        ((0, 0, 75, 100), (37.5, 50.0), (0.375 * 1.25, 0.5 * 1.25)),  # already 3:4
        ((0, 0, 150, 100), (75.0, 50.0), (0.75 * 1.25, 1.0 * 1.25)),  # wide: height grows
        ((10, 20, 30, 100), (25.0, 70.0), (0.375 * 1.25, 0.5 * 1.25)),  # tall: width grows
    ],
)
def test_box_to_center_scale_fits_aspect_and_enlarges(box, center, scale):
    c, s = box_to_center_scale(*box)
    assert c.dtype == np.float32 and s.dtype == np.float32
    np.testing.assert_array_equal(c, np.float32(center))
    np.testing.assert_allclose(s, np.float32(scale), rtol=0, atol=1e-7)


def test_crop_matrix_hand_computed():
    # scale[0] * 200 = 192 output pixels: unit zoom, translation puts the centre at (96, 128)
    center = np.array([100.0, 100.0], dtype=np.float32)
    scale = np.array([0.96, 1.28], dtype=np.float32)
    m = crop_matrix(center, scale, INPUT_SIZE)
    np.testing.assert_allclose(m, [[1, 0, -4], [0, 1, 28]], atol=1e-5)
    inverse = crop_matrix(center, scale, HEATMAP_SIZE, inverse=True)
    np.testing.assert_allclose(inverse, [[4, 0, 4], [0, 4, -28]], atol=1e-4)


def test_crop_and_inverse_heatmap_transform_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(200):
        x, y = rng.uniform(0, 600, 2)
        w, h = rng.uniform(10, 400, 2)
        center, scale = box_to_center_scale(x, y, w, h)
        points = rng.uniform([x, y], [x + w, y + h], size=(17, 2))
        crop = apply_affine(points, crop_matrix(center, scale, INPUT_SIZE))
        back = apply_affine(crop / 4.0, crop_matrix(center, scale, HEATMAP_SIZE, inverse=True))
        assert np.abs(back - points).max() < 1e-4


def test_apply_affine_with_one_matrix_per_row():
    points = np.array([[[1.0, 2.0]], [[3.0, 4.0]]])
    matrices = np.array([[[1, 0, 10], [0, 1, 20]], [[2, 0, 0], [0, 2, 0]]], dtype=np.float64)
    np.testing.assert_array_equal(apply_affine(points, matrices), [[[11, 22]], [[6, 8]]])
