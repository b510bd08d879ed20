"""dpo/interop/gguf.py: the GGUF reader, dequantisation, the Llama -> Hugging Face mapping and the converter.

Test files are written by a small test-only GGUF writer below (quantising as llama.cpp's reference code
does, and permuting q/k rows as llama.cpp's convert_hf_to_gguf.py does), so no download is needed."""
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dpo.interop import gguf
from dpo.interop.gguf import GGUFError, dequantize, load_gguf, read_gguf
from helpers import OUTPUT_CASES, bad_output_path, refused

# ----------------------------------------------------------------------------------------------------
# A test-only GGUF writer

UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_FMT = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i", FLOAT32: "<f",
        BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}


class Typed:
    """A metadata value with an explicit GGUF value type (elem_type for arrays)."""

    def __init__(self, vtype, value, elem_type=None):
        self.vtype, self.value, self.elem_type = vtype, value, elem_type


def _infer(value) -> Typed:
    if isinstance(value, Typed):
        return value
    if isinstance(value, bool):
        return Typed(BOOL, value)
    if isinstance(value, int):
        return Typed(UINT32 if 0 <= value < 2**32 else INT64, value)
    if isinstance(value, float):
        return Typed(FLOAT32, value)
    if isinstance(value, str):
        return Typed(STRING, value)
    if isinstance(value, list):
        return Typed(ARRAY, value, _infer(value[0]).vtype if value else UINT8)
    raise TypeError(value)


def _pack_str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _pack_value(v: Typed) -> bytes:
    if v.vtype == STRING:
        return _pack_str(v.value)
    if v.vtype == ARRAY:
        out = struct.pack("<IQ", v.elem_type, len(v.value))
        for x in v.value:
            out += _pack_value(x if isinstance(x, Typed) else Typed(v.elem_type, x, _infer(x).elem_type))
        return out
    return struct.pack(_FMT[v.vtype], v.value)


def _f16_bytes(x) -> bytes:
    return np.float16(x).tobytes()


def _pack_nibbles(q: np.ndarray) -> bytes:  # q: [32] values 0..15 -> 16 bytes, value j | value j+16 << 4
    return (q[:16] | (q[16:] << 4)).astype(np.uint8).tobytes()


def quantize_q8_0(x: np.ndarray) -> bytes:
    """llama.cpp quantize_row_q8_0_ref: d = max|x| / 127, q = round(x / d)."""
    out = b""
    for block in x.reshape(-1, 32).astype(np.float32):
        d = np.abs(block).max() / 127
        q = np.round(block / d) if d else np.zeros(32)
        out += _f16_bytes(d) + q.astype(np.int8).tobytes()
    return out


def quantize_q4_0(x: np.ndarray) -> bytes:
    """llama.cpp quantize_row_q4_0_ref: d = (signed value of largest magnitude) / -8, q = x / d + 8."""
    out = b""
    for block in x.reshape(-1, 32).astype(np.float32):
        m = block[np.argmax(np.abs(block))]
        d = m / -8
        idd = 1 / d if d else 0.0
        q = np.minimum(15, (block * idd + 8.5).astype(np.int8))
        out += _f16_bytes(d) + _pack_nibbles(q)
    return out


def quantize_q4_1(x: np.ndarray) -> bytes:
    """llama.cpp quantize_row_q4_1_ref: d = (max - min) / 15, m = min, q = (x - min) / d."""
    out = b""
    for block in x.reshape(-1, 32).astype(np.float32):
        lo, hi = block.min(), block.max()
        d = (hi - lo) / 15
        idd = 1 / d if d else 0.0
        q = np.minimum(15, ((block - lo) * idd + 0.5).astype(np.int8))
        out += _f16_bytes(d) + _f16_bytes(lo) + _pack_nibbles(q)
    return out


def tensor_bytes(x: np.ndarray, type_name: str) -> bytes:
    if type_name == "F32":
        return x.astype("<f4").tobytes()
    if type_name == "F16":
        return x.astype("<f2").tobytes()
    if type_name == "BF16":
        return (x.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    return {"Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0, "Q4_1": quantize_q4_1}[type_name](x)


def write_gguf(path, metadata: dict, tensors: dict, alignment: int = 32, version: int = 3) -> Path:
    """tensors: {name: (numpy array in PyTorch shape, type name) or (shape, type name, raw bytes)}."""
    path = Path(path)
    if alignment != 32:
        metadata = {**metadata, "general.alignment": Typed(UINT32, alignment)}
    header = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    for key, value in metadata.items():
        v = _infer(value)
        header += _pack_str(key) + struct.pack("<I", v.vtype) + _pack_value(v)
    data, infos = b"", b""
    for name, spec in tensors.items():
        if len(spec) == 2:
            shape, type_name, raw = spec[0].shape, spec[1], tensor_bytes(spec[0], spec[1])
        else:
            shape, type_name, raw = spec
        data += b"\0" * ((-len(data)) % alignment)
        ne = list(reversed(shape))
        infos += _pack_str(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, gguf.GGML_TYPE_IDS[type_name], len(data))
        data += raw
    head = header + infos
    path.write_bytes(head + b"\0" * ((-len(head)) % alignment) + data)
    return path


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (called with n_head for q and n_head_kv for k)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ----------------------------------------------------------------------------------------------------
# Header and metadata


def test_metadata_of_every_value_type_and_tensor_shapes(tmp_path):
    md = {
        "general.architecture": "llama", "u8": Typed(UINT8, 200), "i8": Typed(INT8, -100),
        "u16": Typed(UINT16, 60000), "i16": Typed(INT16, -30000), "u32": Typed(UINT32, 4_000_000_000),
        "i32": Typed(INT32, -2_000_000_000), "f32": Typed(FLOAT32, 0.5), "yes": True, "no": False,
        "s": "héllo wörld 😀", "u64": Typed(UINT64, 2**60), "i64": Typed(INT64, -(2**60)), "f64": Typed(FLOAT64, 0.1),
        "ints": Typed(ARRAY, [1, -2, 3], INT32), "floats": Typed(ARRAY, [0.25, -1.5], FLOAT32),
        "strings": ["a", "", "ß c"], "nested": Typed(ARRAY, [Typed(ARRAY, [1, 2], UINT8), Typed(ARRAY, [3], UINT8)], ARRAY),
        "empty": Typed(ARRAY, [], UINT32),
    }
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    write_gguf(tmp_path / "a.gguf", md, {"t": (x, "F32"), "v": (np.ones(5, np.float32), "F16")})
    f = read_gguf(tmp_path / "a.gguf")
    assert f.version == 3 and f.alignment == 32
    expected = {k: (v.value if isinstance(v, Typed) else v) for k, v in md.items()}
    expected["nested"] = [[1, 2], [3]]
    assert f.metadata == expected
    assert f.tensors["t"].shape == (2, 3, 4) and f.tensors["t"].type_name == "F32"
    (name, t), (_, v) = gguf.iter_tensors(f)
    assert name == "t" and np.array_equal(t, x) and v.dtype == np.float16 and np.array_equal(v, np.ones(5))


@pytest.mark.parametrize("alignment", [32, 64, 256])
def test_alignment_and_version_2(tmp_path, alignment):
    rng = np.random.default_rng(0)
    tensors = {f"t{i}": (rng.standard_normal((3, 7 + i)).astype(np.float32), "F32") for i in range(3)}
    write_gguf(tmp_path / "a.gguf", {"k": 1}, tensors, alignment=alignment, version=2)
    f = read_gguf(tmp_path / "a.gguf")
    assert f.alignment == alignment and f.version == 2
    assert all(t.offset % alignment == 0 for t in f.tensors.values())
    for name, arr in gguf.iter_tensors(f):
        assert np.array_equal(arr, tensors[name][0])


def test_bad_files_give_clear_errors(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(GGUFError, match=r"x\.gguf: not a GGUF file"):
        read_gguf(tmp_path / "x.gguf")
    write_gguf(tmp_path / "v1.gguf", {}, {}, version=1)
    with pytest.raises(GGUFError, match=r"v1\.gguf: GGUF version 1 is not supported"):
        read_gguf(tmp_path / "v1.gguf")
    good = write_gguf(tmp_path / "t.gguf", {"k": "v"}, {"w": (np.ones((4, 32), np.float32), "F32")})
    raw = good.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(raw[:-10])
    with pytest.raises(GGUFError, match=r"cut\.gguf: tensor 'w' needs bytes .*\(truncated"):
        read_gguf(tmp_path / "cut.gguf")
    (tmp_path / "cut2.gguf").write_bytes(raw[:40])
    with pytest.raises(GGUFError, match=r"cut2\.gguf: .*(truncated|past the end)"):
        read_gguf(tmp_path / "cut2.gguf")


def test_unsupported_type_names_tensor_and_type(tmp_path):
    write_gguf(tmp_path / "iq.gguf", {}, {"blk.0.attn_q.weight": ((2, 256), "IQ2_XXS", b"\0" * 132)})
    f = read_gguf(tmp_path / "iq.gguf")
    with pytest.raises(GGUFError, match=r"tensor 'blk\.0\.attn_q\.weight': ggml type IQ2_XXS cannot be dequantised"):
        list(gguf.iter_tensors(f))


# ----------------------------------------------------------------------------------------------------
# Dequantisation


def test_q8_0_q4_0_q4_1_against_hand_computation():
    # Q8_0: d = 0.5 (exact in fp16), q = -128, -1, 0, 1, ..., 127 at chosen positions
    qs = np.zeros(32, np.int8)
    qs[[0, 1, 2, 31]] = [-128, -1, 7, 127]
    got = dequantize(np.frombuffer(_f16_bytes(0.5) + qs.tobytes(), np.uint8), "Q8_0")
    assert got[0] == -64.0 and got[1] == -0.5 and got[2] == 3.5 and got[31] == 63.5 and got[3] == 0.0
    # Q4_0: d = 0.25; byte 0 = 0x3A -> value 0 = 0xA, value 16 = 0x3; byte 15 = 0xF0 -> value 15 = 0, value 31 = 15
    packed = bytearray([0x88] * 16)
    packed[0], packed[15] = 0x3A, 0xF0
    got = dequantize(np.frombuffer(_f16_bytes(0.25) + bytes(packed), np.uint8), "Q4_0")
    assert got[0] == (10 - 8) * 0.25 and got[16] == (3 - 8) * 0.25
    assert got[15] == (0 - 8) * 0.25 and got[31] == (15 - 8) * 0.25 and got[1] == 0.0
    # Q4_1: d = 0.5, m = -1.0: x = 0.5 q - 1
    got = dequantize(np.frombuffer(_f16_bytes(0.5) + _f16_bytes(-1.0) + bytes(packed), np.uint8), "Q4_1")
    assert got[0] == 10 * 0.5 - 1 and got[16] == 3 * 0.5 - 1 and got[15] == -1.0 and got[31] == 15 * 0.5 - 1
    # two blocks back to back keep their own scales
    two = _f16_bytes(1.0) + qs.tobytes() + _f16_bytes(2.0) + qs.tobytes()
    got = dequantize(np.frombuffer(two, np.uint8), "Q8_0")
    assert got.shape == (64,) and got[31] == 127 and got[63] == 254


# Q4_0 maps the largest-magnitude value to -8 steps, so values of the other sign clip at +7 steps:
# its error bound is one whole step, the others' half a step.
@pytest.mark.parametrize("type_name,bound,steps", [("Q8_0", 1 / 127, 0.5), ("Q4_0", 1 / 8, 1.0), ("Q4_1", 1 / 15, 0.5)])
def test_quantize_roundtrip_error_within_the_step(tmp_path, type_name, bound, steps):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    write_gguf(tmp_path / "q.gguf", {}, {"w": (x, type_name)})
    (_, y), = gguf.iter_tensors(read_gguf(tmp_path / "q.gguf"))
    assert y.shape == x.shape and y.dtype == np.float32
    blocks_x, blocks_y = x.reshape(-1, 32), y.reshape(-1, 32)
    span = np.abs(blocks_x).max(1) if type_name != "Q4_1" else blocks_x.max(1) - blocks_x.min(1)
    # half a quantisation step, plus fp16 rounding of the scale (and of the offset for Q4_1)
    step = span * bound
    err = np.abs(blocks_x - blocks_y).max(1)
    assert np.all(err <= step * steps + span * 2e-3 + 1e-6), (err / step).max()
    assert np.all(err > 0)  # it really was quantised


def test_bf16_and_f16(tmp_path):
    exact_bf16 = np.array([[1.0, -2.5, 3.140625, 196608.0, 2.0**-20, 0.0]], np.float32)
    x16 = np.array([[1.0, -2.5, 65504.0, 1e-3]], np.float32)
    write_gguf(tmp_path / "b.gguf", {}, {"b": (exact_bf16, "BF16"), "h": (x16, "F16")})
    got = dict(gguf.iter_tensors(read_gguf(tmp_path / "b.gguf")))
    assert got["b"].dtype == np.float32 and np.array_equal(got["b"], exact_bf16)
    assert got["h"].dtype == np.float16 and np.array_equal(got["h"], x16.astype(np.float16))


# Scalar transliterations of ggml's dequantize_row_* loops (ggml-quants.c), one block at a time.

def _h(b, i):
    return float(np.frombuffer(bytes(b[i:i + 2]), "<f2")[0])


def _scale_min_k4(j, q):
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def ref_q5_0(b):
    d, qh = _h(b, 0), int.from_bytes(bytes(b[2:6]), "little")
    y = [0.0] * 32
    for j in range(16):
        y[j] = d * (((b[6 + j] & 0x0F) | (((qh >> j) << 4) & 0x10)) - 16)
        y[j + 16] = d * (((b[6 + j] >> 4) | ((qh >> (j + 12)) & 0x10)) - 16)
    return y


def ref_q5_1(b):
    d, m, qh = _h(b, 0), _h(b, 2), int.from_bytes(bytes(b[4:8]), "little")
    y = [0.0] * 32
    for j in range(16):
        y[j] = d * ((b[8 + j] & 0x0F) | (((qh >> j) << 4) & 0x10)) + m
        y[j + 16] = d * ((b[8 + j] >> 4) | ((qh >> (j + 12)) & 0x10)) + m
    return y


def ref_q2_k(b):
    scales, q, d, dmin = b[0:16], b[16:80], _h(b, 80), _h(b, 82)
    y, i_s, qo = [], 0, 0
    for _ in range(2):
        for shift in (0, 2, 4, 6):
            for off in (0, 16):
                sc = scales[i_s]
                i_s += 1
                y += [d * (sc & 0xF) * ((q[qo + off + l] >> shift) & 3) - dmin * (sc >> 4) for l in range(16)]
        qo += 32
    return y


def ref_q3_k(b):
    hm, q, sc_raw, d = b[0:32], b[32:96], bytes(b[96:108]), _h(b, 108)
    aux = list(struct.unpack("<3I", sc_raw)) + [0]
    k1, k2, tmp = 0x03030303, 0x0F0F0F0F, aux[2]
    aux[2] = ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4)
    aux[3] = ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4)
    aux[0] = (aux[0] & k2) | (((tmp >> 0) & k1) << 4)
    aux[1] = (aux[1] & k2) | (((tmp >> 2) & k1) << 4)
    scales = np.frombuffer(struct.pack("<4I", *aux), np.int8)
    y, i_s, m, qo = [], 0, 1, 0
    for _ in range(2):
        for shift in (0, 2, 4, 6):
            for off in (0, 16):
                dl = d * (int(scales[i_s]) - 32)
                i_s += 1
                y += [dl * (((q[qo + off + l] >> shift) & 3) - (0 if hm[off + l] & m else 4)) for l in range(16)]
            m <<= 1
        qo += 32
    return y


def ref_q4_k(b):
    d, dmin, scales, q = _h(b, 0), _h(b, 2), b[4:16], b[16:144]
    y = []
    for c in range(4):
        sc1, m1 = _scale_min_k4(2 * c, scales)
        sc2, m2 = _scale_min_k4(2 * c + 1, scales)
        y += [d * sc1 * (q[32 * c + l] & 0xF) - dmin * m1 for l in range(32)]
        y += [d * sc2 * (q[32 * c + l] >> 4) - dmin * m2 for l in range(32)]
    return y


def ref_q5_k(b):
    d, dmin, scales, qh, ql = _h(b, 0), _h(b, 2), b[4:16], b[16:48], b[48:176]
    y, u1, u2 = [], 1, 2
    for c in range(4):
        sc1, m1 = _scale_min_k4(2 * c, scales)
        sc2, m2 = _scale_min_k4(2 * c + 1, scales)
        y += [d * sc1 * ((ql[32 * c + l] & 0xF) + (16 if qh[l] & u1 else 0)) - dmin * m1 for l in range(32)]
        y += [d * sc2 * ((ql[32 * c + l] >> 4) + (16 if qh[l] & u2 else 0)) - dmin * m2 for l in range(32)]
        u1, u2 = u1 << 2, u2 << 2
    return y


def ref_q6_k(b):
    ql, qh, sc, d = b[0:128], b[128:192], np.frombuffer(bytes(b[192:208]), np.int8), _h(b, 208)
    y = [0.0] * 256
    for n in range(2):
        for l in range(32):
            i_s = l // 16
            L, H, S = ql[64 * n:], qh[32 * n:], sc[8 * n:]
            q1 = ((L[l] & 0xF) | (((H[l] >> 0) & 3) << 4)) - 32
            q2 = ((L[l + 32] & 0xF) | (((H[l] >> 2) & 3) << 4)) - 32
            q3 = ((L[l] >> 4) | (((H[l] >> 4) & 3) << 4)) - 32
            q4 = ((L[l + 32] >> 4) | (((H[l] >> 6) & 3) << 4)) - 32
            y[128 * n + l] = d * S[i_s] * q1
            y[128 * n + l + 32] = d * S[i_s + 2] * q2
            y[128 * n + l + 64] = d * S[i_s + 4] * q3
            y[128 * n + l + 96] = d * S[i_s + 6] * q4
    return y


# where each type keeps its fp16 scale(s), so random blocks can be given finite ones
_HALF_FIELDS = {"Q5_0": [0], "Q5_1": [0, 2], "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2],
                "Q5_K": [0, 2], "Q6_K": [208]}
_REFS = {"Q5_0": ref_q5_0, "Q5_1": ref_q5_1, "Q2_K": ref_q2_k, "Q3_K": ref_q3_k, "Q4_K": ref_q4_k,
         "Q5_K": ref_q5_k, "Q6_K": ref_q6_k}


def random_blocks(type_name: str, n_blocks: int, seed: int = 0) -> np.ndarray:
    _, _, block_bytes = gguf.GGML_TYPES[gguf.GGML_TYPE_IDS[type_name]]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for pos in _HALF_FIELDS.get(type_name, [0]):
        raw[:, pos:pos + 2] = rng.uniform(-0.1, 0.1, n_blocks).astype("<f2").view(np.uint8).reshape(n_blocks, 2)
    return raw


@pytest.mark.parametrize("type_name", list(_REFS))
def test_vectorised_dequantisation_matches_scalar_ggml_loops(type_name):
    raw = random_blocks(type_name, 3)
    ours = dequantize(raw.reshape(-1), type_name)
    ref = np.array([v for block in raw for v in _REFS[type_name](block.tolist())], np.float32)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_dequantisation_matches_the_gguf_package(type_name):
    quants = pytest.importorskip("gguf.quants")
    from gguf.constants import GGMLQuantizationType
    raw = random_blocks(type_name, 16, seed=3)
    ref = quants.dequantize(raw, GGMLQuantizationType[type_name]).reshape(-1)
    assert np.array_equal(dequantize(raw.reshape(-1), type_name), ref.astype(np.float32))


# ----------------------------------------------------------------------------------------------------
# A tiny random Llama through GGUF and back

N_HEAD, N_KV_HEAD, VOCAB = 4, 2, 300


def tiny_llama(tie: bool = False, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=N_HEAD, num_key_value_heads=N_KV_HEAD, rope_theta=50000.0,
                                   rms_norm_eps=1e-5, max_position_embeddings=128, tie_word_embeddings=tie,
                                   bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms are initialised to ones; make them matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


HF_TO_GGUF = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}
HF_TO_GGUF_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                    "mlp.down_proj": "ffn_down"}


def tiny_vocab(n: int = VOCAB):
    """A byte-level BPE vocabulary of n tokens: 3 special tokens, 256 bytes, and merges trained on a paragraph."""
    tokenizers = pytest.importorskip("tokenizers")
    text = ("The capital of France is Paris. The capital of Italy is Rome. In 2024 there were 1234 "
            "reviews of the the the film, and it's rated 9/10! ") * 4
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=n, special_tokens=["<|endoftext|>", "<s>", "</s>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
                                             show_progress=False)
    tok.train_from_iterator([text], trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def llama_to_gguf(model, path, weight_type="F32", pre="smollm", vocab=None):
    """Export a transformers LlamaForCausalLM as llama.cpp's converter does (q/k rows permuted)."""
    cfg = model.config
    tokens, merges = vocab or tiny_vocab(cfg.vocab_size)
    md = {
        "general.architecture": "llama", "general.name": "tiny",
        "llama.block_count": cfg.num_hidden_layers, "llama.context_length": cfg.max_position_embeddings,
        "llama.embedding_length": cfg.hidden_size, "llama.feed_forward_length": cfg.intermediate_size,
        "llama.attention.head_count": cfg.num_attention_heads,
        "llama.attention.head_count_kv": cfg.num_key_value_heads,
        "llama.rope.freq_base": 50000.0, "llama.attention.layer_norm_rms_epsilon": cfg.rms_norm_eps,
        "llama.vocab_size": cfg.vocab_size, "llama.rope.dimension_count": cfg.hidden_size // cfg.num_attention_heads,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": Typed(ARRAY, [3, 3, 3] + [1] * (len(tokens) - 3), INT32),
        "tokenizer.ggml.merges": merges, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.padding_token_id": 0, "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": "{{ messages }}",
    }
    tensors = {}
    for name, w in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        w = w.numpy()
        if name in HF_TO_GGUF:
            gname = HF_TO_GGUF[name]
        else:
            layer, rest = name.split(".")[2], ".".join(name.split(".")[3:-1])
            gname = f"blk.{layer}.{HF_TO_GGUF_LAYER[rest]}.weight"
        if gname.endswith("attn_q.weight"):
            w = llamacpp_permute(w, cfg.num_attention_heads)
        elif gname.endswith("attn_k.weight"):
            w = llamacpp_permute(w, cfg.num_key_value_heads)
        tensors[gname] = (w, weight_type if w.ndim == 2 else "F32")  # llama.cpp keeps norms in F32
    return write_gguf(path, md, tensors)


@pytest.mark.parametrize("tie", [False, True])
def test_f32_llama_roundtrip_is_exact(tmp_path, tie):
    model = tiny_llama(tie)
    config, state_dict, info = load_gguf(llama_to_gguf(model, tmp_path / "tiny.gguf"))
    reference = {k: v for k, v in model.state_dict().items() if not (tie and k == "lm_head.weight")}
    assert state_dict.keys() == reference.keys()
    for name, w in reference.items():
        assert state_dict[name].dtype == torch.float32 and torch.equal(state_dict[name], w), name
    hf = model.config
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "num_hidden_layers", "rms_norm_eps", "vocab_size", "max_position_embeddings",
                "tie_word_embeddings", "bos_token_id", "eos_token_id", "head_dim"):
        assert config[key] == getattr(hf, key), key
    assert config["rope_theta"] == 50000.0 and config["model_type"] == "llama"
    assert info["model"] == "gpt2" and info["pre"] == "smollm" and len(info["tokens"]) == VOCAB


def test_without_unpermuting_q_and_k_would_differ(tmp_path):
    """Guards the test above: the permutation really moves rows, and unpermute_qk inverts it exactly."""
    w = torch.randn(N_HEAD * 16, 64)
    permuted = torch.from_numpy(llamacpp_permute(w.numpy(), N_HEAD))
    assert not torch.equal(permuted, w)
    assert torch.equal(gguf.unpermute_qk(permuted, N_HEAD), w)


def test_quantised_llama_stays_close_and_keeps_the_row_order(tmp_path):
    model = tiny_llama()
    _, state_dict, _ = load_gguf(llama_to_gguf(model, tmp_path / "q8.gguf", weight_type="Q8_0"))
    for name, w in model.state_dict().items():
        err = (state_dict[name] - w).abs().max().item()
        assert err <= w.abs().max().item() / 127, name  # within one Q8_0 step of the largest value
        if w.ndim == 2:
            assert err > 0, name


def test_load_gguf_dtype(tmp_path):
    _, state_dict, _ = load_gguf(llama_to_gguf(tiny_llama(), tmp_path / "t.gguf", "Q4_1"), dtype=torch.bfloat16)
    assert {t.dtype for t in state_dict.values()} == {torch.bfloat16}


def test_converted_folder_gives_transformers_logits(tmp_path):
    """The converted folder loads in transformers and in our GPT (hf_checkpoint.load_pretrained) with the
    original model's logits."""
    transformers = pytest.importorskip("transformers")
    model = tiny_llama()
    out = tmp_path / "hf"
    assert gguf.main(["convert", str(llama_to_gguf(model, tmp_path / "t.gguf")), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    ids = torch.tensor([[1, 5, 17, 42, 295, 3, 260, 7]])
    with torch.no_grad():
        expected = model(ids).logits
        reloaded = transformers.LlamaForCausalLM.from_pretrained(out).eval()
        assert torch.allclose(reloaded(ids).logits, expected, atol=1e-5)
    from dpo.interop.hf_checkpoint import load_pretrained
    ours = load_pretrained(out).eval()
    with torch.no_grad():
        assert torch.allclose(ours(ids), expected, atol=1e-4)


def test_convert_bfloat16_writes_bf16_weights(tmp_path):
    from dpo.interop.safetensors import read_header
    out = gguf.convert(llama_to_gguf(tiny_llama(), tmp_path / "t.gguf"), tmp_path / "hf", dtype=torch.bfloat16)
    header, _ = read_header(out / "model.safetensors")
    assert {v["dtype"] for v in header.values()} == {"BF16"}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_unsupported_architecture_and_tensors(tmp_path):
    write_gguf(tmp_path / "g.gguf", {"general.architecture": "gpt2"}, {"token_embd.weight": (np.ones((4, 32), np.float32), "F32")})
    with pytest.raises(GGUFError, match=r"g\.gguf: general\.architecture is 'gpt2'; only 'llama'"):
        load_gguf(tmp_path / "g.gguf")
    with pytest.raises(GGUFError, match=r"tensor 'blk\.0\.attn_q\.bias' has no Hugging Face Llama equivalent"):
        gguf.hf_name("blk.0.attn_q.bias")
    path = llama_to_gguf(tiny_llama(), tmp_path / "t.gguf")
    f = read_gguf(path)
    kept = {n: (arr, "F32") for n, arr in gguf.iter_tensors(f) if n != "blk.1.ffn_up.weight"}
    write_gguf(tmp_path / "missing.gguf", {k: v for k, v in f.metadata.items() if not isinstance(v, list)}, kept)
    with pytest.raises(GGUFError, match=r"missing\.gguf: missing tensors .*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_gguf(tmp_path / "missing.gguf")


def test_cli_info_and_errors(tmp_path, capsys):
    path = llama_to_gguf(tiny_llama(), tmp_path / "t.gguf", weight_type="Q4_1")
    assert gguf.main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "GGUF v3, 21 tensors" in out and "F32 x5, Q4_1 x16" in out and "tokenizer.ggml.pre = smollm" in out
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all, really")
    assert gguf.main(["convert", str(tmp_path / "bad.gguf"), "--out", str(tmp_path / "o")]) == 1
    assert "bad.gguf: not a GGUF file" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["a file", "under a file", "read-only", "missing file", "a folder as input",
                                  "truncated file", "not llama"])
def test_convert_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, case):
    """--out is checked before the file is read; a bad file is one line naming it, and leaves no folder."""
    path, out = llama_to_gguf(tiny_llama(), tmp_path / "t.gguf"), tmp_path / "converted"
    named = [path]
    if case in OUTPUT_CASES:
        out = bad_output_path(tmp_path, case, monkeypatch)
        named = [f"error: --out {out}: "]  # refused by the check before any work, not by a failed write
    elif case == "missing file":
        path = named[0] = tmp_path / "nope.gguf"
    elif case == "a folder as input":
        path = tmp_path / "dir.gguf"
        path.mkdir()
        named = [f"{path}: is a folder, not a GGUF file"]
    elif case == "truncated file":
        path.write_bytes(path.read_bytes()[:-100])
        named = [f"{path}: tensor 'output.weight' needs bytes", "(truncated file?)"]
    else:
        write_gguf(path, {"general.architecture": "gpt2"}, {"token_embd.weight": (np.ones((4, 32), np.float32), "F32")})
        named = [f"{path}: general.architecture is 'gpt2'"]
    refused(gguf.main, ["convert", path, "--out", out], capsys, tmp_path, *named)


# ----------------------------------------------------------------------------------------------------
# Tokenizer


TEXTS = ["The capital of France is Paris.", "In 2024 there were 1234 reviews!", "  spaces   and\n\nnewlines\t",
         "it's rated 9/10 — très bien 中文 😀", "<|endoftext|>The the</s>", "THE'S 12345 the'LL"]


def reference_tokenizer(pre: str):
    """Hugging Face `tokenizers` BPE over the tiny vocabulary, with the pre-tokenizer llama.cpp's `pre` means."""
    tokenizers = pytest.importorskip("tokenizers")
    tokens, merges = tiny_vocab()
    pt = tokenizers.pre_tokenizers
    llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE({t: i for i, t in enumerate(tokens)},
                                                     [tuple(m.split(" ")) for m in merges],
                                                     ignore_merges=pre == "llama-bpe"))
    tok.pre_tokenizer = {
        "gpt2": pt.ByteLevel(add_prefix_space=False),
        "smollm": pt.Sequence([pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False)]),
        "llama-bpe": pt.Sequence([pt.Split(tokenizers.Regex(llama3), "isolated"),
                                  pt.ByteLevel(add_prefix_space=False, use_regex=False)]),
    }[pre]
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<s>", "</s>"])
    return tok


@pytest.mark.parametrize("pre", ["smollm", "gpt2", "llama-bpe"])
def test_tokenizer_matches_a_reference_tokenizer(tmp_path, pre):
    """tokenizer_from_gguf, and the converted folder loaded by our Tokenizer and by HF tokenizers, all equal
    a reference BPE tokenizer built from the same vocabulary with the pre-tokenizer `pre` stands for."""
    tokenizers = pytest.importorskip("tokenizers")
    from dpo.tokenizer import Tokenizer
    reference = reference_tokenizer(pre)
    path = llama_to_gguf(tiny_llama(), tmp_path / "t.gguf", pre=pre)
    ours = gguf.tokenizer_from_gguf(load_gguf(path)[2])
    out = gguf.convert(path, tmp_path / "hf")
    from_dir = Tokenizer.from_pretrained(out)
    hf_from_dir = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    for text in TEXTS:
        expected = reference.encode(text).ids
        assert ours.encode(text, allow_special=True) == expected, text
        assert from_dir.encode(text, allow_special=True) == expected, text
        assert hf_from_dir.encode(text).ids == expected, text
        assert ours.decode(expected) == text
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (1, 2, 0)
    assert (from_dir.bos_id, from_dir.eos_id, from_dir.pad_id) == (1, 2, 0)
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == ("<s>", "</s>", "<|endoftext|>")
    assert config["chat_template"] == "{{ messages }}" and config["model_max_length"] == 128


def test_real_gpt2_vocabulary_through_gguf(shared_data, tmp_path):
    """GPT-2's 50k-token vocabulary stored the GGUF way (tokens by id, merges as strings) gives GPT-2's ids."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = json.loads((shared_data / "gpt2" / "vocab.json").read_text(encoding="utf-8"))
    merges = [m for m in (shared_data / "gpt2" / "merges.txt").read_text(encoding="utf-8").split("\n")[1:] if m]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    info = {"model": "gpt2", "pre": "gpt2", "tokens": tokens, "merges": merges,
            "token_type": [1] * (len(tokens) - 1) + [3], "eos_token_id": 50256, "bos_token_id": 50256}
    ours = gguf.tokenizer_from_gguf(info)
    reference = tokenizers.Tokenizer.from_str(json.dumps({
        "version": "1.0", "added_tokens": [], "normalizer": None, "post_processor": None, "decoder": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "vocab": vocab, "merges": merges}}))
    review = next((shared_data / "aclImdb-mini").rglob("*.txt")).read_text(encoding="utf-8")
    for text in TEXTS + [review]:
        assert ours.encode(text) == reference.encode(text).ids
    assert ours.eos_id == 50256


def test_unsupported_tokenizers_are_clear_errors():
    pytest.importorskip("dpo.tokenizer")
    with pytest.raises(GGUFError, match=r"tokenizer\.ggml\.model = 'llama'.*only byte-level BPE"):
        gguf.tokenizer_from_gguf({"model": "llama", "tokens": ["a"]})
    with pytest.raises(GGUFError, match=r"tokenizer\.ggml\.pre = 'deepseek-coder' is not supported"):
        gguf.tokenizer_from_gguf({"model": "gpt2", "pre": "deepseek-coder", "tokens": ["a"]})
