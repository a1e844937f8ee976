"""Container files checked without a Docker engine: patches, the patch-and-build script, the entry point,
the Dockerfile, .dockerignore, the compose file and the image workflow (read, not run)."""
import os
import re
import stat
import subprocess
import sys

import pytest
import yaml

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


def test_patches_apply_to_the_pinned_commit_and_nms_builds(tmp_path, hrnet_src):
    dest = tmp_path / "hrnet-lib"
    env = dict(os.environ, PYTHON=sys.executable)
    out = subprocess.run(["bash", os.path.join(ROOT, "scripts", "prepare-hrnet-lib.sh"), hrnet_src, str(dest)],
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
        given = "--use-cuda true was given" in out.stderr
        assert given == ("--use-cuda" in args), f"the preflight must say what was given for {args}: {out.stderr}"


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


# --- the entry point against stubs: which commands it runs, with which arguments -------------------------

STUB = """#!/usr/bin/env bash
printf '%s\\n' "$(basename "$0") $*" >>"$STUB_LOG"
if [ "$(basename "$0")" = hrnet-quanteval ]; then
    printf 'umask %s\\n' "$(umask)" >>"$STUB_LOG"
    printf 'home %s\\n' "$HOME" >>"$STUB_LOG"
    if [ -n "${STUB_WRITE:-}" ]; then echo written >"$STUB_WRITE"; fi
    exit 0
fi
exit "${STUB_PREFLIGHT_RC:-0}"
"""


def _stubbed_entrypoint(tmp_path, *args, **env):
    """Run entrypoint.sh with `python` and `hrnet-quanteval` replaced by stubs; (result, logged command lines)."""
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("python", "hrnet-quanteval"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "stub.log"
    if log.exists():
        log.unlink()
    full_env = {key: value for key, value in os.environ.items() if not key.startswith("HRNET_QUANTEVAL_")}
    full_env.update(PATH=str(bin_dir) + os.pathsep + os.environ.get("PATH", ""), STUB_LOG=str(log), HOME=str(tmp_path))
    full_env.update(env)
    out = subprocess.run(["bash", os.path.join(ROOT, "entrypoint.sh"), *args], capture_output=True, text=True,
                         env=full_env, timeout=60)
    lines = log.read_text().splitlines() if log.exists() else []
    return out, lines


def _commands(lines):
    return [line for line in lines if line.startswith(("python ", "hrnet-quanteval "))]


@pytest.mark.parametrize("args, runs", [
    (("--help",), "hrnet-quanteval --help"),
    (("-h",), "hrnet-quanteval -h"),
    (("--version",), "hrnet-quanteval --version"),
    (("eval", "--help"), "hrnet-quanteval eval --help"),
    (("--default-param-bw", "4", "--help"), "hrnet-quanteval eval --default-param-bw 4 --help"),
    (("selftest", "--use-cuda", "true", "-h"), "hrnet-quanteval selftest --use-cuda true -h"),
    (("parity", "--version"), "hrnet-quanteval --version"),
    (("eval", "--fp32-only", "--version"), "hrnet-quanteval --version"),
], ids=lambda v: " ".join(v) if isinstance(v, tuple) else None)
def test_entrypoint_help_and_version_anywhere_skip_the_gpu_and_dataset_checks(tmp_path, args, runs):
    # a preflight would fail (no GPU) and the dataset is missing: neither may be looked at
    out, lines = _stubbed_entrypoint(tmp_path, *args, STUB_PREFLIGHT_RC="3",
                                     HRNET_QUANTEVAL_DATASET=str(tmp_path / "missing"))
    assert out.returncode == 0, out.stderr
    assert _commands(lines) == [runs], "no preflight, and the CLI sees the arguments as given"


@pytest.mark.parametrize("args, preflight", [
    ((), "python -m hrnet_quanteval.preflight --use-cuda auto --require-gpu"),
    (("--default-param-bw", "4"), "python -m hrnet_quanteval.preflight --use-cuda auto --require-gpu"),
    (("eval", "--use-cuda", "true"), "python -m hrnet_quanteval.preflight --use-cuda true"),
    (("eval", "--use-cuda=false"), "python -m hrnet_quanteval.preflight --use-cuda false"),
    (("eval", "--use-cuda", "auto"), "python -m hrnet_quanteval.preflight --use-cuda auto"),
    (("selftest",), "python -m hrnet_quanteval.preflight --use-cuda auto"),
    (("parity", "--use-cuda", "no"), "python -m hrnet_quanteval.preflight --use-cuda no"),
    (("diagnose", "--images", "8"), "python -m hrnet_quanteval.preflight --use-cuda auto"),
], ids=lambda v: " ".join(v) or "no-arguments" if isinstance(v, tuple) else None)
def test_entrypoint_tells_the_preflight_what_was_given(tmp_path, args, preflight):
    """Without --use-cuda, eval's preflight gets `auto --require-gpu`, never a `true` nobody gave."""
    dataset = tmp_path / "coco"
    (dataset / "annotations").mkdir(parents=True)
    out, lines = _stubbed_entrypoint(tmp_path, *args, HRNET_QUANTEVAL_DATASET=str(dataset))
    assert out.returncode == 0, out.stderr
    commands = _commands(lines)
    assert commands[0] == preflight and len(commands) == 2
    assert commands[1].startswith("hrnet-quanteval " + (args[0] if args and not args[0].startswith("-") else "eval"))


def test_entrypoint_stops_when_the_preflight_fails(tmp_path):
    out, lines = _stubbed_entrypoint(tmp_path, "--default-param-bw", "4", STUB_PREFLIGHT_RC="3",
                                     HRNET_QUANTEVAL_DATASET=str(tmp_path))
    assert out.returncode == 3
    assert not any(line.startswith("hrnet-quanteval") for line in lines), "no evaluation after a failed preflight"


@pytest.mark.parametrize("subcommand", ["eval", "parity"])
def test_entrypoint_explains_a_missing_or_empty_dataset_naming_coco_dir(tmp_path, subcommand):
    empty = tmp_path / "empty"
    empty.mkdir()
    for dataset, words in ((tmp_path / "missing", "does not exist"), (empty, "is empty")):
        out, lines = _stubbed_entrypoint(tmp_path, subcommand, HRNET_QUANTEVAL_DATASET=str(dataset))
        assert out.returncode == 2, out.stderr
        message = out.stderr.strip()
        assert f"{dataset} {words}" in message and "COCO_DIR" in message and "/data/coco" in message
        assert "\n" not in message, "one paragraph"
        assert not any(line.startswith("hrnet-quanteval") for line in lines)


def test_entrypoint_dataset_check_follows_the_flag_over_the_environment(tmp_path):
    good = tmp_path / "coco"
    (good / "val2017").mkdir(parents=True)
    for flag in (["--evaluation-dataset", str(good)], ["--evaluation-dataset=" + str(good)]):
        out, lines = _stubbed_entrypoint(tmp_path, "eval", *flag, HRNET_QUANTEVAL_DATASET=str(tmp_path / "missing"))
        assert out.returncode == 0, out.stderr
        assert _commands(lines)[-1] == "hrnet-quanteval eval " + " ".join(flag)
    out, _ = _stubbed_entrypoint(tmp_path, "eval", "--evaluation-dataset", str(tmp_path / "gone"),
                                 HRNET_QUANTEVAL_DATASET=str(good))
    assert out.returncode == 2 and "gone does not exist" in out.stderr
    # selftest, synth, bench and compare need no dataset
    out, _ = _stubbed_entrypoint(tmp_path, "selftest", HRNET_QUANTEVAL_DATASET=str(tmp_path / "missing"))
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("value, mode", [(None, 0o644), ("0002", 0o664), ("077", 0o600)])
def test_entrypoint_umask_gives_results_its_modes(tmp_path, value, mode):
    env = {"STUB_WRITE": str(tmp_path / "report.json")}
    if value is not None:
        env["HRNET_QUANTEVAL_UMASK"] = value
    out, lines = _stubbed_entrypoint(tmp_path, "synth", str(tmp_path / "s"), **env)
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "report.json").st_mode) == mode


def test_entrypoint_refuses_a_bad_umask(tmp_path):
    out, lines = _stubbed_entrypoint(tmp_path, "synth", "x", HRNET_QUANTEVAL_UMASK="rw-r--r--")
    assert out.returncode == 2 and "HRNET_QUANTEVAL_UMASK" in out.stderr and not lines


def test_entrypoint_gives_a_user_without_a_home_one(tmp_path):
    """compose's user: HOST_UID has no passwd entry, so its HOME is / (or nowhere), which it cannot write."""
    _, lines = _stubbed_entrypoint(tmp_path, "synth", "x", HOME=str(tmp_path / "no-such-home"))
    assert "home /tmp" in lines
    _, lines = _stubbed_entrypoint(tmp_path, "synth", "x")
    assert f"home {tmp_path}" in lines, "a writable HOME is kept"


# --- the Dockerfile, read --------------------------------------------------------------------------------

FINAL_STAGES = ("legacy", "current")
BUILD_STAGES = {"legacy": "legacy-build", "current": "current-build"}
PER_COMMIT_ARGS = ("APP_GIT_COMMIT", "APP_UID")
INSTALLS = re.compile(r"apt-get install|pip install")


def _dockerfile_instructions():
    """The Dockerfile's instructions, continuation lines joined and comment lines dropped."""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        lines = f.read().split("\n")
    instructions, pending = [], ""
    for line in lines:
        if line.strip().startswith("#") or (not pending and not line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        instructions.append(" ".join((pending + line).split()))
        pending = ""
    return instructions


def _dockerfile_stages():
    """{stage name: (resolved base image, [instructions])} and the global ARG defaults."""
    global_args, stages, current = {}, {}, None
    for instruction in _dockerfile_instructions():
        keyword, _, rest = instruction.partition(" ")
        if keyword == "FROM":
            m = re.match(r"(\S+) AS (\S+)$", rest)
            assert m, f"every stage is named: {instruction}"
            base = re.sub(r"\$\{(\w+)\}", lambda v: global_args[v.group(1)], m.group(1))
            current = m.group(2)
            stages[current] = (base, [])
        elif current is None:
            assert keyword == "ARG", instruction
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            stages[current][1].append(instruction)
    return stages, global_args


def test_final_stages_run_on_cuda_runtime_images_and_builders_on_devel():
    stages, _ = _dockerfile_stages()
    for final in FINAL_STAGES:
        base, body = stages[final]
        assert base.startswith("nvidia/cuda:") and "-runtime-" in base and "devel" not in base, f"{final}: {base}"
        build_base = stages[BUILD_STAGES[final]][0]
        assert "-devel-" in build_base, f"{BUILD_STAGES[final]} builds NMS with nvcc: {build_base}"
        assert base == build_base.replace("-devel-", "-runtime-"), "the same CUDA, cuDNN and Ubuntu in both"
        for folder in ("/opt/venv", "/opt/hrnet"):
            assert f"COPY --from={BUILD_STAGES[final]} {folder} {folder}" in body
    assert stages["legacy"][0] == "nvidia/cuda:11.1.1-cudnn8-runtime-ubuntu18.04"
    assert stages["current"][0] == "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04"


def test_per_commit_and_per_host_args_come_after_every_install():
    stages, global_args = _dockerfile_stages()
    assert not set(PER_COMMIT_ARGS) & set(global_args), "declared where used, not at the top"
    for name, (_, body) in stages.items():
        declared = [i for i, line in enumerate(body) if re.match(r"ARG (%s)\b" % "|".join(PER_COMMIT_ARGS), line)]
        if name not in FINAL_STAGES:
            assert not declared, f"{name} must not see per-commit ARGs: every layer would change with each commit"
            continue
        last_install = max(i for i, line in enumerate(body) if line.startswith("RUN") and INSTALLS.search(line))
        assert len(declared) == len(PER_COMMIT_ARGS) and min(declared) > last_install, body[last_install]
        commit_arg = next(i for i, line in enumerate(body) if line.startswith("ARG APP_GIT_COMMIT"))
        uses = [i for i, line in enumerate(body) if "${APP_GIT_COMMIT}" in line]
        assert uses and min(uses) > commit_arg, "ENV and LABEL read the ARG after it is declared"


def test_final_stages_have_no_compiler_and_check_nms_themselves():
    stages, _ = _dockerfile_stages()
    compilers = re.compile(r"\b(build-essential|gcc|g\+\+|clang|cuda-nvcc|cuda-toolkit|python3\.\d+-dev)\b")
    for final in FINAL_STAGES:
        body = stages[final][1]
        for line in body:
            if line.startswith("RUN"):
                assert not compilers.search(line), f"{final}: {line}"
        python = {"legacy": "python3.8", "current": "python3.11"}[final]
        installs = " ".join(line for line in body if "apt-get install" in line)
        assert python in installs, f"the venv from {BUILD_STAGES[final]} points at {python}"
        copied = max(i for i, line in enumerate(body) if line.startswith("COPY --from="))
        check = [i for i, line in enumerate(body) if 'python -c "import nms.cpu_nms, nms.gpu_nms"' in line]
        assert check and check[0] > copied and "PYTHONPATH=/opt/hrnet/lib" in body[check[0]]


def test_nvidia_apt_sources_go_before_every_apt_get_update():
    stages, _ = _dockerfile_stages()
    for name, (_, body) in stages.items():
        for line in body:
            if "apt-get update" in line:
                removal = line.find("rm -f /etc/apt/sources.list.d/cuda*.list /etc/apt/sources.list.d/nvidia-ml*.list")
                assert 0 <= removal < line.find("apt-get update"), f"{name}: {line}"


def test_pip_uses_a_cache_mount_and_torch_has_its_own_layer():
    stages, _ = _dockerfile_stages()
    for name, (_, body) in stages.items():
        for line in body:
            if "pip install" in line:
                assert line.startswith("RUN --mount=type=cache,target=/root/.cache/pip "), f"{name}: {line}"
                assert "--no-cache-dir" not in line, f"{name}: the cache mount replaces --no-cache-dir"
    for build in BUILD_STAGES.values():
        body = stages[build][1]
        torch = [line for line in body if re.search(r'"torch==\$\{torch\}', line)]
        assert len(torch) == 1 and " -r " not in torch[0], "torch and torchvision alone in their layer"
        pins = body.index(next(line for line in body if line.startswith("COPY --from=") and "torch-pins" in line))
        assert pins < body.index(torch[0]) < body.index(next(line for line in body if "pip install -r" in line))


def test_final_stages_carry_oci_labels():
    from hrnet_quanteval import __version__

    stages, global_args = _dockerfile_stages()
    for final in FINAL_STAGES:
        body = stages[final][1]
        label = next(line for line in body if line.startswith("LABEL "))
        for key, value in (("title", None), ("source", "${APP_SOURCE}"), ("revision", "${APP_GIT_COMMIT}"),
                           ("version", "${APP_VERSION}"), ("base.name", "${%s_RUNTIME_BASE}" % final.upper())):
            assert f"org.opencontainers.image.{key}=" in label, key
            if value:
                assert f'org.opencontainers.image.{key}="{value}"' in label, key
        assert f"ARG APP_VERSION={__version__}" in body, "the version label follows the package's version"
        assert body.index(label) > max(i for i, line in enumerate(body) if line.startswith("RUN"))


def _docker_ignored(patterns, path):
    """Whether a context path is excluded by .dockerignore patterns (Go filepath.Match, plus **; no ! rules)."""
    def regex(pattern):
        out = re.escape(pattern.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        return re.compile(out.replace(r"\*", "[^/]*").replace(r"\?", "[^/]") + "$")

    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(regex(p).match(prefix) for p in patterns for prefix in prefixes)


def test_dockerignore_keeps_environments_data_and_caches_out_of_the_context():
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        patterns = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)
    for path in (".venv", ".venv-legacy/bin/python", ".venv-lint", "build/hrnet-lib", "results/run/report.json",
                 "data/coco/images/val2017/1.jpg", "app/hrnet_quanteval.egg-info/PKG-INFO",
                 "app/hrnet_quanteval/__pycache__/cli.cpython-311.pyc", "tests/__pycache__/x.pyc", ".git/HEAD",
                 ".pytest_cache/v", ".ruff_cache/x", ".env"):
        assert _docker_ignored(patterns, path), f"{path} would be sent to the builder"
    for path in ("app/pyproject.toml", "app/hrnet_quanteval/cli.py", "app/hrnet_quanteval/artifacts.json",
                 "requirements/legacy.txt", "patches/0001-x.patch", "scripts/prepare-hrnet-lib.sh", "entrypoint.sh"):
        assert not _docker_ignored(patterns, path), f"the build needs {path}"


# --- the compose file and the workflow, read -------------------------------------------------------------

def test_compose_services_have_init_shm_and_the_host_user():
    with open(os.path.join(ROOT, "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    services = compose["services"]
    assert set(services) == {"eval", "eval-current", "selftest", "selftest-current"}
    for name, service in services.items():
        assert service.get("init") is True, f"{name}: an init process forwards signals and reaps loader workers"
        assert service.get("shm_size"), f"{name} runs the data loader: /dev/shm must be larger than 64 MB"
        assert service.get("user") == "${HOST_UID:-1000}:${HOST_GID:-1000}", name
        assert "HRNET_QUANTEVAL_UMASK" in service.get("environment", {}), name
        assert "./results:/results" in service["volumes"], f"{name}: results reach the host"
        assert service["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for name in ("eval", "eval-current"):
        assert "${COCO_DIR:-./data/coco}:/data/coco:ro" in services[name]["volumes"]
        assert services[name]["build"]["target"] == services[name]["image"].split(":")[1]


def test_workflow_pins_actions_by_commit_and_checks_the_quantized_rows():
    path = os.path.join(ROOT, ".github", "workflows", "image.yml")
    with open(path) as f:
        text = f.read()
    uses = re.findall(r"uses:\s*(\S+)(.*)", text)
    assert uses
    for ref, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), f"{ref} is not pinned by commit"
        assert re.match(r"\s+# v\d+\.\d+\.\d+$", comment), f"{ref} needs its version in a comment"
    workflow = yaml.safe_load(text)
    assert "packages" not in workflow.get("permissions", {})
    for name, job in workflow["jobs"].items():
        steps = job["steps"]
        pushes = any(step.get("with", {}).get("push") is True for step in steps)
        assert (job.get("permissions", {}).get("packages") == "write") == pushes, f"{name}: packages: write only where pushing"
        builds = [step for step in steps if "build-push-action" in step.get("uses", "")]
        for step in builds:
            assert step["with"]["cache-from"] == "type=gha,scope=${{ matrix.stack }}"
    checks = " ".join(step.get("run", "") for step in workflow["jobs"]["image"]["steps"])
    assert "report.json" in checks and '"w8a8"' in checks and '"w4a8"' in checks
