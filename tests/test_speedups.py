"""Each speed-up of the native engine, on and off: the results files are byte-identical.

One pass over the data for FP32 and the quantized model (against one pass each), crops of calibration kept for
the evaluation, the normalisation looked up (against computed), the crop warped in BGR (against the reference's
RGB conversion of the whole image first), and the models scored in forked processes (against one after another).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli, tiny_hrnet

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
    served = list(engine._crops(evalset, count, options, CPU, keep=False))  # as the evaluation pass reads them
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


def test_first_maximum_from_torch_max_equals_numpys_argmax_on_tie_heavy_heatmaps():
    """``max_preds`` takes the index from ``torch.max`` (faster than ``torch.argmax`` on the CPU): on maps with
    few levels, as a quantized model gives, the first maximum in row-major order is numpy's (the reference's)."""
    generator = torch.Generator().manual_seed(0)
    heatmaps = torch.randint(-1, 3, (6, 17, 16, 12), generator=generator).to(torch.float32) * 0.25
    heatmaps[0, 0] = 0.5  # a whole map tied
    heatmaps[0, 1] = -0.25  # a whole map tied below zero
    coords, maxvals = inference.max_preds(heatmaps)
    flat = heatmaps.reshape(6, 17, -1).numpy()
    first = flat.argmax(axis=2)
    expected = np.stack([first % 12, first // 12], axis=2).astype(np.float32) * (flat.max(axis=2) > 0)[..., None]
    assert np.array_equal(coords.numpy(), expected)
    assert np.array_equal(maxvals.numpy()[..., 0], flat.max(axis=2))
    assert torch.equal(torch.max(heatmaps.reshape(6, 17, -1), dim=2).indices,
                       torch.argmax(heatmaps.reshape(6, 17, -1), dim=2))  # the former way


def test_first_maximum_and_flip_average_the_former_way_give_byte_identical_results_files(synth_root, tmp_path,
                                                                                         monkeypatch):
    evalset = open_dataset(synth_root)
    options = RunOptions(5, 0, True)
    model = tiny_hrnet(5)
    (tmp_path / "now").mkdir()
    (tmp_path / "former").mkdir()
    now = NativeEngine().evaluate("fp32", model, evalset, CPU, str(tmp_path / "now"), options, StageTimer(CPU))
    monkeypatch.setattr(inference, "first_max_index", lambda flat: torch.argmax(flat, dim=-1))
    monkeypatch.setattr(inference, "average_flipped", lambda output, back, shift=True:
                        (inference.shift_right(back) if shift else back).add_(output).mul_(0.5))
    former = NativeEngine().evaluate("fp32", model, evalset, CPU, str(tmp_path / "former"), options, StageTimer(CPU))
    assert now.stats == former.stats and np.array_equal(now.preds, former.preds)
    assert _files(tmp_path / "now") == _files(tmp_path / "former") and len(_files(tmp_path / "now")) == 1


@pytest.mark.parametrize("width", [1, 2, 48])
def test_flip_average_read_through_a_view_equals_averaging_the_shifted_copy(width):
    generator = torch.Generator().manual_seed(width)
    output = torch.randn(3, 17, 5, width, generator=generator)
    back = torch.randn(3, 17, 5, width, generator=generator)
    expected = inference.shift_right(back.clone()).add_(output).mul_(0.5)  # the former way
    assert torch.equal(inference.average_flipped(output, back.clone()), expected)
    assert torch.equal(inference.average_flipped(output, back.clone(), shift=False), (back + output) * 0.5)


def test_the_evaluation_pass_keeps_no_crops_of_its_own_and_changes_no_number(synth_root, tmp_path):
    """Calibration's crops are kept for the pass that follows; that pass reads them and stores nothing more."""
    evalset = open_dataset(synth_root)
    options = RunOptions(4, 0, True)
    engine = NativeEngine()
    engine.calibration(evalset, 6, options, CPU)(torch.nn.Identity())
    kept = engine._caches[evalset.annotation_file].filled
    assert kept.sum() == 6 and kept[:6].all()
    (tmp_path / "kept").mkdir()
    (tmp_path / "none").mkdir()
    model = tiny_hrnet(4)
    with_cache = engine.evaluate("fp32", model, evalset, CPU, str(tmp_path / "kept"), options, StageTimer(CPU))
    assert kept.sum() == 6  # nothing of the evaluation pass was stored
    without = NativeEngine(crop_cache_mb=0).evaluate("fp32", model, evalset, CPU, str(tmp_path / "none"), options,
                                                     StageTimer(CPU))
    assert with_cache.stats == without.stats and _files(tmp_path / "kept") == _files(tmp_path / "none")


def test_the_cli_limits_openmp_spinning_before_torch_loads_and_a_users_setting_wins():
    from hrnet_quanteval import cli

    environ = {}
    assert cli.limit_idle_spinning(environ, modules={}) and environ == {"GOMP_SPINCOUNT": "20000"}
    for users in ({"GOMP_SPINCOUNT": "300000"}, {"OMP_WAIT_POLICY": "ACTIVE"}):
        environ = dict(users)
        assert not cli.limit_idle_spinning(environ, modules={}) and environ == users
    environ = {}
    assert not cli.limit_idle_spinning(environ, modules={"torch": None}) and environ == {}  # too late to matter
    # the command line sets it before anything imports torch: what torch's OpenMP runtime reads when it loads
    probe = ("import builtins, os, sys\n"
             "seen = []\n"
             "real = builtins.__import__\n"
             "def spy(name, *a, **k):\n"
             "    if name == 'torch' and 'torch' not in sys.modules:\n"
             "        seen.append(os.environ.get('GOMP_SPINCOUNT'))\n"
             "    return real(name, *a, **k)\n"
             "builtins.__import__ = spy\n"
             "from hrnet_quanteval import cli\n"
             "code = cli.main(['eval', '--evaluation-dataset', os.path.join(os.sep, 'no', 'such', 'coco'),\n"
             "                 '--fp32-only', '--use-cuda', 'false'])\n"
             "print(seen[:1], code)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.split("\n")[-2] == "['20000'] 2", out.stdout + out.stderr


def test_openmp_spin_counts_give_byte_identical_results(synth_root, tiny_checkpoint, tmp_path):
    """Ours (20,000) and libgomp's default (300,000): how long an idle thread spins decides no number."""
    files = {}
    for spin in ("20000", "300000"):
        out = run_cli("eval", "--evaluation-dataset", synth_root, "--fp32-checkpoint", tiny_checkpoint, "--fp32-only",
                      "--use-cuda", "false", "--workers", "2", "--batch-size", "8", "--results-dir", str(tmp_path),
                      "--run-id", spin, "--no-cache", env={"GOMP_SPINCOUNT": spin})
        assert out.returncode == 0, out.stderr
        with open(tmp_path / spin / "report.json") as f:
            assert json.load(f)["environment"]["gomp_spincount"] == spin
        files[spin] = _files(tmp_path / spin)
    assert len(files["20000"]) == 1 and files["20000"] == files["300000"]
