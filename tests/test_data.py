import json
import os

import numpy as np
import pytest

from hrnet_quanteval import data
from hrnet_quanteval.synth import GROUP_COLORS, generate, joint_group
from hrnet_quanteval.transforms import INPUT_SIZE, apply_affine, crop_matrix


def _ann(ann_id, image_id, bbox, area=100.0, iscrowd=0, keypoints=None):
    return {
        "id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": iscrowd, "bbox": bbox, "area": area,
        "keypoints": keypoints if keypoints is not None else [5, 5, 2] + [0] * 48, "num_keypoints": 1,
    }


@pytest.fixture
def crafted(tmp_path):
    """Two images listed out of id order; annotations that the reference loader must drop."""
    dataset = {
        "images": [{"id": 9, "width": 100, "height": 80}, {"id": 4, "width": 100, "height": 80}],
        "annotations": [
            _ann(1, 4, [10, 10, 20, 40]),
            _ann(2, 9, [50, 10, 20, 40]),
            _ann(3, 9, [0, 0, 30, 30], iscrowd=1),  # crowd
            _ann(4, 9, [0, 0, 30, 30], keypoints=[0] * 51),  # no keypoints
            _ann(5, 9, [0, 0, 30, 30], area=0.0),  # zero area
            _ann(6, 9, [150, 0, 30, 30]),  # outside the image
            _ann(7, 9, [-10, -10, 40, 40]),  # clipped, kept
        ],
        "categories": [{"id": 1, "name": "person"}],
    }
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / data.ANNOTATION_FILE).write_text(json.dumps(dataset))
    return str(root)


def test_instance_selection_follows_the_reference(crafted):
    coco = data.load_coco(os.path.join(crafted, data.ANNOTATION_FILE))
    inst = data.select_instances(coco, os.path.join(crafted, data.IMAGE_DIR))
    assert inst.evaluated_image_ids == [9, 4]  # file order, not sorted
    assert inst.annotation_ids.tolist() == [2, 7, 1]
    assert inst.image_ids.tolist() == [9, 9, 4]
    assert inst.paths[0] == os.path.join(crafted, "images", "val2017", "000000000009.jpg")
    # annotation 7: x1 = max(0, -10) = 0 but the width stays w - 1 = 39 (upstream quirk) -> centre 19.5
    np.testing.assert_array_equal(inst.centers[1], np.float32([19.5, 19.5]))
    assert data.select_instances(coco, crafted, max_images=1).annotation_ids.tolist() == [2, 7]


def test_areas_are_the_enlarged_crop_areas(crafted):
    coco = data.load_coco(os.path.join(crafted, data.ANNOTATION_FILE))
    inst = data.select_instances(coco, os.path.join(crafted, data.IMAGE_DIR))
    s = inst.scales[0] * np.float32(200)
    assert inst.areas[0] == np.float64(np.float32(s[0] * s[1]))


def test_synthetic_set_has_everything_the_loader_filters(tmp_path):
    root = str(tmp_path)
    counts = generate(root, images=10, seed=5)
    with open(os.path.join(root, data.ANNOTATION_FILE)) as f:
        dataset = json.load(f)
    ids = [im["id"] for im in dataset["images"]]
    assert ids != sorted(ids)
    anns = dataset["annotations"]
    assert counts["people"] == sum(1 for a in anns if not a["iscrowd"] and a["num_keypoints"] > 0) > 5
    assert any(a["iscrowd"] for a in anns) and any(not a["iscrowd"] and a["num_keypoints"] == 0 for a in anns)
    inst = data.select_instances(data.load_coco(os.path.join(root, data.ANNOTATION_FILE)), os.path.join(root, data.IMAGE_DIR))
    assert len(inst) == counts["people"]
    for a in anns:
        kp = np.array(a["keypoints"]).reshape(17, 3)
        assert a["num_keypoints"] == int((kp[:, 2] > 0).sum())
    assert all(os.path.getsize(data.image_path(root, i)) > 0 for i in ids)


def test_synthetic_set_is_reproducible(tmp_path):
    generate(str(tmp_path / "a"), images=3, seed=11)
    generate(str(tmp_path / "b"), images=3, seed=11)
    a = (tmp_path / "a" / data.ANNOTATION_FILE).read_text()
    assert a == (tmp_path / "b" / data.ANNOTATION_FILE).read_text()


def test_crop_puts_a_joint_glyph_where_the_affine_says(synth_root):
    coco = data.load_coco(os.path.join(synth_root, data.ANNOTATION_FILE))
    inst = data.select_instances(coco, os.path.join(synth_root, data.IMAGE_DIR))
    crops = data.CropDataset(inst.paths, inst.centers, inst.scales)
    crop, index = crops[0]
    assert crop.dtype.is_floating_point is False and tuple(crop.shape) == (3, 256, 192) and index == 0
    kp = np.array(coco.anns[int(inst.annotation_ids[0])]["keypoints"], dtype=np.float64).reshape(17, 3)
    visible = np.flatnonzero(kp[:, 2] > 0)
    j = int(visible[0])
    x, y = apply_affine(kp[j, :2], crop_matrix(inst.centers[0], inst.scales[0], INPUT_SIZE))
    pixel = crop[:, int(round(y)), int(round(x))].numpy().astype(int)
    assert np.abs(pixel - np.array(GROUP_COLORS[joint_group(j)])).sum() < 60


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"")
    with pytest.raises(data.InputError, match="broken.jpg"):
        data.read_rgb(str(bad))
