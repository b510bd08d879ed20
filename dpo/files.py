"""Files written whole or not at all: a reader (or a run resumed after a kill) sees the old file or the new
one, never half of one. Everything is written to a temporary name in the same folder, flushed to disk,
then renamed over the target (a rename within a folder is atomic on POSIX)."""
import contextlib
import os
import threading
from pathlib import Path


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
