"""Run folders: one per run, never reused, with a status file that says whether the run finished."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import signal
import socket
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from .errors import EnvironmentProblem, InputError, QuantEvalError, Terminated, failed_stage, remember_stage, save_traceback
from .files import check_creatable_dir, user_path

STATUS_FILE = "status.json"


def write_atomic(path: str, text: str) -> None:
    """Write a file so that it exists either complete or not at all (temporary name, fsync, rename).

    A full disk or another write error leaves no partial file and no temporary one, and names the file.
    """
    tmp = None
    try:
        fd, tmp = _create_temporary(path)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        _remove_quietly(tmp)
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        raise EnvironmentProblem(
            f"{'the disk is full' if full else 'cannot write'} while writing {path} ({error.strerror or error})",
            "free space (or fix permissions) on that filesystem and run again; files written before are intact",
        ) from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _create_temporary(path: str) -> Tuple[int, str]:
    """A new hidden file beside ``path``, created with mode 0666 less the umask (mkstemp would give 0600).

    Results are meant to be read by whoever ran the container, whatever uid it ran as: the umask decides.
    """
    directory = os.path.dirname(os.path.abspath(path))
    for _ in range(100):
        candidate = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), candidate
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", directory)


def _remove_quietly(path: Optional[str]) -> None:
    if path and os.path.exists(path):
        try:
            os.remove(path)
        except OSError:
            pass


def check_writable(results_dir: str) -> None:
    """Fail before any compute when the results folder cannot be created or written."""
    check_creatable_dir(
        results_dir, "results folder",
        "pass --results-dir with a folder you can write to (in Docker: check the ./results bind mount)",
    )


def _check_run_id(run_id: str) -> None:
    """A run id is a plain folder name: not empty, no separator, no NUL, not '.' or '..'."""
    if not run_id or os.sep in run_id or (os.altsep and os.altsep in run_id) or "\0" in run_id or run_id in (".", ".."):
        raise InputError(f"run id {run_id!r} is not a folder name", "pass --run-id with a plain name such as w4a8-try2")


def create_run_dir(results_dir: str, run_id: Optional[str] = None, label: str = "") -> Tuple[str, str]:
    """Make ``<results_dir>/<run_id>`` with an exclusive mkdir, so two runs can never share a folder.

    Without ``run_id`` the id is a timestamp plus ``label``, suffixed -2, -3... on collision. An explicit
    ``run_id`` that exists already is an error: earlier results are never overwritten.
    """
    check_writable(results_dir)
    if run_id is not None:
        _check_run_id(run_id)
        path = os.path.join(results_dir, run_id)
        try:
            with user_path("run folder", path, "pass another --run-id", action="create"):
                os.mkdir(path)
        except InputError as error:
            if "exists already" in error.problem:
                raise InputError(
                    f"run folder {path} exists already", "pass another --run-id, or leave it out for a fresh one"
                ) from None
            raise
        mark(path, "running")
        return run_id, path
    base = time.strftime("%Y%m%d-%H%M%S") + (f"-{label}" if label else "")
    for attempt in range(1, 1000):
        candidate = base if attempt == 1 else f"{base}-{attempt}"
        path = os.path.join(results_dir, candidate)
        try:
            with user_path("run folder", path, "pass --results-dir with a folder you can write to", action="create"):
                os.mkdir(path)
        except InputError as error:
            if "exists already" in error.problem:
                continue
            raise
        mark(path, "running")
        return candidate, path
    raise InputError(f"too many runs named {base} in {results_dir}", "pass --run-id")


def read_status(run_dir: str) -> Dict[str, object]:
    """``status.json`` of a run folder, or {} when there is none or it cannot be read."""
    try:
        with open(os.path.join(run_dir, STATUS_FILE)) as f:
            content = json.load(f)
        return content if isinstance(content, dict) else {}
    except (OSError, ValueError):
        return {}


def mark(run_dir: str, status: str, detail: str = "") -> None:
    """Record the run's state: running, complete, failed or interrupted (``status.json``).

    Process id, host and start time are recorded too, so that a run killed without a chance to write
    (SIGKILL, power loss) can be told from one still running: see ``describe_status``.
    """
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    started = read_status(run_dir).get("started") or now
    record = {"status": status, "pid": os.getpid(), "host": socket.gethostname(), "started": started, "time": now}
    if detail:
        record["detail"] = detail
    write_atomic(os.path.join(run_dir, STATUS_FILE), json.dumps(record) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def describe_status(run_dir: str) -> str:
    """How a run folder without report.json ended, in words: running, did not finish, failed, interrupted."""
    status = read_status(run_dir)
    if not status:
        return "it has no status.json: not a run folder, or one from before the run started"
    state = status.get("status")
    where = f"process {status.get('pid')} on {status.get('host', 'an unknown host')}, started {status.get('started', '?')}"
    if state == "running":
        pid = status.get("pid")
        if status.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
            return f"the run did not finish: {where} is gone without marking it (killed, or the machine stopped)"
        if status.get("host") != socket.gethostname():
            return f"the run is still running or did not finish ({where}; another host, so this cannot tell)"
        return f"the run is still running ({where})"
    detail = f" ({status['detail']})" if status.get("detail") else ""
    return f"the run {state}{detail}"


@contextlib.contextmanager
def signals_deferred() -> Iterator[List[int]]:
    """Hold SIGINT and SIGTERM that arrive inside the block until it ends (main thread only).

    Used around the final writes (report.md, report.json, status complete): the folder is then either
    complete or untouched by them, and the exit code says which.
    """
    received: List[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def hold(signum, frame) -> None:
        received.append(signum)

    for sig in previous:
        signal.signal(sig, hold)
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def in_run_folder(results_dir: str, run_id: Optional[str], label: str, work: Callable[[str, str], int]) -> int:
    """Create the run folder, run ``work(run_id, run_dir)``, and mark the folder with how it ended.

    An interrupted or failed run keeps whatever it wrote but never gets a report.json; status.json says why.
    An unexpected exception (a bug) also leaves its traceback in ``traceback.txt``.
    """
    run_id, run_dir = create_run_dir(results_dir, run_id, label)
    try:
        code = work(run_id, run_dir)
    except KeyboardInterrupt as interrupt:
        _mark_quietly(run_dir, "interrupted", "SIGINT")
        interrupt.hrnet_run_dir = run_dir  # type: ignore[attr-defined]
        raise
    except Terminated as terminated:
        _mark_quietly(run_dir, "interrupted", "SIGTERM")
        terminated.hrnet_run_dir = run_dir  # type: ignore[attr-defined]
        raise
    except QuantEvalError as error:
        _mark_quietly(run_dir, "failed", str(error))
        raise
    except Exception as error:  # a bug: keep the details with the run
        remember_stage(error)
        _mark_quietly(run_dir, "failed", f"internal error during {failed_stage(error)}: {type(error).__name__}: {error}")
        try:
            error.hrnet_traceback = save_traceback(error, run_dir)  # type: ignore[attr-defined]
        except (OSError, AttributeError):
            pass
        raise
    if read_status(run_dir).get("status") != "complete":
        mark(run_dir, "complete")
    return code


def _mark_quietly(run_dir: str, status: str, detail: str) -> None:
    try:
        mark(run_dir, status, detail)
    except (OSError, EnvironmentProblem):  # a full disk must not hide the error that stopped the run
        pass
