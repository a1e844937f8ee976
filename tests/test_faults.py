"""Bad input and faults: one test per case, each checking the exit code, the message and that nothing was lost."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_cli

from hrnet_quanteval import inference, preflight, report, runs
from hrnet_quanteval.cli import main
from hrnet_quanteval.data import ANNOTATION_FILE, image_path
from hrnet_quanteval.errors import EnvironmentProblem
from hrnet_quanteval.model import pose_hrnet_w32
from hrnet_quanteval.synth import generate


@pytest.fixture
def coco(tmp_path):
    """A fresh synthetic set per test, since tests break it."""
    root = tmp_path / "coco"
    generate(str(root), images=6, seed=12)
    return root


def _eval(*args, root=None, ckpt=None, results=None):
    base = ["eval", "--use-cuda", "false", "--fp32-only", "--workers", "0"]
    if root is not None:
        base += ["--evaluation-dataset", str(root)]
    if ckpt is not None:
        base += ["--fp32-checkpoint", ckpt]
    if results is not None:
        base += ["--results-dir", str(results)]
    return run_cli(*base, *args)


def _images(root):
    with open(root / ANNOTATION_FILE) as f:
        dataset = json.load(f)
    people = {a["image_id"] for a in dataset["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]}
    return [image_path(str(root), im["id"]) for im in dataset["images"] if im["id"] in people]


# dataset ------------------------------------------------------------------------------------------------


def test_dataset_path_missing(tmp_path, tiny_checkpoint):
    out = _eval(root=tmp_path / "nope", ckpt=tiny_checkpoint, results=tmp_path / "r")
    assert out.returncode == 2 and "dataset folder" in out.stderr and "does not exist" in out.stderr
    assert not (tmp_path / "r").exists() or not os.listdir(tmp_path / "r")


def test_dataset_path_is_a_file(tmp_path, tiny_checkpoint):
    (tmp_path / "file").write_text("x")
    out = _eval(root=tmp_path / "file", ckpt=tiny_checkpoint)
    assert out.returncode == 2 and "not a folder" in out.stderr


def test_coco_2014_layout_is_explained(tmp_path, tiny_checkpoint):
    (tmp_path / "c14" / "images" / "val2014").mkdir(parents=True)
    (tmp_path / "c14" / "annotations").mkdir()
    (tmp_path / "c14" / "annotations" / "person_keypoints_val2014.json").write_text("{}")
    out = _eval(root=tmp_path / "c14", ckpt=tiny_checkpoint)
    assert out.returncode == 2
    for words in ("COCO 2014", "val2017", "val2017.zip", "annotations_trainval2017.zip"):
        assert words in out.stderr


def test_annotation_file_missing(coco, tiny_checkpoint):
    os.remove(coco / ANNOTATION_FILE)
    out = _eval(root=coco, ckpt=tiny_checkpoint)
    assert out.returncode == 2 and "person_keypoints_val2017.json is missing" in out.stderr


def test_annotation_file_truncated(coco, tiny_checkpoint):
    text = (coco / ANNOTATION_FILE).read_text()
    (coco / ANNOTATION_FILE).write_text(text[: len(text) // 2])
    out = _eval(root=coco, ckpt=tiny_checkpoint)
    assert out.returncode == 2 and "not valid JSON" in out.stderr and "truncated" in out.stderr


def test_annotation_file_without_keypoints(coco, tiny_checkpoint):
    dataset = json.loads((coco / ANNOTATION_FILE).read_text())
    dataset["categories"] = [{"id": 1, "name": "person", "supercategory": "person"}]  # an instances_ file
    (coco / ANNOTATION_FILE).write_text(json.dumps(dataset))
    out = _eval(root=coco, ckpt=tiny_checkpoint)
    assert out.returncode == 2 and "not COCO person keypoints" in out.stderr


def test_missing_images_are_all_counted_before_compute(coco, tiny_checkpoint, tmp_path):
    paths = _images(coco)
    for path in paths[:3]:
        os.remove(path)
    out = _eval(root=coco, ckpt=tiny_checkpoint, results=tmp_path / "r")
    assert out.returncode == 2 and f"3 of {len(paths)} images are missing" in out.stderr
    assert os.path.basename(paths[0]) in out.stderr
    assert not (tmp_path / "r").exists() or not os.listdir(tmp_path / "r")  # nothing started


@pytest.mark.parametrize("damage, words", [("empty", "empty (0 bytes)"), ("truncated", "truncated JPEG")])
def test_empty_or_truncated_jpeg_is_named_before_compute(coco, tiny_checkpoint, damage, words):
    path = _images(coco)[0]
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(b"" if damage == "empty" else content[: len(content) // 2])
    out = _eval(root=coco, ckpt=tiny_checkpoint)
    assert out.returncode == 2 and words in out.stderr and os.path.basename(path) in out.stderr
    assert "cv2.error" not in out.stderr and "Traceback" not in out.stderr


def test_corrupt_jpeg_body_is_named_before_compute(coco, tiny_checkpoint, tmp_path):
    path = _images(coco)[0]
    with open(path, "rb") as f:
        content = bytearray(f.read())
    body = bytearray(os.urandom(len(content) - 4))
    with open(path, "wb") as f:  # JPEG markers intact, nothing decodable in between
        f.write(b"\xff\xd8" + bytes(body).replace(b"\xff", b"\x00") + b"\xff\xd9")
    out = _eval("--workers", "2", root=coco, ckpt=tiny_checkpoint, results=tmp_path / "r")
    assert out.returncode == 2, out.stderr
    assert "cannot be decoded" in out.stderr and os.path.basename(path) in out.stderr
    assert "Traceback" not in out.stderr and "Original" not in out.stderr
    assert not (tmp_path / "r").exists() or not os.listdir(tmp_path / "r")  # nothing started


def test_an_image_that_stops_decoding_mid_run_is_named_and_marks_the_run(coco, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """The checks passed, then the decoder refused (the file changed under the run): exit 2, status failed."""
    import cv2

    from hrnet_quanteval import data

    original = cv2.imread
    broken = os.path.basename(_images(coco)[1])
    monkeypatch.setattr(data.cv2, "imread", lambda path, flags=None: None if path.endswith(broken) else original(path, flags))
    code = main(["eval", "--evaluation-dataset", str(coco), "--fp32-checkpoint", tiny_checkpoint, "--fp32-only", "--no-cache",
                 "--use-cuda", "false", "--workers", "0", "--quiet", "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be decoded" in err and os.path.basename(_images(coco)[1]) in err
    (run,) = os.listdir(tmp_path / "r")
    assert json.loads((tmp_path / "r" / run / "status.json").read_text())["status"] == "failed"
    assert not (tmp_path / "r" / run / "report.json").exists()


# flags --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag, value", [("--use-cuda", "perhaps"), ("--batch-size", "0"), ("--workers", "-1"),
                                         ("--default-param-bw", "40"), ("--default-output-bw", "2"),
                                         ("--max-images", "0")])
def test_out_of_range_flags_are_usage_errors(coco, tiny_checkpoint, flag, value):
    out = run_cli("eval", "--evaluation-dataset", str(coco), "--fp32-checkpoint", tiny_checkpoint,
                  "--use-cuda", "false", flag, value)
    assert out.returncode == 2 and (flag in out.stderr or value in out.stderr)


def test_unpublished_bitwidths_run_and_say_no_published_target():
    full = {"images": 5000, "instances": 6352, "max_images": None}
    stats = {name: 0.765 for name in ("AP", "AR")}
    both = report.verdict({"fp32": {**stats, "AR": 0.793}, "w6a8": stats}, full, "legacy")
    assert both["status"] == "reproduced" and "no published target for w6a8" in both["text"]
    alone = report.verdict({"w6a8": stats}, full, "legacy")
    assert alone["status"] == "no_target" and "no published target" in alone["text"]


# devices ------------------------------------------------------------------------------------------------


def test_use_cuda_true_without_gpu(coco, tiny_checkpoint):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = run_cli("eval", "--evaluation-dataset", str(coco), "--fp32-checkpoint", tiny_checkpoint, "--use-cuda", "true")
    assert out.returncode == 3 and "sees no CUDA GPU" in out.stderr and "--use-cuda false" in out.stderr


def test_gpu_without_kernels_in_this_torch_names_the_current_image(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_37", "sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86"])
    monkeypatch.setenv("HRNET_QUANTEVAL_STACK", "legacy")
    with pytest.raises(EnvironmentProblem) as error:
        preflight.check(None)
    assert "H100" in str(error.value) and "sm_90" in str(error.value) and "eval-current" in str(error.value)
    assert preflight.check(False) is False  # the CPU was asked for: no GPU check


@pytest.mark.parametrize("capability, arch_list, ok", [
    ((8, 6), ["sm_80", "sm_86"], True), ((8, 9), ["sm_80", "sm_86"], True), ((9, 0), ["sm_80", "sm_86"], False),
    ((9, 0), ["sm_80", "compute_80"], True), ((12, 0), ["sm_90", "sm_100"], False), ((7, 5), ["sm_80"], False),
])
def test_kernel_coverage_rule(capability, arch_list, ok):
    assert preflight._arch_ok(capability, arch_list) is ok


def test_out_of_memory_says_which_batch_size_to_try(coco, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    def oom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB total capacity)")

    monkeypatch.setattr(inference, "flip_test", oom)
    code = main(["eval", "--evaluation-dataset", str(coco), "--fp32-checkpoint", tiny_checkpoint, "--fp32-only", "--no-cache",
                 "--use-cuda", "false", "--workers", "0", "--results-dir", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3 and "ran out of memory at --batch-size 32" in err and "--batch-size 16" in err
    (run,) = os.listdir(tmp_path / "r")
    assert json.loads((tmp_path / "r" / run / "status.json").read_text())["status"] == "failed"
    assert not (tmp_path / "r" / run / "report.json").exists()


# results ------------------------------------------------------------------------------------------------


def test_results_folder_not_writable_is_found_before_compute(coco, tiny_checkpoint, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    started = time.monotonic()
    out = _eval(root=coco, ckpt=tiny_checkpoint, results=blocker / "results")
    assert out.returncode == 2 and "cannot write to results folder" in out.stderr and "--results-dir" in out.stderr
    assert time.monotonic() - started < 60


def test_disk_full_while_writing_the_report_keeps_earlier_files(coco, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    results = tmp_path / "r"
    args = ["eval", "--evaluation-dataset", str(coco), "--fp32-checkpoint", tiny_checkpoint, "--fp32-only",
            "--use-cuda", "false", "--workers", "0", "--results-dir", str(results), "--quiet"]
    assert main(args + ["--run-id", "earlier"]) == 0
    earlier = {name: (results / "earlier" / name).read_bytes() for name in os.listdir(results / "earlier")}
    real_replace = os.replace

    def full_disk(src, dst):
        if str(dst).endswith("report.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(runs.os, "replace", full_disk)
    code = main(args + ["--run-id", "full"])
    err = capsys.readouterr().err
    assert code == 3 and "disk is full while writing" in err and "report.json" in err
    files = sorted(os.listdir(results / "full"))
    assert "report.json" not in files and "report.md" not in files
    assert not [f for f in files if f.endswith(".tmp")]
    json.loads((results / "full" / "keypoints_fp32_results.json").read_text())  # written before: intact
    assert json.loads((results / "full" / "status.json").read_text())["status"] == "failed"
    assert {name: (results / "earlier" / name).read_bytes() for name in os.listdir(results / "earlier")} == earlier


@pytest.fixture
def slow_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = str(tmp_path / "w32.pth")
    torch.save(pose_hrnet_w32().state_dict(), path)  # full width on a CPU: seconds per batch
    return path


def _as_in_a_terminal() -> None:
    """Ctrl-C's default disposition in the child, whatever launched the suite: a background job of a shell
    without job control (``cmd &`` in a script) starts with SIGINT ignored, and its children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig, code, workers", [(signal.SIGINT, 130, "2"), (signal.SIGTERM, 143, "0")])
def test_signal_during_evaluation_marks_the_run_incomplete(synth_root, slow_checkpoint, tmp_path, sig, code, workers):
    results = tmp_path / "r"
    process = subprocess.Popen(
        [sys.executable, "-m", "hrnet_quanteval", "eval", "--evaluation-dataset", synth_root, "--fp32-checkpoint",
         slow_checkpoint, "--fp32-only", "--use-cuda", "false", "--workers", workers, "--batch-size", "4",
         "--results-dir", str(results), "--run-id", "cut", "--no-cache"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_as_in_a_terminal,
    )
    status = results / "cut" / "status.json"
    deadline = time.monotonic() + 120
    while not status.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    time.sleep(2.0)  # well into the evaluation
    assert process.poll() is None, process.communicate()
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    assert "no report.json" in err
    assert json.loads(status.read_text())["status"] == "interrupted"
    assert not (results / "cut" / "report.json").exists() and not (results / "cut" / "report.md").exists()


def test_two_runs_at_once_never_share_a_folder(synth_root, tiny_checkpoint, tmp_path):
    results = tmp_path / "r"

    def start(*extra):
        return subprocess.Popen(
            [sys.executable, "-m", "hrnet_quanteval", "eval", "--evaluation-dataset", synth_root, "--fp32-checkpoint",
             tiny_checkpoint, "--fp32-only", "--use-cuda", "false", "--workers", "0", "--results-dir", str(results),
             "--quiet", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    first, second = start(), start()
    assert first.wait(300) == 0 and second.wait(300) == 0
    runs_made = sorted(os.listdir(results))
    assert len(runs_made) == 2
    reports = [json.loads((results / r / "report.json").read_text()) for r in runs_made]
    assert {rep["run_id"] for rep in reports} == set(runs_made)
    third, fourth = start("--run-id", "same"), start("--run-id", "same")
    codes = sorted([third.wait(300), fourth.wait(300)])
    assert codes == [0, 2]
    assert (results / "same" / "report.json").exists()


def test_a_plain_unzip_of_coco_evaluates(coco, tiny_checkpoint, tmp_path):
    """Unzipping val2017.zip into the root gives <root>/val2017/ beside <root>/annotations/: that is accepted."""
    os.rename(coco / "images" / "val2017", coco / "val2017")
    os.rmdir(coco / "images")
    out = _eval(root=coco, ckpt=tiny_checkpoint, results=tmp_path / "r")
    assert out.returncode == 0, out.stderr
    (run,) = os.listdir(tmp_path / "r")
    report = json.loads((tmp_path / "r" / run / "report.json").read_text())
    assert report["dataset"]["image_dir"] == str(coco / "val2017") and report["models"]["fp32"]["AP"] >= 0


def test_neither_image_folder_names_both(coco, tiny_checkpoint):
    import shutil

    shutil.rmtree(coco / "images")
    out = _eval(root=coco, ckpt=tiny_checkpoint)
    assert out.returncode == 2 and "images/val2017" in out.stderr and "val2017" in out.stderr and "Traceback" not in out.stderr
