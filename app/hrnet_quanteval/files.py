"""File helpers shared by every stage: content hashes, user paths checked for what will be done with them,
OS errors in words, and an advisory lock for folders that several processes share.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import time
from typing import Callable, Iterator, Optional

from .errors import EnvironmentProblem, InputError

try:  # POSIX; the images and CI are Linux
    import fcntl
except ImportError:  # pragma: no cover - Windows has no fcntl; locking is then skipped
    fcntl = None  # type: ignore[assignment]


def sha256_file(path: str) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# errno -> the words a user reads; anything else falls back to the OS's own text
_OS_WORDS = {
    errno.ENOENT: "it does not exist",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOTDIR: "a file, not a folder (the path or a part of it)",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.ELOOP: "too many symbolic links (a link loop?)",
    errno.EROFS: "the filesystem is read-only",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EEXIST: "it exists already",
    errno.ENOTEMPTY: "the folder is not empty",
}


def os_words(error: OSError) -> str:
    """What went wrong, in a few words a user can act on."""
    return _OS_WORDS.get(error.errno or 0, error.strerror or str(error))


def path_error(role: str, path: str, error: OSError, fix: str, action: str = "read") -> InputError:
    """The exit-2 error for a user-given path that the OS refused: which path, for what, why, and the fix."""
    return InputError(f"cannot {action} {role} {path}: {os_words(error)}", fix)


@contextlib.contextmanager
def user_path(role: str, path: str, fix: str, action: str = "read") -> Iterator[None]:
    """Turn any OSError raised inside into an exit-2 error naming ``role``, ``path`` and the cause."""
    try:
        yield
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise EnvironmentProblem(f"cannot {action} {role} {path}: {os_words(error)}", "free space and run again") from None
        raise path_error(role, path, error, fix, action) from None


def check_readable_file(path: str, role: str, fix: str) -> None:
    """``path`` is a file this process can open for reading (exit 2 otherwise, with the reason)."""
    with user_path(role, path, fix):
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        with open(path, "rb"):
            pass


def check_listable_dir(path: str, role: str, fix: str) -> None:
    """``path`` is a folder whose entries this process can list."""
    with user_path(role, path, fix):
        if not stat.S_ISDIR(os.stat(path).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", path)
        os.listdir(path)


def check_creatable_dir(path: str, role: str, fix: str) -> None:
    """``path`` is, or can be made, a folder this process can write into (probed with a file that is removed)."""
    with user_path(role, path, fix, action="write to"):
        if os.path.lexists(path) and not stat.S_ISDIR(os.stat(path).st_mode):  # os.stat names a link loop
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", path)
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.remove(probe)


def check_empty_or_new_dir(path: str, role: str, fix: str) -> None:
    """``path`` does not exist or is an empty folder: a target that must never overwrite anything."""
    with user_path(role, path, fix, action="write to"):
        if os.path.isdir(path) and os.listdir(path):
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), path)
    check_creatable_dir(path, role, fix)


@contextlib.contextmanager
def locked(path: str, on_wait: Optional[Callable[[], None]] = None, poll: float = 0.2) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if needed) for the block; others wait their turn.

    ``on_wait`` is called once if the lock is held by someone else, so the user hears why nothing moves.
    The OS releases the lock if the holder dies, so a killed process never leaves it stuck.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not told and on_wait is not None:
                        on_wait()
                        told = True
                    time.sleep(poll)
        yield
    finally:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
