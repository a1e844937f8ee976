"""Each speed-up of the native engine, on and off: the results files are byte-identical.

One pass over the data for FP32 and the quantized model (against one pass each), crops of calibration kept for
the evaluation, the normalisation looked up (against computed), the crop warped in BGR (against the reference's
RGB conversion of the whole image first), and the models scored in forked processes (against one after another).
"""
import os

import numpy as np
import pytest
import torch
from conftest import ROOT, tiny_hrnet

from hrnet_quanteval import data, inference, run
from hrnet_quanteval.engines import native
from hrnet_quanteval.engines.native import NativeEngine
from hrnet_quanteval.progress import StageTimer
from hrnet_quanteval.runtypes import RunOptions
from hrnet_quanteval.transforms import crop_image
from hrnet_quanteval.validation import open_dataset

CPU = torch.device("cpu")




def _files(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))
            if name.startswith("keypoints_")}


def test_one_pass_for_two_models_gives_each_the_files_of_its_own_pass(synth_root, tmp_path):
    evalset = open_dataset(synth_root)
    options = RunOptions(5, 0, True)
    models = [("fp32", tiny_hrnet(1)), ("other", tiny_hrnet(2))]
    (tmp_path / "together").mkdir()
    (tmp_path / "apart").mkdir()
    together = NativeEngine().evaluate_many(models, evalset, CPU, str(tmp_path / "together"), options, StageTimer(CPU))
    for name, model in models:
        alone = NativeEngine().evaluate(name, model, evalset, CPU, str(tmp_path / "apart"), options, StageTimer(CPU))
        assert alone.stats == together[name].stats and np.array_equal(alone.preds, together[name].preds)
    assert _files(tmp_path / "together") == _files(tmp_path / "apart") and len(_files(tmp_path / "apart")) == 2


@pytest.mark.aimet
def test_the_run_with_calibration_first_and_one_pass_equals_the_zoos_order(synth_root, tmp_path):
    """run.execute (sim first, calibration crops kept, one pass for both models, forked scoring) against the
    zoo's order: FP32 evaluated, then the sim built, calibrated and evaluated, each pass decoding for itself."""
    from hrnet_quanteval.quantization.simulate import QuantPlan, load_adapter

    evalset = open_dataset(synth_root)
    options = RunOptions(4, 0, True)
    model = tiny_hrnet(3)
    adapter = load_adapter()
    plan = QuantPlan(calibration_images=6)
    for folder in ("fast", "zoo"):
        (tmp_path / folder).mkdir()
    fast = run.execute(evalset, CPU, str(tmp_path / "fast"), options, fp32=model, plan=plan, adapter=adapter,
                       engine=NativeEngine())
    timer = StageTimer(CPU)
    zoo_fp32 = NativeEngine(crop_cache_mb=0).evaluate("fp32", model, evalset, CPU, str(tmp_path / "zoo"), options, timer)
    zoo_w8a8, _ = run.quantize_and_evaluate(model, QuantPlan(calibration_images=6), evalset, CPU, str(tmp_path / "zoo"),
                                            options, timer, adapter, NativeEngine(crop_cache_mb=0))
    assert fast.models == {"fp32": zoo_fp32.stats, "w8a8": zoo_w8a8.stats}
    assert _files(tmp_path / "fast") == _files(tmp_path / "zoo") and len(_files(tmp_path / "zoo")) == 2


def test_a_partial_crop_cache_serves_whole_batches_then_the_loader_continues(synth_root):
    evalset = open_dataset(synth_root)
    engine = NativeEngine()
    options = RunOptions(4, 0, True)
    count = len(evalset.instances)
    first = list(engine._crops(evalset, 7, options, CPU))  # calibration's crops: 7 of them, batches 4 + 3
    assert [len(i) for _, i in first] == [4, 3]
    served = list(engine._crops(evalset, count, options, CPU))
    fresh = list(NativeEngine(crop_cache_mb=0)._crops(evalset, count, options, CPU))
    assert [i.tolist() for _, i in served] == [i.tolist() for _, i in fresh]  # the same batches
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(served, fresh))


def test_looked_up_normalisation_equals_the_arithmetic_for_every_value():
    normalize = inference.Normalizer(CPU)
    assert normalize.table is not None
    every = torch.arange(256, dtype=torch.uint8).repeat(3 * 4 * 4).view(4, 3, 16, 64)
    random = torch.randint(0, 256, (5, 3, 256, 192), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for batch in (every, random):
        expected = (batch.to(torch.float32) / torch.tensor([255.0]) - normalize.mean) / normalize.std
        assert torch.equal(normalize(batch), expected)


def test_crops_warped_in_bgr_equal_the_references_rgb_first(synth_root):
    """On the synthetic set and on real COCO photographs (any size, grey ones included)."""
    sets = [open_dataset(synth_root)]
    real = os.path.join(ROOT, "..", "shared", "data", "coco-real-mini")
    sets.append(open_dataset(annotation_file=os.path.join(real, "annotations", "person_keypoints_train2017.json"),
                             image_dir=os.path.join(real, "train2017")))
    for evalset in sets:
        inst = evalset.instances
        crops = data.CropDataset(inst.paths, inst.centers, inst.scales)
        for k in range(len(inst)):
            reference = crop_image(data.read_rgb(inst.paths[k]), inst.centers[k], inst.scales[k]).transpose(2, 0, 1)
            assert np.array_equal(crops[k][0].numpy(), reference), inst.paths[k]


def test_scoring_in_forked_processes_equals_scoring_one_after_another(synth_root, tmp_path, monkeypatch):
    evalset = open_dataset(synth_root)
    rng = np.random.default_rng(0)
    inst = evalset.instances
    named = []
    for name in ("fp32", "w8a8", "w4a8"):
        preds = np.zeros((len(inst), 17, 3), np.float32)
        preds[..., :2] = inst.centers[:, None, :] + rng.normal(0, 15, (len(inst), 17, 2)).astype(np.float32)
        preds[..., 2] = rng.uniform(0, 1, (len(inst), 17))
        named.append((name, preds))
    (tmp_path / "forked").mkdir()
    (tmp_path / "serial").mkdir()
    forked = NativeEngine()._score_all(named, evalset, str(tmp_path / "forked"), StageTimer(CPU))
    monkeypatch.setattr(native.multiprocessing, "get_all_start_methods", lambda: ["spawn"])  # no fork: in process
    serial = NativeEngine()._score_all(named, evalset, str(tmp_path / "serial"), StageTimer(CPU))
    assert {k: v.stats for k, v in forked.items()} == {k: v.stats for k, v in serial.items()}
    assert _files(tmp_path / "forked") == _files(tmp_path / "serial") and len(_files(tmp_path / "serial")) == 3


def test_a_failing_forked_scorer_leaves_its_model_to_the_parent(synth_root, tmp_path, monkeypatch):
    """A child that dies early (here: before it can answer) costs time, never a result."""
    evalset = open_dataset(synth_root)
    inst = evalset.instances
    preds = np.zeros((len(inst), 17, 3), np.float32)
    preds[..., :2] = inst.centers[:, None, :]
    monkeypatch.setattr(NativeEngine, "_score_in_child", lambda self, writer, *args: os._exit(3))
    (tmp_path / "r").mkdir()
    done = NativeEngine()._score_all([("a", preds), ("b", preds.copy())], evalset, str(tmp_path / "r"), StageTimer(CPU))
    assert done["a"].stats == done["b"].stats and set(_files(tmp_path / "r")) == {"keypoints_a_results.json",
                                                                                 "keypoints_b_results.json"}
