import numpy as np
import pytest
import torch

from hrnet_quanteval.data import FLIP_PAIRS
from hrnet_quanteval.inference import (
    MEAN,
    STD,
    Normalizer,
    decode,
    flip_back,
    flip_test,
    max_preds,
    shift_right,
    to_image,
)


def _heatmaps(joints=17, h=64, w=48):
    return torch.zeros(1, joints, h, w)


def test_decode_quarter_offset_toward_higher_neighbours():
    hm = _heatmaps()
    hm[0, 3, 20, 10] = 1.0
    hm[0, 3, 20, 11], hm[0, 3, 20, 9] = 0.5, 0.2  # right higher: +0.25 in x
    hm[0, 3, 19, 10], hm[0, 3, 21, 10] = 0.3, 0.1  # above higher: -0.25 in y
    out = decode(hm)
    assert out.dtype == torch.float32
    assert out[0, 3].tolist() == [10.25, 19.75, 1.0]


def test_decode_equal_neighbours_do_not_move():
    hm = _heatmaps()
    hm[0, 0, 30, 30] = 0.9
    hm[0, 0, 30, 29] = hm[0, 0, 30, 31] = 0.4
    assert decode(hm)[0, 0].tolist() == pytest.approx([30.0, 30.0, 0.9])


@pytest.mark.parametrize(
    "x, y, refined",
    [(1, 30, False), (2, 30, True), (46, 30, True), (47, 30, False), (20, 1, False), (20, 62, True), (20, 63, False)],
)
def test_refinement_only_two_pixels_inside(x, y, refined):
    hm = _heatmaps(joints=1)
    hm[0, 0, y, x] = 1.0
    if x + 1 < 48:
        hm[0, 0, y, x + 1] = 0.5
    if y + 1 < 64:
        hm[0, 0, y + 1, x] = 0.5
    got = decode(hm)[0, 0, :2].tolist()
    assert got == ([x + 0.25, y + 0.25] if refined else [float(x), float(y)])


def test_nonpositive_max_is_masked_to_origin_and_kept_as_score():
    hm = _heatmaps(joints=2) - 1.0
    hm[0, 0, 10, 10] = -0.5
    coords, maxvals = max_preds(hm)
    assert coords[0, 0].tolist() == [0.0, 0.0]
    assert maxvals[0, 0, 0].item() == -0.5


def test_argmax_takes_the_first_maximum_in_row_major_order():
    hm = _heatmaps(joints=1)
    hm[0, 0, 10, 30] = 1.0
    hm[0, 0, 12, 5] = 1.0
    hm[0, 0, 10, 31] = 1.0
    coords, _ = max_preds(hm)
    assert coords[0, 0].tolist() == [30.0, 10.0]


def test_flip_back_swaps_the_eight_pairs_and_mirrors_columns():
    hm = torch.zeros(2, 17, 4, 5)
    for j in range(17):
        hm[:, j] = j * 10 + torch.arange(5.0)  # channel id in tens, column index in units
    back = flip_back(hm)
    partner = {j: j for j in range(17)}
    for a, b in FLIP_PAIRS:
        partner[a], partner[b] = b, a
    assert len(FLIP_PAIRS) == 8 and partner[0] == 0
    for j in range(17):
        assert back[0, j, 0].tolist() == [partner[j] * 10 + c for c in (4, 3, 2, 1, 0)]


def test_shift_right_moves_columns_and_keeps_column_zero():
    hm = torch.arange(5.0).view(1, 1, 1, 5)
    assert shift_right(hm).flatten().tolist() == [0.0, 0.0, 1.0, 2.0, 3.0]


def test_flip_test_averages_with_the_shifted_flipped_back_pass():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 17, 3, padding=1)
    x = torch.randn(2, 3, 8, 6)
    with torch.no_grad():
        got = flip_test(conv, x)
        plain = conv(x)
        mirrored = flip_back(conv(torch.flip(x, [3])))
        expected = (plain + shift_right(mirrored)) * 0.5
    assert torch.equal(got, expected)
    assert torch.equal(flip_test(conv, x, flip=False), plain)


def test_normalizer_is_bit_identical_to_totensor_normalize():
    pixels = np.arange(256, dtype=np.uint8)
    batch = np.stack([pixels, pixels[::-1], pixels]).reshape(1, 3, 16, 16)
    got = Normalizer(torch.device("cpu"))(torch.from_numpy(batch)).numpy()
    ref = batch.astype(np.float32) / np.float32(255)
    ref = (ref - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)


def test_to_image_maps_heatmap_pixels_and_keeps_scores():
    decoded = np.array([[[10.0, 20.0, 0.7]]], dtype=np.float32)
    matrices = np.array([[[4.0, 0.0, 100.0], [0.0, 4.0, 50.0]]])
    out = to_image(decoded, matrices)
    assert out.dtype == np.float32
    assert out[0, 0].tolist() == pytest.approx([140.0, 130.0, 0.7])
