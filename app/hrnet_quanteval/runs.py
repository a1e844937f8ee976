"""Run folders: one per run, never reused, with a status file that says whether the run finished."""
from __future__ import annotations

import errno
import json
import os
import tempfile
import time
from typing import Callable, Optional, Tuple

from .errors import EnvironmentProblem, InputError, Terminated

STATUS_FILE = "status.json"


def write_atomic(path: str, text: str) -> None:
    """Write a file so that it exists either complete or not at all (temporary name, fsync, rename).

    A full disk or another write error leaves no partial file and no temporary one, and names the file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
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


def _remove_quietly(path: Optional[str]) -> None:
    if path and os.path.exists(path):
        try:
            os.remove(path)
        except OSError:
            pass


def check_writable(results_dir: str) -> None:
    """Fail before any compute when the results folder cannot be created or written."""
    try:
        os.makedirs(results_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=results_dir)
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        raise InputError(
            f"results folder {results_dir} is not writable ({error.strerror or error})",
            "pass --results-dir with a folder you can write to (in Docker: check the ./results bind mount)",
        ) from None


def create_run_dir(results_dir: str, run_id: Optional[str] = None, label: str = "") -> Tuple[str, str]:
    """Make ``<results_dir>/<run_id>`` with an exclusive mkdir, so two runs can never share a folder.

    Without ``run_id`` the id is a timestamp plus ``label``, suffixed -2, -3... on collision. An explicit
    ``run_id`` that exists already is an error: earlier results are never overwritten.
    """
    check_writable(results_dir)
    if run_id is not None:
        if not run_id or os.sep in run_id or run_id in (".", ".."):
            raise InputError(f"run id {run_id!r} is not a folder name", "pass --run-id with a plain name")
        path = os.path.join(results_dir, run_id)
        try:
            os.mkdir(path)
        except FileExistsError:
            raise InputError(
                f"run folder {path} exists already", "pass another --run-id, or leave it out for a fresh one"
            ) from None
        mark(path, "running")
        return run_id, path
    base = time.strftime("%Y%m%d-%H%M%S") + (f"-{label}" if label else "")
    for attempt in range(1, 1000):
        candidate = base if attempt == 1 else f"{base}-{attempt}"
        path = os.path.join(results_dir, candidate)
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        mark(path, "running")
        return candidate, path
    raise InputError(f"too many runs named {base} in {results_dir}", "pass --run-id")


def mark(run_dir: str, status: str, detail: str = "") -> None:
    """Record the run's state: running, complete, failed or interrupted (``status.json``)."""
    record = {"status": status, "pid": os.getpid(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if detail:
        record["detail"] = detail
    write_atomic(os.path.join(run_dir, STATUS_FILE), json.dumps(record) + "\n")


def in_run_folder(results_dir: str, run_id: Optional[str], label: str, work: Callable[[str, str], int]) -> int:
    """Create the run folder, run ``work(run_id, run_dir)``, and mark the folder with how it ended.

    An interrupted or failed run keeps whatever it wrote but never gets a report.json; status.json says why.
    """
    run_id, run_dir = create_run_dir(results_dir, run_id, label)
    try:
        code = work(run_id, run_dir)
    except KeyboardInterrupt:
        _mark_quietly(run_dir, "interrupted", "SIGINT")
        raise
    except Terminated:
        _mark_quietly(run_dir, "interrupted", "SIGTERM")
        raise
    except BaseException as error:
        _mark_quietly(run_dir, "failed", f"{type(error).__name__}: {error}")
        raise
    mark(run_dir, "complete")
    return code


def _mark_quietly(run_dir: str, status: str, detail: str) -> None:
    try:
        mark(run_dir, status, detail)
    except (OSError, EnvironmentProblem):  # a full disk must not hide the error that stopped the run
        pass
