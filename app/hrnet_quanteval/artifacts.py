"""The zoo's release files: a cache folder, downloads that never leave a file looking complete, integrity.

Files keep their release names in the cache. A download goes to ``<name>.part`` and is renamed only once
every byte arrived; an interrupted one resumes from the ``.part`` file where the server honours ranges.
The manifest (``artifacts.json``) pins URL, size and sha256; where size or hash are not pinned yet the
sha256 seen is recorded in the report and a one-line notice says so. A file whose pinned hash does not
match is moved aside (never deleted, never used) and the run stops.

Several processes may share one cache (two ``docker compose run`` on the ``artifacts`` volume): each file is
fetched under an OS lock of its own, so one process downloads while the others wait and then use the same
complete file. What a download saw (size, sha256, URL) is kept beside the file (``<name>.json``) and a
cached file is checked against it before use.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from .errors import EnvironmentProblem, InputError
from .files import check_listable_dir, check_readable_file, locked, sha256_file, user_path
from .progress import Progress

MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts.json")
CACHE_ENV = "HRNET_QUANTEVAL_ARTIFACTS"
URL_ENV = "HRNET_QUANTEVAL_ARTIFACTS_URL"
USER_AGENT = "hrnet-quanteval"
CHUNK = 1 << 16


def fp32_name() -> str:
    return "hrnet_posenet_FP32.pth"


def quantized_names(param_bw: int, output_bw: int) -> List[str]:
    """The zoo's checkpoint and encodings for a bitwidth pair (only W8A8 and W4A8 exist)."""
    prefix = f"hrnet_posenet_W{param_bw}A{output_bw}"
    return [f"{prefix}.pth", f"{prefix}.encodings"]


def default_cache_dir() -> str:
    """``$HRNET_QUANTEVAL_ARTIFACTS`` (``/cache`` in the images), else the user's cache folder."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hrnet-quanteval")


def load_manifest(path: str = MANIFEST) -> Dict[str, object]:
    with open(path) as f:
        return json.load(f)


@dataclass
class Fetched:
    """One artifact as the run uses it."""

    name: str
    path: str
    url: str
    sha256: str
    size: int
    pinned: bool
    downloaded: bool

    def record(self) -> Dict[str, object]:
        return {"name": self.name, "path": self.path, "url": self.url, "sha256": self.sha256, "size": self.size,
                "hash_pinned": self.pinned, "downloaded": self.downloaded}


class DownloadError(Exception):
    """A download attempt failed; ``retry`` says whether another attempt may succeed."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass
class ArtifactStore:
    cache_dir: str
    base_url: str
    offline: bool = False
    files: Dict[str, Dict[str, object]] = field(default_factory=dict)
    connect_timeout: float = 20.0
    read_timeout: float = 60.0
    attempts: int = 4
    backoff: float = 2.0
    quiet: bool = False
    notices: List[str] = field(default_factory=list)
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def from_options(
        cls, cache_dir: Optional[str] = None, base_url: Optional[str] = None, offline: bool = False, quiet: bool = False
    ) -> "ArtifactStore":
        manifest = load_manifest()
        if base_url is not None:
            url = check_base_url(base_url, "--artifacts-url")
        elif os.environ.get(URL_ENV):
            url = check_base_url(os.environ[URL_ENV], URL_ENV)
        else:
            url = str(manifest["base_url"])
        folder = cache_dir or default_cache_dir()
        if os.path.lexists(folder):
            check_listable_dir(folder, "artifacts folder", "pass --artifacts-dir with a folder you can read and write")
        return cls(
            cache_dir=folder, base_url=url.rstrip("/"), offline=offline,
            files=dict(manifest["files"]), quiet=quiet,  # type: ignore[arg-type]
        )

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def path(self, name: str) -> str:
        return os.path.join(self.cache_dir, name)

    def fetch_all(self, names: List[str]) -> Dict[str, Fetched]:
        """Every named file, verified; offline, all missing ones are listed in one error."""
        missing = [n for n in names if not os.path.isfile(self.path(n))]
        if missing and self.offline:
            lines = "; ".join(f"{self.url(n)} -> {self.path(n)}" for n in missing)
            raise EnvironmentProblem(
                f"--offline and {len(missing)} artifact(s) are not in the cache: {lines}",
                "download them to those paths (or pass --artifacts-dir), or drop --offline",
            )
        return {n: self.fetch(n) for n in names}

    def fetch(self, name: str) -> Fetched:
        """The file, complete and checked, downloading it first when the cache lacks it (one process at a time)."""
        target = self.path(name)
        if self.offline:
            if not os.path.isfile(target):
                raise EnvironmentProblem(
                    f"--offline and artifact {name} is not in the cache ({self.url(name)} -> {target})",
                    "download it to that path, or drop --offline",
                )
            return self._verify(name, downloaded=False)
        fix = "pass --artifacts-dir with a folder you can write to (in Docker: the artifacts volume)"
        with user_path("artifacts folder", self.cache_dir, fix, action="write to"):
            os.makedirs(self.cache_dir, exist_ok=True)
            with locked(target + ".lock", on_wait=lambda: self._say(f"{name}: another process is fetching it; waiting")):
                downloaded = False
                if not os.path.isfile(target):
                    self._download(name)
                    downloaded = True
                return self._verify(name, downloaded)

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr)

    def _verify(self, name: str, downloaded: bool) -> Fetched:
        """Check the cached file against every size and hash known for it: the manifest's pins, and what its
        download saw (``<name>.json``). A mismatch moves the file aside, never uses it."""
        target = self.path(name)
        pinned = self.files.get(name, {})
        seen = _read_sidecar(target)
        size = os.path.getsize(target)
        digest = sha256_file(target)
        expected = [("the pinned manifest", pinned.get("sha256"), pinned.get("size"))]
        if seen and not downloaded:
            expected.append((f"its download ({seen.get('url')})", seen.get("sha256"), seen.get("size")))
        for what, want_hash, want_size in expected:
            if (want_hash and digest != want_hash) or (want_size is not None and size != want_size):
                aside = f"{target}.bad-{time.strftime('%Y%m%d-%H%M%S')}"
                os.replace(target, aside)
                raise EnvironmentProblem(
                    f"artifact {name} does not match {what} (sha256 {digest}, {size} bytes; "
                    f"expected {want_hash}, {want_size} bytes); it was moved to {aside}",
                    f"run again to download it afresh from {self.url(name)}, or check the mirror behind --artifacts-url",
                )
        if downloaded or not seen:
            _write_sidecar(target, {"size": size, "sha256": digest, "url": self.url(name)})
        want_hash = pinned.get("sha256")
        if not want_hash:
            self.notices.append(f"notice: {name} has no pinned sha256; this run saw {digest} (recorded in report.json)")
        return Fetched(name, target, self.url(name), digest, size, bool(want_hash), downloaded)

    def _download(self, name: str) -> None:
        url = self.url(name)
        error: Optional[DownloadError] = None
        for attempt in range(1, self.attempts + 1):
            try:
                self._download_once(name, url)
                return
            except DownloadError as failure:
                error = failure
                if not failure.retry or attempt == self.attempts:
                    break
                wait = self.backoff * 2 ** (attempt - 1)
                if not self.quiet:
                    print(f"{name}: {failure}; retrying in {wait:.0f} s ({attempt}/{self.attempts})", file=sys.stderr)
                self.sleep(wait)
        raise EnvironmentProblem(
            f"cannot download {url}: {error}",
            "check the network (or a proxy), pass --artifacts-url for a mirror, or put the file at "
            f"{self.path(name)} and use --offline",
        )

    def _download_once(self, name: str, url: str) -> None:
        part = self.path(name) + ".part"
        have = os.path.getsize(part) if os.path.exists(part) else 0
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = urllib.request.urlopen(request, timeout=self.connect_timeout)
        except urllib.error.HTTPError as failure:
            if failure.code == 416 and have:  # range not satisfiable: the part file is complete or bad
                os.remove(part)
                raise DownloadError("server refused to resume; starting over", retry=True) from None
            transient = failure.code in (408, 429) or failure.code >= 500
            raise DownloadError(f"HTTP {failure.code} {failure.reason}", retry=transient) from None
        except (urllib.error.URLError, socket.timeout, OSError) as failure:
            reason = getattr(failure, "reason", failure)
            raise DownloadError(f"connection failed ({reason})", retry=True) from None
        with response:
            resumed = response.status == 206
            if resumed and _range_start(response.headers.get("Content-Range")) != have:
                # a 206 for another range than the one asked for: its bytes do not continue the part file
                os.remove(part)
                raise DownloadError(
                    f"server answered bytes={have}- with Content-Range {response.headers.get('Content-Range')!r}; "
                    "starting over", retry=True,
                )
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            _set_read_timeout(response, self.read_timeout)
            progress = Progress(total or 0, f"download {name}", quiet=self.quiet or total is None)
            progress.update(have)
            with open(part, "ab" if resumed else "wb") as out:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (socket.timeout, OSError, http.client.HTTPException) as failure:
                        raise DownloadError(f"read stalled or failed after {have} bytes ({failure})", retry=True) from None
                    if not block:
                        break
                    out.write(block)
                    have += len(block)
                    progress.update(len(block))
            progress.close()
        if total is not None and have != total:
            raise DownloadError(f"connection closed after {have} of {total} bytes", retry=True)
        os.replace(part, self.path(name))


def check_base_url(url: str, origin: str) -> str:
    """A mirror's base URL, parsed before any use: http(s) with a host, or file: with a path."""
    text = url.strip()
    fix = f"give {origin} an address like https://mirror.example.org/hrnet-posenet (files keep their release names)"
    if not text or any(c.isspace() or ord(c) < 32 for c in text):
        raise InputError(f"{origin} {url!r} is not a URL (empty, or it holds spaces or control characters)", fix)
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as error:
        raise InputError(f"{origin} {url!r} is not a URL ({error})", fix) from None
    if parts.scheme in ("http", "https") and parts.hostname:
        return text
    if parts.scheme == "file" and parts.path:
        return text
    why = f"scheme {parts.scheme!r} is not http, https or file" if parts.scheme not in ("http", "https", "file") else "no host"
    raise InputError(f"{origin} {url!r} is not a URL this tool can fetch from ({why})", fix)


def _range_start(content_range: Optional[str]) -> Optional[int]:
    """The first byte of a ``Content-Range: bytes START-END/TOTAL`` header, or None."""
    if not content_range or not content_range.startswith("bytes "):
        return None
    start = content_range[6:].split("-", 1)[0].strip()
    return int(start) if start.isdigit() else None


def _read_sidecar(target: str) -> Dict[str, object]:
    try:
        with open(target + ".json") as f:
            content = json.load(f)
        return content if isinstance(content, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_sidecar(target: str, record: Dict[str, object]) -> None:
    try:
        with open(target + ".json", "w") as f:
            json.dump(record, f)
    except OSError:  # best effort: the file itself is complete and verified
        pass


def _set_read_timeout(response, seconds: float) -> None:
    """urlopen's timeout covers the connection; reads get their own (urllib has no separate knob)."""
    sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(seconds)


@dataclass
class Sources:
    """Which files a run evaluates, and how the quantized model is made."""

    fp32: Optional[str] = None
    quantized: Optional[str] = None  # path (a): wrap this checkpoint as it is
    encodings: Optional[str] = None
    artifacts: Dict[str, object] = field(default_factory=dict)
    notices: Sequence[str] = ()


def resolve_sources(args, quantize: bool) -> Sources:
    """Local files where given, the zoo's release files (cached, downloaded if needed) for the rest.

    With ``--fp32-checkpoint`` and no ``--quantized-checkpoint`` the FP32 model itself is folded and
    quantized (path b, weight encodings from ``--encodings`` or from the weights). Otherwise the quantized
    checkpoint (``--quantized-checkpoint`` or the zoo's) is wrapped as it is with frozen weight encodings
    (``--encodings`` or the zoo's): the zoo's path (a).
    """
    own_fp32 = args.fp32_checkpoint is not None
    path_a = quantize and (args.quantized_checkpoint is not None or not own_fp32)
    need_fp32 = not args.skip_fp32 or (quantize and not path_a)
    wanted: Dict[str, str] = {}  # role -> release name
    if need_fp32 and not own_fp32:
        wanted["fp32_checkpoint"] = fp32_name()
    if path_a:
        if args.quantized_checkpoint is None or args.encodings is None:
            if (args.default_param_bw, args.default_output_bw) not in ((8, 8), (4, 8)):
                raise InputError(
                    f"the zoo publishes W8A8 and W4A8 only, not W{args.default_param_bw}A{args.default_output_bw}",
                    "pass --fp32-checkpoint to fold and quantize an FP32 model yourself, or use --default-param-bw 8 or 4",
                )
            checkpoint, encodings = quantized_names(args.default_param_bw, args.default_output_bw)
            if args.quantized_checkpoint is None:
                wanted["quantized_checkpoint"] = checkpoint
            if args.encodings is None:
                wanted["encodings"] = encodings
    sources = Sources()
    local = {"fp32_checkpoint": args.fp32_checkpoint if need_fp32 else None,
             "quantized_checkpoint": args.quantized_checkpoint if path_a else None,
             "encodings": args.encodings if quantize else None}
    for role, path in local.items():
        if path is not None:
            flag = "--" + role.replace("_", "-")
            check_readable_file(path, role.replace("_", " "), f"pass {flag} with a file you can read")
            sources.artifacts[role] = {"path": path, "sha256": sha256_file(path), "source": "local file"}
    if wanted:
        store = ArtifactStore.from_options(args.artifacts_dir, args.artifacts_url, args.offline, args.quiet)
        fetched = store.fetch_all(list(wanted.values()))
        for role, name in wanted.items():
            sources.artifacts[role] = dict(fetched[name].record(), source="zoo release")
            local[role] = fetched[name].path
        sources.notices = list(store.notices)
    sources.fp32, sources.quantized, sources.encodings = local["fp32_checkpoint"], local["quantized_checkpoint"], local["encodings"]
    return sources
