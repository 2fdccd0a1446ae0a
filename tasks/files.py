"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

LOCK = ".inv.lock"  # in a folder a run writes to: see folder_lock


def sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB pieces."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Write `data` to `path` through a temporary file and a rename.

    Returns False, touching nothing, when the file already holds exactly
    `data` with `mode`: re-runs leave contents and times alone.
    """
    path = Path(path)
    try:
        if path.read_bytes() == data and (path.stat().st_mode & 0o777) == mode:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # The temporary file is created 0600, so a key is never readable by others.
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


@contextlib.contextmanager
def folder_lock(folder: Path, task: str, wait: float = 10.0):
    """Hold `folder` for one run of `inv TASK`: a second run at the same time waits up to `wait` seconds,
    then stops naming the first (its task and process id), rather than both writing the same files."""
    import fcntl
    import time

    from tasks.errors import StepError

    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another run"
                    raise StepError(
                        f"{folder} is in use by {holder}: wait until it ends, or stop it, and run `inv {task}` again"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`inv {task}` (process {os.getpid()})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
