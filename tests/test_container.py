"""Container files checked without a Docker engine: patches, the patch-and-build script, the entry point."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATCHES = sorted(os.path.join(ROOT, "patches", p) for p in os.listdir(os.path.join(ROOT, "patches")) if p.endswith(".patch"))
PINNED = "00d7bf72f56382165e504b10ff0dddb82dca6fd2"
UPSTREAM_FILES = {"lib/core/function.py", "lib/nms/setup_linux.py", "lib/nms/nms.py"}
HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def parse_patch(path):
    """(header text, [(file, [(old_start, new_start, lines)])]) of a unified diff, checking hunk counts."""
    with open(path) as f:
        lines = f.read().split("\n")
    first = next(i for i, line in enumerate(lines) if line.startswith("--- "))
    header = "\n".join(lines[:first]).strip()
    files, i = [], first
    while i < len(lines) and lines[i].startswith("--- "):
        old, new = lines[i][4:], lines[i + 1][4:]
        assert lines[i + 1].startswith("+++ "), path
        assert old.startswith("a/") and new.startswith("b/") and old[2:] == new[2:], path
        i += 2
        hunks = []
        while i < len(lines) and lines[i].startswith("@@"):
            m = HUNK.match(lines[i])
            assert m, f"{path}: bad hunk header {lines[i]!r}"
            old_start, old_len, new_start, new_len = (int(g) if g else 1 for g in m.groups())
            i += 1
            body = []
            while i < len(lines) and lines[i][:1] in (" ", "+", "-") and not lines[i].startswith("--- "):
                body.append(lines[i])
                i += 1
            assert sum(b[0] in " -" for b in body) == old_len, f"{path}: hunk at {old_start} has a wrong old count"
            assert sum(b[0] in " +" for b in body) == new_len, f"{path}: hunk at {new_start} has a wrong new count"
            hunks.append((old_start, new_start, body))
        assert hunks, path
        files.append((old[2:], hunks))
        while i < len(lines) and lines[i] == "":
            i += 1
    assert i >= len(lines) - 1, f"{path}: trailing content after line {i}"
    return header, files


@pytest.mark.parametrize("path", PATCHES, ids=os.path.basename)
def test_patches_are_well_formed_unified_diffs_with_a_reason(path):
    header, files = parse_patch(path)
    assert len(header) > 40, "each patch starts with a header saying why"
    for target, hunks in files:
        assert target in UPSTREAM_FILES
        for _, _, body in hunks:
            assert not any("\t" in line for line in body if line.startswith("+")), "spaces only"


def test_patches_are_numbered_in_order_starting_with_the_seed_patch():
    names = [os.path.basename(p) for p in PATCHES]
    assert names[0].startswith("0001-") and "function" in names[0]
    assert [n[:4] for n in names] == [f"{i:04d}" for i in range(1, len(names) + 1)]


def test_seed_patch_lines_and_indentation_match_the_spec():
    _, files = parse_patch(PATCHES[0])
    ((target, hunks),) = files
    assert target == "lib/core/function.py" and len(hunks) == 2
    added = []
    for _, new_start, body in hunks:
        line = new_start
        for entry in body:
            if entry[0] == "+":
                added.append((line, entry[1:]))
            if entry[0] in " +":
                line += 1
    assert added == [
        (105, "    on_cuda = next(model.parameters()).is_cuda"),
        (121, "            if on_cuda:"),
        (122, "                input=input.cuda()"),
    ]
    # context: model.eval() right above the flag, the forward call right below the two lines
    first, second = hunks
    assert "    model.eval()" in [b[1:] for b in first[2] if b[0] == " "]
    after = [b[1:] for b in second[2]]
    assert after[after.index("                input=input.cuda()") + 1] == "            outputs = model(input)"


def test_the_pinned_commit_is_the_same_everywhere():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        dockerfile = f.read()
    with open(os.path.join(ROOT, "scripts", "prepare-hrnet-lib.sh")) as f:
        script = f.read()
    with open(os.path.join(ROOT, "Makefile")) as f:
        makefile = f.read()
    assert f"ARG HRNET_COMMIT={PINNED}" in dockerfile and f"pinned={PINNED}" in script
    assert f"HRNET_COMMIT ?= {PINNED}" in makefile
    assert "requirements/legacy.txt" in dockerfile and "requirements/current.txt" in dockerfile


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_prepare_script_fails_when_a_patch_does_not_apply(tmp_path):
    src = tmp_path / "src"
    for name in UPSTREAM_FILES:
        (src / os.path.dirname(name)).mkdir(parents=True, exist_ok=True)
        (src / name).write_text("nothing the patches expect\n")
    _git(src, "init", "-q")
    _git(src, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    _git(src, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "fake")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True).stdout.strip()
    script = os.path.join(ROOT, "scripts", "prepare-hrnet-lib.sh")
    out = subprocess.run(["bash", script, str(src), str(tmp_path / "lib")], capture_output=True, text=True)
    assert out.returncode != 0 and f"expected {PINNED}" in out.stderr  # wrong commit is refused
    env = dict(os.environ, HRNET_COMMIT=head, PYTHON=sys.executable)
    out = subprocess.run(["bash", script, str(src), str(tmp_path / "lib")], capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "patch 0001-" in out.stderr and "does not apply" in out.stderr
    assert not (tmp_path / "lib").exists()  # nothing half-prepared is left behind


HRNET_SRC = os.environ.get("HRNET_SRC")


@pytest.mark.skipif(not HRNET_SRC, reason="set HRNET_SRC to a checkout of HRNet-Human-Pose-Estimation at 00d7bf72 to run")
def test_patches_apply_to_the_pinned_commit_and_nms_builds(tmp_path):
    dest = tmp_path / "hrnet-lib"
    env = dict(os.environ, PYTHON=sys.executable)
    out = subprocess.run(["bash", os.path.join(ROOT, "scripts", "prepare-hrnet-lib.sh"), HRNET_SRC, str(dest)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    with open(dest / "core" / "function.py") as f:
        lines = f.read().split("\n")[:-1]
    assert len(lines) == 282
    assert lines[103] == "    model.eval()" and lines[104] == "    on_cuda = next(model.parameters()).is_cuda"
    assert lines[120:123] == ["            if on_cuda:", "                input=input.cuda()", "            outputs = model(input)"]
    assert (dest / "PATCHES").read_text().split() == [os.path.basename(p) for p in PATCHES]
    check = subprocess.run([sys.executable, "-c", "import nms.cpu_nms, nms.nms"], env=dict(env, PYTHONPATH=str(dest)),
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def _entrypoint(*args, timeout=600, **env):
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    full_env = dict(os.environ, PATH=path, **env)
    return subprocess.run(["bash", os.path.join(ROOT, "entrypoint.sh"), *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def test_entrypoint_dispatches_a_subcommand(tmp_path):
    out = _entrypoint("synth", str(tmp_path / "s"), "--images", "2")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "s" / "annotations" / "person_keypoints_val2017.json").is_file()


def test_entrypoint_sends_bare_flags_to_eval(tmp_path):
    out = _entrypoint("--fp32-only", "--use-cuda", "false", "--evaluation-dataset", str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "nowhere does not exist" in out.stderr


def test_entrypoint_explains_a_missing_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the no-GPU explanation cannot show")
    for args in (("--use-cuda", "true"), ("--default-param-bw", "4")):
        out = _entrypoint(*args, HRNET_QUANTEVAL_DATASET=str(tmp_path))
        assert out.returncode == 3, out.stderr
        assert "NVIDIA container toolkit" in out.stderr and "--use-cuda false" in out.stderr


def test_entrypoint_runs_the_selftest(tmp_path):
    out = _entrypoint("selftest", "--use-cuda", "false", "--images", "4", "--results-dir", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    assert "self-test passed" in out.stdout and "preflight: device cpu" in out.stdout


def test_entrypoint_shell(tmp_path):
    out = _entrypoint("shell", "-c", "echo inside")
    assert out.returncode == 0 and out.stdout.strip() == "inside"


def test_fetch_script_checks_out_exactly_the_commit(tmp_path):
    src = tmp_path / "upstream"
    src.mkdir()
    (src / "README.md").write_text("hrnet\n")
    _git(src, "init", "-q")
    _git(src, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    _git(src, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True).stdout.strip()
    script = os.path.join(ROOT, "scripts", "fetch-hrnet.sh")
    ok = subprocess.run(["bash", script, str(src), head, str(tmp_path / "copy")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    copied = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path / "copy", capture_output=True, text=True)
    assert copied.stdout.strip() == head
    bad = subprocess.run(["bash", script, str(src), "0" * 40, str(tmp_path / "other")], capture_output=True, text=True)
    assert bad.returncode != 0 and "cannot fetch" in bad.stderr
    again = subprocess.run(["bash", script, str(src), head, str(tmp_path / "copy")], capture_output=True, text=True)
    assert again.returncode != 0 and "exists already" in again.stderr
