"""HTTP(S) file download with resume, a progress bar and clear errors. Standard library + tqdm only.

Used by the Hugging Face hub loader (dpo/interop/hub.py) and the dataset downloader (dpo/interop/datasets.py). A download
goes to `dest + ".part"` and is renamed onto `dest` only when complete and of the expected size, so an
interrupted run leaves no half-written `dest`; the next call resumes the .part with an HTTP Range request.
"""
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from dpo.errors import UserError

CHUNK_BYTES = 1 << 20


class DownloadError(UserError, RuntimeError):
    """A download failed. `.status` is the HTTP status code when the server answered, else None."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _open(url: str, headers: dict, offset: int, timeout: float):
    request_headers = dict(headers)
    if offset:
        request_headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=request_headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the .part is already complete (or longer than the file)
            return None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}", status=e.code) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"{url}: cannot connect ({reason}); is this machine offline?") from None


def download(url: str, dest, *, expected_size: int | None = None, headers: dict | None = None,
             desc: str | None = None, retries: int = 3, timeout: float = 60.0) -> Path:
    """Fetch `url` into `dest` (a file path) and return it as a Path.

    An existing `dest` is trusted when its size equals `expected_size` (or when no size is expected).
    A dropped connection is resumed from the bytes already written, up to `retries` times."""
    dest = Path(dest)
    if dest.is_file() and (expected_size is None or dest.stat().st_size == expected_size):
        return dest
    part = dest.with_name(dest.name + ".part")
    headers = headers or {}
    for attempt in range(retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        response = _open(url, headers, offset, timeout)
        if response is None:
            break
        with response:
            if offset and response.status != 206:  # server ignored Range: start over
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else expected_size
            if expected_size is not None and total is not None and total != expected_size:
                raise DownloadError(f"{url}: server reports {total} bytes, expected {expected_size}")
            dest.parent.mkdir(parents=True, exist_ok=True)  # only now: a failed request leaves no folder
            with open(part, "ab" if offset else "wb") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc or dest.name, disable=os.environ.get("DPO_NO_PROGRESS") == "1",
                leave=False,
            ) as bar:
                try:
                    while chunk := response.read(CHUNK_BYTES):
                        f.write(chunk)
                        bar.update(len(chunk))
                except (OSError, http.client.HTTPException) as e:
                    if attempt == retries:
                        raise DownloadError(f"{url}: connection lost after {f.tell()} bytes ({e})") from None
                    continue
        size = part.stat().st_size
        if total is None or size == total:
            break
        if attempt == retries:
            raise DownloadError(f"{url}: got {size} of {total} bytes after {retries + 1} attempts")
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        raise DownloadError(f"{url}: downloaded {size} bytes, expected {expected_size} "
                            f"(partial file kept at {part})")
    os.replace(part, dest)
    return dest
