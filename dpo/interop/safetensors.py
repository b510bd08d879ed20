"""A small reader and writer for the safetensors format, so checkpoints need no extra dependency.

Layout: an 8-byte little-endian header length N, then N bytes of JSON
    {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {str: str}}
then the raw little-endian tensor bytes; offsets are relative to the end of the header.

Reading goes tensor by tensor (one file read per tensor, converted to the requested dtype at once), so
loading a checkpoint never holds the whole file and the whole model in memory together.
"""
import json
import struct
from pathlib import Path

import torch

from dpo.errors import UserError
from dpo.files import atomic_path

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsError(UserError, ValueError):
    pass


def read_header(path) -> tuple[dict, int]:
    """Return (header without "__metadata__", byte offset where tensor data begins)."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        size = path.stat().st_size
        if n > size - 8:
            raise SafetensorsError(f"{path}: header length {n} exceeds file size {size} (truncated file?)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from None
    header.pop("__metadata__", None)
    data_offset = 8 + n
    for name, info in header.items():
        begin, end = info["data_offsets"]
        if info["dtype"] not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        if data_offset + end > size:
            raise SafetensorsError(f"{path}: tensor {name!r} ends past the end of the file (truncated file?)")
    return header, data_offset


def load_file(path, dtype: torch.dtype | None = None, names=None, device="cpu") -> dict[str, torch.Tensor]:
    """Load tensors (all, or those in `names`), floating-point ones cast to `dtype` if given."""
    header, data_offset = read_header(path)
    wanted = header.keys() if names is None else [n for n in names if n in header]
    tensors = {}
    with open(path, "rb") as f:
        for name in wanted:
            info = header[name]
            begin, end = info["data_offsets"]
            f.seek(data_offset + begin)
            buf = bytearray(end - begin)
            f.readinto(buf)
            t = torch.frombuffer(buf, dtype=DTYPES[info["dtype"]]) if buf else torch.empty(0, dtype=DTYPES[info["dtype"]])
            t = t.reshape(info["shape"])
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            tensors[name] = t.to(device)
    return tensors


def save_file(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` to `path` atomically (dpo.files.atomic_path: a kill leaves the old file or the new one)."""
    path = Path(path)
    header, offset = {}, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align tensor data to 8 bytes, as the reference writer does
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors.values():
            t = t.detach().to("cpu").contiguous()
            if t.numel():
                # view as bytes: works for every dtype, bf16 included (numpy has no bf16)
                f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
