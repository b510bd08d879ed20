"""Files and folders written whole or not at all: a reader (or a run resumed after a kill) sees the old file
or the new one, never half of one. Everything is written under a temporary name in the same folder, then
renamed over the target (a rename within a folder is atomic on POSIX)."""
import contextlib
import os
import shutil
import threading
from pathlib import Path

from dpo.errors import UserError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; when the block ends without error, rename it to `path`.

    For writers that take a path (torch.save, a tokenizer trainer). On error the temporary file is removed
    and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")  # unique per writer
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_dir(path):
    """Yield an empty folder `path`.tmp; when the block ends without error, it becomes `path`. An old `path`
    is first renamed to `path`.old and removed only after the new one is in place, so a kill leaves `path`
    (old or new) or, between the two renames, both complete copies beside it. (Training checkpoints, which
    every rank writes, follow the same rule in dpo/checkpoint.py.)"""
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def check_writable(path, what: str, *, folder: bool = False) -> Path:
    """Check, before any work, that `path` can be written: a file (with folder=True, a folder) that is not a
    folder (a file) already, under a nearest existing folder this process may write in (or, for an existing
    folder, that folder itself). Creates nothing. Returns `path` as a Path; raises dpo.errors.UserError with
    one line naming `what` (the option, e.g. "--out") and the path."""
    path = Path(path)
    if not folder and path.is_dir():
        raise UserError(f"{what} {path}: is a folder; expected a file path")
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{what} {path}: is a file; expected a folder")
    existing = path if folder and path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: cannot write in folder {existing} (permission denied or read-only)")
    return path
