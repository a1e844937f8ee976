"""The numbers that decide results, held to HRNet's own code (read from its lib) and to COCO's definitions.

Nothing here compares the package with its own constants: every expected value is either read from HRNet's
prepared lib (its dataset class, its NMS module, its w32_256x192 experiment yaml) or written below from the
COCO keypoint definition / ImageNet normalisation. Where upstream has a function, the package's counterpart
must give the same bits on many random inputs (box cleaning, centre/scale, affine matrices, the inverse
transform after its f32 store, OKS, OKS-NMS, the whole results file).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import io
import json
import os

import numpy as np
import pytest
import torch

from hrnet_quanteval import data, evaluation, inference, transforms
from hrnet_quanteval.engines.reference import isolated_imports

# HRNet's dataset code uses np.float, deprecated in the numpy it runs on here
pytestmark = pytest.mark.filterwarnings("ignore:`np.float` is a deprecated alias:DeprecationWarning")


# --- COCO's person keypoints (cocodataset.org keypoint format and keypoint evaluation), written out ---------
COCO_JOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)
# per-keypoint OKS sigmas of the COCO keypoint evaluation (cocoeval.py: np.array([...]) / 10.0)
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0
# ImageNet normalisation (torchvision's models), which the zoo script passes to transforms.Normalize
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _coco_left_right_pairs():
    index = {name: i for i, name in enumerate(COCO_JOINTS)}
    return [(i, index["right_" + name[len("left_"):]]) for i, name in enumerate(COCO_JOINTS) if name.startswith("left_")]


# --- locating HRNet's lib and source ----------------------------------------------------------------------
class Upstream:
    """HRNet's modules used here, imported in isolation (their generic names never stay in sys.modules)."""

    def __init__(self, lib: str) -> None:
        with isolated_imports(lib), contextlib.redirect_stdout(io.StringIO()):
            self.config = importlib.import_module("config")
            self.COCODataset = importlib.import_module("dataset.coco").COCODataset
            self.nms = importlib.import_module("nms.nms")
            self.transforms = importlib.import_module("utils.transforms")

    def cfg(self, yaml_path: str):
        """The lib's config merged with the w32_256x192 experiment, as upstream's tools/test.py does."""
        cfg = self.config.cfg.clone()
        args = argparse.Namespace(cfg=yaml_path, opts=[], modelDir="", logDir="", dataDir="")
        self.config.update_config(cfg, args)
        return cfg


@pytest.fixture(scope="module")
def upstream(hrnet_lib):
    return Upstream(hrnet_lib)


@pytest.fixture(scope="module")
def w32_cfg(upstream, w32_yaml):
    return upstream.cfg(w32_yaml)


def _random_annotations(rng, images=40, per_image=12):
    """A COCO person-keypoint set with boxes of every kind: inside, overhanging, outside, degenerate, crowd."""
    images_out, annotations = [], []
    for n in range(images):
        width, height = int(rng.integers(120, 900)), int(rng.integers(120, 900))
        image_id = 1000 + n
        images_out.append({"id": image_id, "file_name": "%012d.jpg" % image_id, "width": width, "height": height})
        for _ in range(per_image):
            kind = rng.integers(0, 8)
            x, y = rng.uniform(-0.3, 1.1) * width, rng.uniform(-0.3, 1.1) * height
            w, h = rng.uniform(0, 0.8) * width, rng.uniform(0, 0.8) * height
            if kind == 0:
                x, y, w, h = float(rng.integers(0, width)), float(rng.integers(0, height)), float(rng.integers(0, 40)), 0.0
            elif kind == 1:
                x, y, w, h = 0.0, 0.0, float(width + 5), float(height + 5)
            elif kind == 2:  # exactly 3:4 after cleaning, integers
                x, y, w, h = 10.0, 10.0, 76.0, 101.0
            elif kind == 3:
                w, h = rng.uniform(0, 1.5), rng.uniform(0, 1.5)
            keypoints = np.zeros((17, 3))
            if kind != 4:  # kind 4: no keypoints at all
                labelled = rng.random(17) < rng.uniform(0.05, 1)
                keypoints[labelled, 0] = rng.uniform(0, width, labelled.sum()).round(1)
                keypoints[labelled, 1] = rng.uniform(0, height, labelled.sum()).round(1)
                keypoints[labelled, 2] = rng.integers(1, 3, labelled.sum())
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                "bbox": [round(float(v), 2) for v in (x, y, w, h)],
                "area": 0.0 if kind == 5 else float(rng.uniform(1, 5e4)),
                "iscrowd": int(kind == 6), "num_keypoints": int((keypoints[:, 2] > 0).sum()),
                "keypoints": [float(v) if v % 1 else int(v) for v in keypoints.reshape(-1)],
                "segmentation": [[x, y, x + w, y, x + w, y + h]],
            })
    categories = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO_JOINTS),
                   "skeleton": [[16, 14], [14, 12], [17, 15], [15, 13]]}]
    return {"images": images_out, "annotations": annotations, "categories": categories}


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory):
    """A val2017-layout folder (annotation file only: nothing here reads images)."""
    root = tmp_path_factory.mktemp("upstream_set")
    (root / "annotations").mkdir()
    gt = _random_annotations(np.random.default_rng(16))
    (root / "annotations" / "person_keypoints_val2017.json").write_text(json.dumps(gt))
    return str(root), gt


@pytest.fixture(scope="module")
def coco_dataset(upstream, w32_cfg, coco_set):
    with contextlib.redirect_stdout(io.StringIO()):
        return upstream.COCODataset(w32_cfg, coco_set[0], "val2017", False, None)


# --- the constants ----------------------------------------------------------------------------------------
def test_joint_count_and_flip_pairs_are_upstreams_and_cocos(coco_dataset, w32_cfg):
    assert data.NUM_JOINTS == coco_dataset.num_joints == w32_cfg.MODEL.NUM_JOINTS == len(COCO_JOINTS)
    assert [tuple(p) for p in data.FLIP_PAIRS] == [tuple(p) for p in coco_dataset.flip_pairs]
    assert [tuple(p) for p in data.FLIP_PAIRS] == _coco_left_right_pairs()


def test_flip_back_matches_upstream_with_its_flip_pairs(upstream, coco_dataset):
    heatmaps = np.random.default_rng(3).standard_normal((2, 17, 64, 48)).astype(np.float32)
    theirs = upstream.transforms.flip_back(heatmaps.copy(), coco_dataset.flip_pairs)
    ours = inference.flip_back(torch.from_numpy(heatmaps)).numpy()
    assert np.array_equal(ours, theirs)


def test_oks_sigmas_are_cocos_and_upstreams(upstream):
    assert np.array_equal(evaluation.SIGMAS, COCO_SIGMAS)
    assert np.array_equal(evaluation.VARIANCES, (COCO_SIGMAS * 2) ** 2)
    from pycocotools.cocoeval import Params

    assert np.array_equal(evaluation.SIGMAS, Params(iouType="keypoints").kpt_oks_sigmas)
    # upstream's oks_iou builds its default sigmas inline: read that expression from its source
    tree = ast.parse(inspect.getsource(upstream.nms.oks_iou))
    defaults = [node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "sigmas" for t in node.targets)]
    assert len(defaults) == 1
    literal = defaults[0]
    assert isinstance(literal, ast.BinOp) and isinstance(literal.op, ast.Div)
    values = ast.literal_eval(literal.left.args[0])
    assert np.array_equal(evaluation.SIGMAS, np.array(values) / ast.literal_eval(literal.right))


def test_nms_and_rescoring_thresholds_are_the_experiments(w32_cfg, coco_dataset):
    assert evaluation.OKS_THRESHOLD == w32_cfg.TEST.OKS_THRE == coco_dataset.oks_thre
    assert evaluation.IN_VIS_THRESHOLD == w32_cfg.TEST.IN_VIS_THRE == coco_dataset.in_vis_thre
    assert w32_cfg.TEST.USE_GT_BBOX and not w32_cfg.TEST.SOFT_NMS


def test_input_heatmap_and_box_constants_are_the_experiments(w32_cfg, coco_dataset):
    assert transforms.INPUT_SIZE == tuple(w32_cfg.MODEL.IMAGE_SIZE) == tuple(coco_dataset.image_size)
    assert transforms.HEATMAP_SIZE == tuple(w32_cfg.MODEL.HEATMAP_SIZE) == tuple(coco_dataset.heatmap_size)
    assert transforms.PIXEL_STD == coco_dataset.pixel_std
    assert transforms.ASPECT_RATIO == coco_dataset.aspect_ratio
    # the 1.25 enlargement lives in upstream's code, not in a constant: hold the result of the whole rule
    rng = np.random.default_rng(5)
    for _ in range(2000):
        box = rng.uniform(0, 600, 4)
        if rng.random() < 0.2:
            box = rng.integers(0, 400, 4).astype(float)
        c_theirs, s_theirs = coco_dataset._xywh2cs(*box)
        c_ours, s_ours = transforms.box_to_center_scale(*box)
        assert c_ours.dtype == c_theirs.dtype and s_ours.dtype == s_theirs.dtype
        assert np.array_equal(c_ours, c_theirs) and np.array_equal(s_ours, s_theirs), box


def test_normalisation_is_imagenets():
    assert tuple(inference.MEAN) == IMAGENET_MEAN and tuple(inference.STD) == IMAGENET_STD
    import torchvision.transforms as T

    images = np.random.default_rng(4).integers(0, 256, (2, 256, 192, 3), dtype=np.uint8)
    reference = T.Compose([T.ToTensor(), T.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))])
    theirs = torch.stack([reference(image) for image in images])
    ours = inference.Normalizer(torch.device("cpu"))(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert torch.equal(ours, theirs)


# --- the functions, bit for bit ---------------------------------------------------------------------------
def test_box_cleaning_and_centre_scale_match_upstreams_db(coco_dataset, coco_set):
    """Every kept annotation, in order, with upstream's centre and scale; the skipped ones skipped."""
    _, gt = coco_set
    images = {image["id"]: image for image in gt["images"]}
    ours = []
    for ann in gt["annotations"]:
        if ann["iscrowd"]:
            continue
        image = images[ann["image_id"]]
        box = transforms.clean_bbox(ann["bbox"], image["width"], image["height"])
        if box is None or not ann["area"] > 0 or max(ann["keypoints"]) == 0:
            continue
        ours.append(transforms.box_to_center_scale(*box))
    theirs = [(record["center"], record["scale"]) for record in coco_dataset.db]
    assert 100 < len(theirs) < len(gt["annotations"])  # the set does exercise the skips
    assert len(ours) == len(theirs)
    for (c_ours, s_ours), (c_theirs, s_theirs) in zip(ours, theirs):
        assert np.array_equal(c_ours, c_theirs) and np.array_equal(s_ours, s_theirs)


def _random_centres_scales(rng, count):
    centers, scales = [], []
    for _ in range(count):
        width, height = rng.integers(100, 1200, 2)
        x, y = rng.uniform(0, width - 2), rng.uniform(0, height - 2)
        box = transforms.clean_bbox([x, y, rng.uniform(1, width - x + 1), rng.uniform(1, height - y + 1)], width, height)
        center, scale = transforms.box_to_center_scale(*box)
        centers.append(center)
        scales.append(scale)
    return np.stack(centers), np.stack(scales)


def test_crop_matrices_match_upstreams_affine_transform(upstream):
    centers, scales = _random_centres_scales(np.random.default_rng(6), 3000)
    for center, scale in zip(centers, scales):
        for size, inverse in ((transforms.INPUT_SIZE, False), (transforms.HEATMAP_SIZE, True)):
            theirs = upstream.transforms.get_affine_transform(center, scale, 0, list(size), inv=int(inverse))
            assert np.array_equal(transforms.crop_matrix(center, scale, size, inverse=inverse), theirs)


def test_inverse_transform_matches_upstreams_transform_preds_bit_for_bit(upstream):
    """~400k heatmap points back to the image: upstream's per-point np.dot vs our vectorised apply_affine.

    12000 instances of 34 points each (to_image takes any J). A term-by-term ``m00*x + m01*y + m02`` differs
    from np.dot in a few points per million on some machines, a few in 10^4 on others: see also the next test.
    """
    rng = np.random.default_rng(7)
    count, joints = 12000, 34
    centers, scales = _random_centres_scales(rng, count)
    grid = np.stack([rng.integers(0, 48, (count, joints)), rng.integers(0, 64, (count, joints))], -1)
    refined = grid + rng.choice([-0.25, 0.0, 0.25], (count, joints, 2))  # decoded joints: quarter-pixel grid
    anywhere = rng.uniform([-4, -4], [52, 68], (count, joints, 2))  # and arbitrary f32 positions
    coords = np.where(rng.random((count, 1, 1)) < 0.5, refined, anywhere).astype(np.float32)
    theirs = np.zeros(coords.shape, dtype=np.float32)  # get_final_preds stores into an f32 copy
    for i in range(count):
        theirs[i] = upstream.transforms.transform_preds(coords[i], centers[i], scales[i], list(transforms.HEATMAP_SIZE))
    matrices = np.stack([transforms.crop_matrix(c, s, transforms.HEATMAP_SIZE, inverse=True)
                         for c, s in zip(centers, scales)])
    decoded = np.concatenate([coords, np.ones((count, joints, 1), np.float32)], axis=2)
    ours = inference.to_image(decoded, matrices)[..., :2]
    assert coords.size // 2 >= 400_000
    mismatched = np.argwhere((ours.view(np.uint32) != theirs.view(np.uint32)).any(-1))
    assert len(mismatched) == 0, f"{len(mismatched)} points differ, e.g. instance/joint {mismatched[:5].tolist()}"


# (centre, scale, heatmap point) where ``m00*x + m01*y + m02`` term by term lands one f32 step away from
# upstream's np.dot on an AVX-512 machine with OpenBLAS (found among 6M random decoded points)
SUMMATION_ORDER_CASES = [
    ((377.617919921875, 389.00128173828125), (4.142636299133301, 5.523515224456787), (18.0, 5.0)),
    ((433.3214416503906, 112.85066223144531), (2.838850975036621, 3.7851345539093018), (12.0, 29.0)),
    ((212.960205078125, 54.825836181640625), (1.654657006263733, 2.206209182739258), (12.0, 34.25)),
    ((396.44647216796875, 106.37116241455078), (1.7257426977157593, 2.300990104675293), (24.0, 23.0)),
    ((591.445556640625, 623.0992431640625), (4.475057125091553, 5.966742515563965), (18.0, 5.0)),
    ((438.7626037597656, 121.30986785888672), (1.565079927444458, 2.08677339553833), (24.0, 20.75)),
    ((432.1819763183594, 258.99407958984375), (2.0407185554504395, 2.7209579944610596), (15.0, 2.75)),
    ((761.2273559570312, 230.14845275878906), (2.940162420272827, 3.9202165603637695), (21.0, 4.25)),
    ((136.89584350585938, 16.54033660888672), (0.3447871804237366, 0.459716260433197), (24.0, 29.0)),
    ((16.976858139038086, 314.9587097167969), (2.668926239013672, 3.5585684776306152), (12.0, 8.75)),
    ((189.6977996826172, 91.00435638427734), (0.5536527633666992, 0.7382036447525024), (3.0, 2.0)),
    ((485.1033020019531, 52.30094528198242), (0.7629499435424805, 1.0172666311264038), (36.0, 19.25)),
]


def test_inverse_transform_where_summation_order_matters(upstream):
    centers = np.array([c for c, _, _ in SUMMATION_ORDER_CASES], dtype=np.float32)
    scales = np.array([s for _, s, _ in SUMMATION_ORDER_CASES], dtype=np.float32)
    coords = np.array([[p] for _, _, p in SUMMATION_ORDER_CASES], dtype=np.float32)  # (n, 1, 2)
    theirs = np.zeros(coords.shape, dtype=np.float32)
    for i in range(len(coords)):
        theirs[i] = upstream.transforms.transform_preds(coords[i], centers[i], scales[i], list(transforms.HEATMAP_SIZE))
    matrices = np.stack([transforms.crop_matrix(c, s, transforms.HEATMAP_SIZE, inverse=True)
                         for c, s in zip(centers, scales)])
    decoded = np.concatenate([coords, np.ones(coords.shape[:2] + (1,), np.float32)], axis=2)
    assert np.array_equal(inference.to_image(decoded, matrices)[..., :2].view(np.uint32), theirs.view(np.uint32))
    # one matrix for all points takes the same path
    for i in range(len(coords)):
        assert np.array_equal(transforms.apply_affine(coords[i], matrices[i]).astype(np.float32), theirs[i])


def test_oks_matches_upstreams_oks_iou_bit_for_bit(upstream):
    rng = np.random.default_rng(8)
    for _ in range(300):
        n = int(rng.integers(1, 12))
        base = rng.uniform(0, 500, (1, 17, 3))
        kpts = (base + rng.normal(0, rng.uniform(0.1, 40), (n + 1, 17, 3))).astype(np.float32).reshape(n + 1, -1)
        areas = (rng.uniform(20, 600, n + 1).astype(np.float32) ** 2).astype(np.float64)
        theirs = upstream.nms.oks_iou(kpts[0], kpts[1:], areas[0], areas[1:])
        assert np.array_equal(evaluation.oks(kpts[0], kpts[1:], areas[0], areas[1:]), theirs)


def test_oks_nms_matches_upstream_bit_for_bit(upstream):
    rng = np.random.default_rng(9)
    suppressed = 0
    for _ in range(400):
        n = int(rng.integers(1, 25))
        people = rng.uniform(0, 600, (int(rng.integers(1, 5)), 17, 3))
        kpts = people[rng.integers(0, len(people), n)] + rng.normal(0, rng.uniform(0.05, 8), (n, 17, 3))
        kpts = kpts.astype(np.float32)
        areas = (rng.uniform(50, 400, n).astype(np.float32) ** 2).astype(np.float64)
        scores = rng.choice([0.0, 0.5, 0.75], n) if rng.random() < 0.3 else rng.uniform(0, 1, n)  # ties too
        records = [{"keypoints": kpts[k], "score": scores[k], "area": areas[k]} for k in range(n)]
        theirs = [int(i) for i in upstream.nms.oks_nms(records, evaluation.OKS_THRESHOLD)]
        ours = evaluation.oks_nms(kpts.reshape(n, -1), scores, areas)
        assert ours == theirs
        suppressed += n - len(ours)
    assert suppressed > 500  # the cases do exercise suppression


def test_results_file_is_byte_identical_to_upstreams_evaluate(coco_dataset, w32_cfg, coco_set, tmp_path):
    """Rescoring, grouping, OKS-NMS and the JSON writer at once, through upstream's COCODataset.evaluate."""
    root, gt = coco_set
    rng = np.random.default_rng(10)
    image_ids = np.array([int(os.path.basename(r["image"])[:-4]) for r in coco_dataset.db])
    n = len(image_ids)
    preds = np.zeros((n, 17, 3), dtype=np.float32)
    preds[..., :2] = rng.uniform(0, 500, (n, 17, 2))
    twins = rng.random(n) < 0.4  # near-duplicates of the previous instance of the same image: NMS work
    for k in np.flatnonzero(twins[1:]) + 1:
        if image_ids[k] == image_ids[k - 1]:
            preds[k, :, :2] = preds[k - 1, :, :2] + rng.normal(0, 1, (17, 2))
    preds[..., 2] = rng.choice([0.1, np.float32(0.2), 0.3, 0.6, 0.9], (n, 17))
    preds[rng.random(n) < 0.1, :, 2] = 0.05  # nobody above the visibility threshold: score 0
    centers = np.stack([r["center"] for r in coco_dataset.db])
    scales = np.stack([r["scale"] for r in coco_dataset.db])
    boxes = np.zeros((n, 6))
    boxes[:, 0:2], boxes[:, 2:4] = centers, scales
    boxes[:, 4] = np.prod(scales * 200, 1)
    boxes[:, 5] = 1
    out = tmp_path / "upstream"
    out.mkdir()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dataset.evaluate(w32_cfg, preds, str(out), boxes, [r["image"] for r in coco_dataset.db])
    theirs = (out / "results" / "keypoints_val2017_results_0.json").read_bytes()
    mine = tmp_path / "ours.json"
    evaluation.write_results(str(mine), evaluation.coco_results(image_ids, preds, centers, scales, boxes[:, 4]))
    assert len(json.loads(theirs)) < n  # NMS did drop some
    assert mine.read_bytes() == theirs
