"""One process at a time per directory: advisory file locks that the OS releases when their holder dies.

`fcntl.flock` locks an open file description, so a killed run never leaves a lock behind (nothing to clean up, no
stale-pid guessing). A forked child (a data loader's worker) closes its copy of every held lock file at once, so that
it cannot keep a killed parent's lock. A lock is re-entrant within a thread (the CLI and the trainer may both claim the
same output directory); another thread of the same process waits or fails like another process.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

# Lock files held by each thread: real path -> [open file, nesting depth].
_local = threading.local()
# Every lock file this process holds open, whichever thread holds it.
_open_files = set()


def _close_in_forked_child() -> None:
    for handle in list(_open_files):
        handle.close()  # the child's copy only: the parent's lock stays
    _open_files.clear()


os.register_at_fork(after_in_child=_close_in_forked_child)


class BusyError(OSError):
    """Another process holds the lock."""


@contextmanager
def file_lock(path: str | os.PathLike, purpose: str, wait: bool = False) -> Iterator[None]:
    """Holds an exclusive lock on the file `path` (created if missing) for the `with` block.

    Args:
        path (`str` or `os.PathLike`): The lock file; its directory must exist.
        purpose (`str`): What the lock protects, for the error message (e.g. "the output directory runs/a").
        wait (`bool`): Wait for the holder to finish instead of failing.

    Raises:
        BusyError: `wait=False` and another process holds the lock; the message names its pid.
        OSError: `path` is a symbolic link or not a regular file (writing the pid would follow it elsewhere).
    """
    # The directory is resolved, the file itself never: a link named like the lock is refused, not followed.
    key = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))), os.path.basename(path))
    _held = _local.__dict__.setdefault("held", {})
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    handle = _open_lock_file(key)
    _open_files.add(handle)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = (handle.read().split() or ["unknown"])[-1]
            if not wait:
                raise BusyError(
                    f"{purpose} is in use by another process (pid {holder}); wait for it to finish or use another "
                    "directory."
                ) from None
            logger.info(f"Waiting for process {holder}, which holds {purpose}.")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _held[key] = [handle, 1]
        try:
            yield
        finally:
            del _held[key]
    finally:
        _open_files.discard(handle)
        handle.close()  # closing the file releases the lock


def _open_lock_file(path: str):
    """`path` opened for reading and writing, created if missing; never through a symbolic link."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        raise OSError(
            f"The lock file {path} is a symbolic link; peft-skip never writes through one. Remove the link."
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"The lock file {path} is not a regular file; remove it or choose another directory.")
    return os.fdopen(fd, "r+", encoding="utf-8")
