"""Artifact downloads against a real HTTP server on 127.0.0.1 that the tests start."""
import hashlib
import http.server
import os
import threading
import time

import pytest

from hrnet_quanteval.artifacts import ArtifactStore
from hrnet_quanteval.errors import EnvironmentProblem

PAYLOAD = os.urandom(300_000)
NAME = "hrnet_posenet_W8A8.encodings"


class Handler(http.server.BaseHTTPRequestHandler):
    """Paths: /ok/, /cut/ (first response dies half way), /404/, /stall/ (headers, then silence), /other/,
    /slow/ (the body in ten slices over about a second), /badrange/ (a cut first response, then 206 answers
    that always start at byte 0 whatever was asked)."""

    cut_done = set()
    requests = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        Handler.requests.append((self.path, self.headers.get("Range")))
        mode = self.path.split("/")[1]
        if mode == "404":
            self.send_error(404, "Not Found")
            return
        body = os.urandom(len(PAYLOAD)) if mode == "other" else PAYLOAD
        start = 0
        rng = self.headers.get("Range")
        if rng and mode == "badrange":
            self.send_response(206)  # claims a partial answer, but sends everything from 0
            self.send_header("Content-Range", f"bytes 0-{len(body) - 1}/{len(body)}")
        elif rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if mode == "stall":
            time.sleep(2.0)
            return
        if mode == "slow":
            step = len(body) // 10 + 1
            for offset in range(start, len(body), step):
                self.wfile.write(body[offset: offset + step])
                self.wfile.flush()
                time.sleep(0.1)
            return
        if mode in ("cut", "badrange") and self.path not in Handler.cut_done:
            Handler.cut_done.add(self.path)
            self.wfile.write(body[start: start + 100_000])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body[start:])


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _store(tmp_path, base, **overrides):
    options = dict(cache_dir=str(tmp_path / "cache"), base_url=base, files={}, attempts=3, backoff=0.01,
                   connect_timeout=2.0, read_timeout=0.5, quiet=True)
    options.update(overrides)
    return ArtifactStore(**options)


def test_normal_download_lands_under_its_release_name(server, tmp_path):
    store = _store(tmp_path, f"{server}/ok")
    got = store.fetch(NAME)
    assert got.path == str(tmp_path / "cache" / NAME) and got.downloaded
    assert open(got.path, "rb").read() == PAYLOAD
    assert got.sha256 == hashlib.sha256(PAYLOAD).hexdigest() and not got.pinned
    assert any("no pinned sha256" in n and got.sha256 in n for n in store.notices)
    assert not os.path.exists(got.path + ".part")
    again = store.fetch(NAME)  # cached: no second download
    assert not again.downloaded


def test_cut_response_leaves_no_final_file_and_a_retry_resumes(server, tmp_path):
    Handler.requests.clear()
    store = _store(tmp_path, f"{server}/cut", attempts=1)
    with pytest.raises(EnvironmentProblem, match="cannot download"):
        store.fetch(NAME)
    final = tmp_path / "cache" / NAME
    assert not final.exists() and (tmp_path / "cache" / (NAME + ".part")).stat().st_size == 100_000
    store = _store(tmp_path, f"{server}/cut", attempts=2)
    assert open(store.fetch(NAME).path, "rb").read() == PAYLOAD
    assert Handler.requests[-1] == (f"/cut/{NAME}", "bytes=100000-")  # resumed, not restarted


def test_404_is_not_retried_and_names_the_url(server, tmp_path):
    Handler.requests.clear()
    store = _store(tmp_path, f"{server}/404")
    with pytest.raises(EnvironmentProblem) as error:
        store.fetch(NAME)
    assert f"{server}/404/{NAME}" in str(error.value) and "HTTP 404" in str(error.value)
    assert len(Handler.requests) == 1


def test_stalled_server_times_out_retries_then_fails(server, tmp_path):
    Handler.requests.clear()
    store = _store(tmp_path, f"{server}/stall", attempts=2)
    started = time.monotonic()
    with pytest.raises(EnvironmentProblem, match="stalled"):
        store.fetch(NAME)
    assert len(Handler.requests) == 2 and time.monotonic() - started < 10
    assert not (tmp_path / "cache" / NAME).exists()


def test_pinned_hash_mismatch_moves_the_file_aside(server, tmp_path):
    pinned = {NAME: {"sha256": hashlib.sha256(PAYLOAD).hexdigest(), "size": len(PAYLOAD)}}
    store = _store(tmp_path, f"{server}/other", files=pinned)
    with pytest.raises(EnvironmentProblem, match="does not match the pinned manifest"):
        store.fetch(NAME)
    cache = tmp_path / "cache"
    assert not (cache / NAME).exists()
    aside = [p for p in os.listdir(cache) if p.startswith(NAME + ".bad-")]
    assert len(aside) == 1 and (cache / aside[0]).stat().st_size == len(PAYLOAD)
    good = _store(tmp_path, f"{server}/ok", files=pinned).fetch(NAME)  # a fresh download passes
    assert good.pinned and good.sha256 == pinned[NAME]["sha256"]


def test_offline_lists_every_missing_file(tmp_path):
    store = _store(tmp_path, "http://127.0.0.1:9/unused", offline=True)
    names = ["hrnet_posenet_FP32.pth", "hrnet_posenet_W4A8.pth", "hrnet_posenet_W4A8.encodings"]
    with pytest.raises(EnvironmentProblem) as error:
        store.fetch_all(names)
    text = str(error.value)
    for name in names:
        assert f"http://127.0.0.1:9/unused/{name}" in text and str(tmp_path / "cache" / name) in text


def test_eval_downloads_zoo_files_through_the_mirror_flag(server, tmp_path, synth_root):
    """--offline fails listing files; with --artifacts-url the files come from the mirror (here: not HRNet, refused)."""
    from conftest import run_cli

    args = ["eval", "--evaluation-dataset", synth_root, "--use-cuda", "false", "--fp32-only",
            "--artifacts-dir", str(tmp_path / "c"), "--results-dir", str(tmp_path / "r")]
    offline = run_cli(*args, "--offline")
    assert offline.returncode == 3 and "hrnet_posenet_FP32.pth" in offline.stderr
    online = run_cli(*args, "--artifacts-url", f"{server}/ok")
    assert os.path.isfile(tmp_path / "c" / "hrnet_posenet_FP32.pth")  # downloaded under its release name
    assert online.returncode == 2 and "cannot be read" in online.stderr  # random bytes are no checkpoint


@pytest.mark.aimet
def test_eval_w4a8_offline_lists_the_three_zoo_files(tmp_path, synth_root):
    from conftest import run_cli

    out = run_cli("eval", "--evaluation-dataset", synth_root, "--use-cuda", "false", "--default-param-bw", "4",
                  "--offline", "--artifacts-dir", str(tmp_path / "c"), "--results-dir", str(tmp_path / "r"))
    assert out.returncode == 3
    for name in ("hrnet_posenet_FP32.pth", "hrnet_posenet_W4A8.pth", "hrnet_posenet_W4A8.encodings"):
        assert name in out.stderr
    assert "releases/download/hrnet-posenet/hrnet_posenet_W4A8.pth" in out.stderr
    assert not (tmp_path / "r").exists() or not os.listdir(tmp_path / "r")  # failed before any run folder


def test_two_processes_fetching_one_file_into_one_cache_share_one_complete_download(server, tmp_path):
    """Two `docker compose run` on the artifacts volume: one downloads, the other waits; both use the whole file."""
    import subprocess
    import sys

    cache = tmp_path / "shared-cache"
    code = (
        "import sys\n"
        "from hrnet_quanteval.artifacts import ArtifactStore\n"
        "store = ArtifactStore(cache_dir=sys.argv[1], base_url=sys.argv[2], files={}, quiet=False)\n"
        "got = store.fetch(sys.argv[3])\n"
        "print(got.sha256, got.size, got.downloaded)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(cache), f"{server}/slow", NAME],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    want = hashlib.sha256(PAYLOAD).hexdigest()
    lines = sorted(out.split() for out, _ in outs)
    assert [line[:2] for line in lines] == [[want, str(len(PAYLOAD))]] * 2
    assert sorted(line[2] for line in lines) == ["False", "True"]  # one downloaded, the other used its file
    assert any("another process is fetching it" in err for _, err in outs)
    assert (cache / NAME).read_bytes() == PAYLOAD and not (cache / (NAME + ".part")).exists()


def test_a_206_for_another_range_is_not_appended(server, tmp_path):
    """The first response is cut; the resume is answered with a 206 from byte 0: the part file starts over."""
    store = _store(tmp_path, f"{server}/badrange")
    fetched = store.fetch(NAME)
    assert (tmp_path / "cache" / NAME).read_bytes() == PAYLOAD and fetched.size == len(PAYLOAD)


def test_a_cached_file_that_no_longer_matches_its_download_is_moved_aside(server, tmp_path):
    store = _store(tmp_path, f"{server}/ok")
    store.fetch(NAME)
    with open(tmp_path / "cache" / NAME, "ab") as f:
        f.write(b"interleaved bytes of another writer")
    with pytest.raises(EnvironmentProblem, match="does not match its download") as raised:
        _store(tmp_path, f"{server}/ok").fetch(NAME)
    assert "moved to" in str(raised.value) and not (tmp_path / "cache" / NAME).exists()
    assert any(name.startswith(NAME + ".bad-") for name in os.listdir(tmp_path / "cache"))
    assert _store(tmp_path, f"{server}/ok").fetch(NAME).sha256 == hashlib.sha256(PAYLOAD).hexdigest()


@pytest.mark.parametrize("url, words", [
    ("not a url", "is not a URL"), ("ftp://mirror.example/x", "scheme 'ftp'"), ("https://", "no host"),
    ("http://host:port/x", "is not a URL"), ("   ", "is not a URL"), ("mirror.example.org/x", "scheme ''"),
])
def test_malformed_mirror_urls_are_usage_errors(url, words, tmp_path, monkeypatch, capsys, synth_root):
    from hrnet_quanteval.cli import main

    base = ["eval", "--evaluation-dataset", synth_root, "--use-cuda", "false", "--fp32-only", "--quiet",
            "--artifacts-dir", str(tmp_path / "cache"), "--results-dir", str(tmp_path / "r")]
    assert main(base + ["--artifacts-url", url]) == 2
    err = capsys.readouterr().err
    assert "--artifacts-url" in err and words in err and "Traceback" not in err
    monkeypatch.setenv("HRNET_QUANTEVAL_ARTIFACTS_URL", url)
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "HRNET_QUANTEVAL_ARTIFACTS_URL" in err and words in err
    assert not (tmp_path / "r").exists() or not os.listdir(tmp_path / "r")
