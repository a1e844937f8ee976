"""Bad input, round 2: one test per class of input, each asserting the exit code, the words that name the thing,
no traceback on stderr, and that nothing earlier (results folder, dataset) changed."""
import errno
import json
import os
import shutil
import signal
import stat

import cv2
import numpy as np
import pytest
import torch

from hrnet_quanteval import report, run
from hrnet_quanteval.cli import main
from hrnet_quanteval.data import ANNOTATION_FILE, IMAGE_DIR
from hrnet_quanteval.model import build_hrnet, tiny_spec
from hrnet_quanteval.synth import generate

EVAL = ["eval", "--use-cuda", "false", "--fp32-only", "--workers", "0", "--quiet"]


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "coco"
    generate(str(root), images=6, seed=12)
    return root


def snapshot(*folders):
    """Every file under the folders with its bytes: what must not change."""
    files = {}
    for folder in folders:
        for base, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(base, name)
                if os.path.isfile(path):
                    with open(path, "rb") as f:
                        files[path] = f.read()
    return files


def call(capsys, *args):
    """main() in this process; (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_usage_error(code, err, *words):
    assert code == 2, err
    assert "Traceback" not in err and "Error:" not in err.split("error:", 1)[0]
    for word in words:
        assert word in err, f"{word!r} not in: {err}"


# -- the annotation file, field by field --------------------------------------------------------------------


def _edit(root, change):
    path = root / ANNOTATION_FILE
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def _first_person(content):
    return next(a for a in content["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"])


ANNOTATION_CASES = {
    "keypoints of the wrong length": (lambda c: _first_person(c).update(keypoints=_first_person(c)["keypoints"][:48]),
                                      ["keypoints has 48 values", "51"]),
    "categories not a list": (lambda c: c.update(categories={"id": 1}), ["'categories' is a dict"]),
    "num_keypoints missing": (lambda c: _first_person(c).pop("num_keypoints"), ["num_keypoints is missing"]),
    "image id too large for C long": (lambda c: c["images"][0].update(id=2**70), ["id 1180591620717411303424", "2^63"]),
    "keypoint values that are strings": (lambda c: _first_person(c)["keypoints"].__setitem__(3, "12"),
                                         ["keypoints hold '12'"]),
    "a NaN in a box": (lambda c: _first_person(c)["bbox"].__setitem__(2, float("nan")), ["bbox"]),
    "an image id twice": (lambda c: c["images"].append(dict(c["images"][0])), ["appears twice"]),
    "iscrowd that is not 0 or 1": (lambda c: _first_person(c).update(iscrowd=2), ["iscrowd 2"]),
    "an image without a width": (lambda c: c["images"][0].pop("width"), ["width is missing"]),
    "a file name that is a number": (lambda c: c["images"][0].update(file_name=7), ["file_name 7"]),
    "annotations that are not a list": (lambda c: c.update(annotations="none"), ["'annotations' is a str"]),
    "an annotation of an unknown category": (lambda c: _first_person(c).update(category_id=3), ["category_id 3"]),
    "an annotation that is not an object": (lambda c: c["annotations"].append([1, 2]), ["is a list, not an object"]),
    "an area that is a string": (lambda c: _first_person(c).update(area="big"), ["area 'big'"]),
}


@pytest.mark.parametrize("case", sorted(ANNOTATION_CASES))
def test_annotation_content_is_checked_before_compute(case, coco, tiny_checkpoint, tmp_path, capsys):
    change, words = ANNOTATION_CASES[case]
    _edit(coco, change)
    before = snapshot(coco)
    code, _, err = call(capsys, *EVAL, "--evaluation-dataset", coco, "--fp32-checkpoint", tiny_checkpoint,
                        "--results-dir", tmp_path / "r")
    assert_usage_error(code, err, "person_keypoints_val2017.json", *words)
    assert snapshot(coco) == before and not (tmp_path / "r").exists() or not os.listdir(tmp_path / "r")


def test_the_first_few_problems_are_named_and_the_rest_counted(coco, tiny_checkpoint, capsys):
    _edit(coco, lambda c: [a.update(num_keypoints="x") for a in c["annotations"]])
    code, _, err = call(capsys, *EVAL, "--evaluation-dataset", coco, "--fp32-checkpoint", tiny_checkpoint)
    count = len(json.loads((coco / ANNOTATION_FILE).read_text())["annotations"])
    assert_usage_error(code, err, f"{count} problems", f"(and {count - 5} more)")


def test_a_top_level_that_is_not_an_object(coco, tiny_checkpoint, capsys):
    (coco / ANNOTATION_FILE).write_text("[]")
    code, _, err = call(capsys, *EVAL, "--evaluation-dataset", coco, "--fp32-checkpoint", tiny_checkpoint)
    assert_usage_error(code, err, "holds a JSON list")


# -- operating-system errors on every user path ---------------------------------------------------------------


def _too_long(tmp_path):
    return str(tmp_path / ("x" * 300))


def _loop(tmp_path):
    os.symlink("loop-b", tmp_path / "loop-a")
    os.symlink("loop-a", tmp_path / "loop-b")
    return str(tmp_path / "loop-a")


def _folder(tmp_path):
    (tmp_path / "a-folder").mkdir(exist_ok=True)
    return str(tmp_path / "a-folder")


def _under_a_file(tmp_path):
    (tmp_path / "a-file").write_text("x")
    return str(tmp_path / "a-file" / "inside")


PATHS = {"too long": (_too_long, "too long"), "a link loop": (_loop, "link"), "a folder": (_folder, "folder"),
         "under a file": (_under_a_file, "a file, not a folder")}


FLAGS = {"--fp32-checkpoint": "checkpoint", "--encodings": "encodings", "--results-dir": "results folder",
         "--evaluation-dataset": "dataset folder", "--annotation-file": "annotation file", "--export": "export folder",
         "--artifacts-dir": "artifacts folder"}
FOLDER_FLAGS = {"--results-dir", "--evaluation-dataset", "--export", "--artifacts-dir"}  # an (empty) folder is fine there
OS_CASES = [(flag, case) for flag in sorted(FLAGS) for case in sorted(PATHS) if not (flag in FOLDER_FLAGS and case == "a folder")]


@pytest.mark.parametrize("flag, path_case", OS_CASES)
def test_os_errors_on_user_paths_are_usage_errors_naming_the_path(flag, path_case, coco, tiny_checkpoint, tmp_path, capsys):
    make, words = PATHS[path_case]
    bad = make(tmp_path)
    args = ["eval", "--use-cuda", "false", "--workers", "0", "--quiet", "--fp32-checkpoint", tiny_checkpoint,
            "--results-dir", tmp_path / "r", "--evaluation-dataset", coco]
    args += [] if flag in ("--encodings", "--export") else ["--fp32-only"]
    if flag == "--annotation-file":
        args += ["--annotation-file", bad, "--image-dir", coco / IMAGE_DIR]
    else:
        args += [flag, bad]  # the last value of a repeated flag wins
    code, _, err = call(capsys, *args)
    assert_usage_error(code, err, FLAGS[flag], words)
    assert os.path.basename(bad)[:40] in err


def test_a_run_id_that_is_no_folder_name_or_too_long(coco, tiny_checkpoint, tmp_path, capsys):
    for run_id, words in (("a/b", "not a folder name"), ("x" * 300, "too long"), ("..", "not a folder name")):
        code, _, err = call(capsys, *EVAL, "--evaluation-dataset", coco, "--fp32-checkpoint", tiny_checkpoint,
                            "--results-dir", tmp_path / "r", "--run-id", run_id)
        assert_usage_error(code, err, words)


def test_permission_denied_is_named(coco, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """Root reads every file, so the refusal is injected where the checkpoint is opened."""
    import builtins

    real_open = builtins.open

    def refusing(path, *args, **kwargs):
        if str(path) == tiny_checkpoint:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing)
    code, _, err = call(capsys, *EVAL, "--evaluation-dataset", coco, "--fp32-checkpoint", tiny_checkpoint)
    assert_usage_error(code, err, "checkpoint", "permission denied", tiny_checkpoint)


def test_an_unreadable_image_folder_is_named(coco, tiny_checkpoint, capsys):
    shutil.rmtree(coco / IMAGE_DIR)
    (coco / IMAGE_DIR).write_text("not a folder")
    code, _, err = call(capsys, *EVAL, "--evaluation-dataset", coco, "--fp32-checkpoint", tiny_checkpoint)
    assert_usage_error(code, err, "image folder")


# -- checkpoints of the wrong kind -------------------------------------------------------------------------


def _state():
    torch.manual_seed(3)
    return build_hrnet(tiny_spec()).state_dict()


CHECKPOINT_CASES = {
    "a missing branch key": (lambda s: s.pop("stage4.0.branches.3.0.conv1.weight"), "stage4.0.branches.3.0.conv1.weight"),
    "an MPII model (16 joints)": (lambda s: s.update({"final_layer.weight": s["final_layer.weight"][:16],
                                                      "final_layer.bias": s["final_layer.bias"][:16]}), "16 joints"),
    "a final layer of the wrong rank": (lambda s: s.update({"final_layer.weight": s["final_layer.weight"][:, :, 0, 0]}),
                                        "not an HRNet pose model"),
    "NaN weights": (lambda s: s["conv1.weight"].fill_(float("nan")), "NaN"),
    "a tensor of the wrong shape": (lambda s: s.update({"conv2.weight": s["conv2.weight"][:, :4]}), "conv2.weight"),
    "no HRNet at all": (lambda s: [s.pop(k) for k in list(s) if k.startswith("stage")], "not an HRNet pose model"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_checkpoints_are_checked_against_the_architecture_before_compute(case, coco, tmp_path, capsys):
    change, words = CHECKPOINT_CASES[case]
    state = _state()
    change(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    code, _, err = call(capsys, *EVAL, "--evaluation-dataset", coco, "--fp32-checkpoint", path, "--results-dir", tmp_path / "r")
    assert_usage_error(code, err, str(path), words)
    assert not (tmp_path / "r").exists() or not os.listdir(tmp_path / "r")


# -- stale results and a shared cache ------------------------------------------------------------------------


def _fp32(results):
    (run_id,) = [d for d in os.listdir(results)]
    with open(os.path.join(results, run_id, "report.json")) as f:
        rep = json.load(f)
    return rep, (results / run_id / "keypoints_fp32_results.json").read_bytes()


def test_new_pixels_under_the_same_names_recompute_fp32(coco, tiny_checkpoint, tmp_path, capsys):
    cache = tmp_path / "cache"
    common = [*EVAL, "--evaluation-dataset", coco, "--fp32-checkpoint", tiny_checkpoint, "--artifacts-dir", cache]
    assert call(capsys, *common, "--results-dir", tmp_path / "r1")[0] == 0
    for name in os.listdir(coco / IMAGE_DIR):  # same names, different pixels
        path = str(coco / IMAGE_DIR / name)
        image = cv2.imread(path)
        cv2.imwrite(path, np.ascontiguousarray(image[:, ::-1]))
    code, out, _ = call(capsys, *common, "--results-dir", tmp_path / "r2")
    assert code == 0 and "reused from the cache" not in out
    fresh = call(capsys, *common, "--results-dir", tmp_path / "r3", "--no-cache")[0]
    assert fresh == 0
    second, second_file = _fp32(tmp_path / "r2")
    third, third_file = _fp32(tmp_path / "r3")
    first, first_file = _fp32(tmp_path / "r1")
    assert second_file == third_file and second["models"] == third["models"]
    assert second_file != first_file and not second["settings"]["fp32_results"].startswith("reused")


def test_a_cache_entry_with_a_missing_file_is_recomputed(coco, tiny_checkpoint, tmp_path, capsys):
    cache = tmp_path / "cache"
    common = [*EVAL, "--evaluation-dataset", coco, "--fp32-checkpoint", tiny_checkpoint, "--artifacts-dir", cache]
    assert call(capsys, *common, "--results-dir", tmp_path / "r1")[0] == 0
    (entry,) = os.listdir(cache / "fp32-results")
    os.remove(cache / "fp32-results" / entry / "results.json")
    code, out, err = call(capsys, *common, "--results-dir", tmp_path / "r2")
    assert code == 0 and "broken" in out and "Traceback" not in err
    assert _fp32(tmp_path / "r2")[1] == _fp32(tmp_path / "r1")[1]


# -- never overwrite ----------------------------------------------------------------------------------------


def test_synth_never_writes_over_a_set(coco, capsys):
    before = snapshot(coco)
    code, _, err = call(capsys, "synth", coco, "--images", "2")
    assert_usage_error(code, err, "synthetic set folder", str(coco), "not empty")
    assert snapshot(coco) == before


def test_synth_into_an_empty_folder_writes_the_set_with_the_umask(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert call(capsys, "synth", tmp_path / "empty", "--images", "2")[0] == 0
    assert (tmp_path / "empty" / ANNOTATION_FILE).is_file()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".empty.")]  # no work folder left behind


@pytest.mark.aimet
def test_export_never_writes_over_an_earlier_export(coco, tiny_checkpoint, tmp_path, capsys):
    export = tmp_path / "export"
    export.mkdir()
    (export / "hrnet_w8a8.encodings").write_text("{}")
    before = snapshot(export)
    code, _, err = call(capsys, "eval", "--evaluation-dataset", coco, "--fp32-checkpoint", tiny_checkpoint, "--use-cuda",
                        "false", "--workers", "0", "--export", export, "--results-dir", tmp_path / "r")
    assert_usage_error(code, err, "export folder", "not empty")
    assert snapshot(export) == before and (not (tmp_path / "r").exists() or not os.listdir(tmp_path / "r"))


# -- files and signals -------------------------------------------------------------------------------------


def test_run_files_get_the_umask_modes(coco, tiny_checkpoint, tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "hrnet_quanteval", *EVAL, "--evaluation-dataset", str(coco), "--fp32-checkpoint",
         tiny_checkpoint, "--results-dir", str(tmp_path / "r")],
        capture_output=True, text=True, preexec_fn=lambda: os.umask(0o022),
    )
    assert out.returncode == 0, out.stderr
    (run_id,) = os.listdir(tmp_path / "r")
    modes = {}
    for base, dirs, files in os.walk(tmp_path / "r" / run_id):
        for name in files + dirs:
            modes[name] = stat.S_IMODE(os.stat(os.path.join(base, name)).st_mode)
    assert modes["report.json"] == modes["status.json"] == modes["keypoints_fp32_results.json"] == 0o644
    assert all(mode in (0o644, 0o755) for mode in modes.values()), modes


def test_a_signal_during_the_final_writes_leaves_a_complete_run_and_its_exit_code(coco, tiny_checkpoint, tmp_path, capsys,
                                                                                  monkeypatch):
    original = report.write_report

    def write_then_interrupt(*args, **kwargs):
        original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C just after report.json is written

    monkeypatch.setattr(report, "write_report", write_then_interrupt)
    code, out, err = call(capsys, *EVAL, "--evaluation-dataset", coco, "--fp32-checkpoint", tiny_checkpoint,
                          "--results-dir", tmp_path / "r")
    assert code == 0 and "signal arrived while the report was being written" in err
    (run_id,) = os.listdir(tmp_path / "r")
    assert json.loads((tmp_path / "r" / run_id / "status.json").read_text())["status"] == "complete"
    assert (tmp_path / "r" / run_id / "report.json").is_file()


def test_a_jpeg_with_bytes_after_its_end_marker_is_used_as_the_decoder_sees_it(coco, tiny_checkpoint, tmp_path, capsys):
    common = [*EVAL, "--evaluation-dataset", coco, "--fp32-checkpoint", tiny_checkpoint, "--no-cache"]
    assert call(capsys, *common, "--results-dir", tmp_path / "r1")[0] == 0
    for name in os.listdir(coco / IMAGE_DIR):
        with open(coco / IMAGE_DIR / name, "ab") as f:
            f.write(b"\x00trailing bytes a camera left behind\xff\xd9")
    assert call(capsys, *common, "--results-dir", tmp_path / "r2")[0] == 0
    assert _fp32(tmp_path / "r1")[1] == _fp32(tmp_path / "r2")[1]


# -- secondary tools ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, words", [
    ("[]", "no models"), ('{"models": []}', "no models"), ('{"models": {"fp32": 3}}', "not a table of stats"),
    ('{"models": {"fp32": {"AP": "0.7"}}}', "not a number"), ('{"models": {"fp32": {"AP": 0.7}}, "environment": []}',
                                                               "environment is a list"),
    ("{", "is not JSON"),
])
def test_compare_on_a_report_of_the_wrong_shape(content, words, tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"run_id": "a", "models": {"fp32": {"AP": 0.7}}}))
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    code, _, err = call(capsys, "compare", good, bad)
    assert_usage_error(code, err, str(bad), words)


def test_compare_names_a_run_that_did_not_finish(tmp_path, capsys):
    import socket

    folder = tmp_path / "killed"
    folder.mkdir()
    (folder / "status.json").write_text(json.dumps({"status": "running", "pid": 2**22 + 12345, "host": socket.gethostname(),
                                                    "started": "2026-11-27T10:00:00+0000"}))
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"models": {"fp32": {"AP": 0.7}}}))
    code, _, err = call(capsys, "compare", good, folder)
    assert_usage_error(code, err, "did not finish", "is gone")


@pytest.mark.parametrize("lib_case", ["syntax error", "another project"])
def test_parity_with_a_broken_or_foreign_lib(lib_case, coco, tmp_path, capsys, monkeypatch):
    lib = tmp_path / "lib"
    for package in ("config", "core", "dataset", "models", "nms", "utils"):
        (lib / package).mkdir(parents=True)
        (lib / package / "__init__.py").write_text("")
    body = "def validate(:\n" if lib_case == "syntax error" else "def train():\n    pass\n"
    (lib / "core" / "function.py").write_text(body)
    monkeypatch.setenv("HRNET_LIB", str(lib))
    code, _, err = call(capsys, "parity", "--evaluation-dataset", coco, "--oracle", "--use-cuda", "false",
                        "--results-dir", tmp_path / "r")
    assert code == 3 and "Traceback" not in err and str(lib) in err and "HRNET_LIB" in err, err


# -- the one rule for everything else -----------------------------------------------------------------------


def test_an_unexpected_exception_is_a_bug_with_exit_4_and_a_saved_traceback(coco, tiny_checkpoint, tmp_path, capsys,
                                                                            monkeypatch):
    from hrnet_quanteval import evaluation

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug planted by the test")

    monkeypatch.setattr(evaluation, "coco_results", broken)
    args = [*EVAL, "--no-cache", "--evaluation-dataset", coco, "--fp32-checkpoint", tiny_checkpoint,
            "--results-dir", tmp_path / "r"]  # --no-cache: an FP32 row from the cache would skip the planted bug
    code, _, err = call(capsys, *args)
    assert code == 4 and "Traceback" not in err
    assert "internal error during FP32 evaluation" in err and "ZeroDivisionError: a bug planted by the test" in err
    (run_id,) = os.listdir(tmp_path / "r")
    saved = tmp_path / "r" / run_id / "traceback.txt"
    assert str(saved) in err and "bug in hrnet-quanteval" in err
    assert "Traceback (most recent call last)" in saved.read_text() and "broken" in saved.read_text()
    status = json.loads((tmp_path / "r" / run_id / "status.json").read_text())
    assert status["status"] == "failed" and "internal error" in status["detail"]
    code, _, err = call(capsys, *args[:-2], "--results-dir", tmp_path / "r2", "--debug")
    assert code == 4 and "Traceback (most recent call last)" in err


def test_an_unexpected_exception_before_any_run_folder_saves_its_traceback_elsewhere(coco, tiny_checkpoint, capsys,
                                                                                    monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("planted")

    monkeypatch.setattr(run, "open_evalset", broken)
    code, _, err = call(capsys, *EVAL, "--evaluation-dataset", coco, "--fp32-checkpoint", tiny_checkpoint)
    assert code == 4 and "internal error during opening the dataset" in err and "Traceback" not in err
    saved = err.split("traceback is saved in ")[1].split(";")[0]
    assert os.path.isfile(saved) and "KeyError" in open(saved).read()
