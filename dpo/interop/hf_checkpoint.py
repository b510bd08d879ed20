"""Read and write checkpoints in Hugging Face layout (config.json + safetensors / pytorch_model.bin).

Supported model_type: gpt2, gpt_neox, gptj, llama, mistral, qwen2, qwen3, smollm3. Our parameter names
differ from Hugging Face's and some tensors are fused, so a layout is a list of entries

    (our_name, [hf_names], to_ours(list of hf tensors) -> tensor, to_hf(tensor) -> list of hf tensors)

Fused / reshaped tensors (C = n_embd, H heads, D = head_dim):
- GPT-2 stores projections as Conv1D weights [in, out]: transposed vs nn.Linear [out, in].
- GPT-NeoX query_key_value [H * 3 * D, C] is per head [q_h; k_h; v_h]; ours attn.qkv is [q; k; v]
  (all heads of q, then k, then v), so the rows are regrouped (H, 3, D) -> (3, H, D).
- GPT-J / Llama keep q_proj, k_proj, v_proj separate: concatenated into attn.qkv. Llama gate_proj and
  up_proj are concatenated into mlp.fc ([gate; up]).

The Llama-shaped families differ by switches of GPTConfig:
- qwen2: bias on q, k, v only (qkv_bias, no attn_out_bias).
- qwen3: qk_norm (self_attn.q_norm / k_norm weights [D] <-> attn.q_norm / k_norm), attention_bias on
  q, k, v and o alike, head_dim free of hidden_size / num_attention_heads.
- smollm3: `no_rope_layers` is one flag per layer, 1 = this layer uses rotary, 0 = NoPE (the name says
  the opposite; transformers' SmolLM3Attention: use_rope = no_rope_layers[layer_idx]); when absent,
  every no_rope_layer_interval-th layer (default 4: layers 3, 7, ...) is NoPE. Ours: nope_layers, the
  indices of the 0 entries.
A config with both qk_norm and nope_layers matches no Hugging Face family and is refused on save.

Entry points: `load_pretrained(name_or_dir, dtype, device)` (a folder, or a hub name fetched through
dpo.interop.hub.resolve_model_dir) and `save_pretrained(model, directory, dtype)`; `config_from_hf` /
`config_to_hf` translate config.json.

Loading builds the model on the meta device and reads one Hugging Face tensor at a time, converted to
the target dtype at once, so peak memory is about one model (plus one tensor group), whatever the
number or format of shards.
"""
import json
import re
from pathlib import Path

import torch

from dpo.errors import UserError
from dpo.files import atomic_write
from dpo.interop import safetensors
from dpo.interop.hub import resolve_model_dir
from dpo.model import GPT, GPTConfig


class CheckpointError(UserError, ValueError):
    pass


SUPPORTED = ("gpt2", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "qwen3", "smollm3")
LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "smollm3")
PREFIX = {"gpt2": "transformer.", "gptj": "transformer.", "gpt_neox": "gpt_neox.",
          **dict.fromkeys(LLAMA_LIKE, "model.")}
ARCHITECTURE = {"gpt2": "GPT2LMHeadModel", "gptj": "GPTJForCausalLM", "gpt_neox": "GPTNeoXForCausalLM",
                "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                "qwen3": "Qwen3ForCausalLM", "smollm3": "SmolLM3ForCausalLM"}
DEFAULT_ROPE_THETA = {"smollm3": 2000000.0}  # transformers' default where config.json gives none; else 10000
ACT_FROM_HF = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
               "gelu": "gelu", "gelu_python": "gelu", "silu": "silu", "swish": "silu", "relu": "relu"}
ACT_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "silu": "silu", "relu": "relu"}
# buffers some checkpoints carry (causal masks, rotary tables): recomputed by our model, safe to skip
IGNORED = re.compile(r"(\.attn\.(masked_)?bias|\.attention\.(masked_)?bias|rotary_emb\.inv_freq)$")


# ---------------------------------------------------------------- config.json <-> GPTConfig

def config_from_hf(hf: dict, source="config.json") -> GPTConfig:
    """GPTConfig from a Hugging Face config.json dict (`source` names the file in errors)."""
    mt = hf.get("model_type")
    if mt not in SUPPORTED:
        raise CheckpointError(f"{source}: model_type {mt!r} is not supported (supported: {', '.join(SUPPORTED)})")

    def get(*keys, default=None):
        for k in keys:
            if hf.get(k) is not None:
                return hf[k]
        if default is None:
            raise CheckpointError(f"{source}: missing key {keys[0]!r} for model_type {mt}")
        return default

    def act(key, default):
        name = hf.get(key) or default
        if name not in ACT_FROM_HF:
            raise CheckpointError(f"{source}: {key} {name!r} is not supported (supported: {', '.join(ACT_FROM_HF)})")
        return ACT_FROM_HF[name]

    def unsupported(cond, what):
        if cond:
            raise CheckpointError(f"{source}: {what} is not supported")

    # rotary settings live in "rope_parameters" (transformers >= 5) or at the top level (older files)
    rope = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type != "default":
        scaling = {**scaling, **rope, "rope_type": rope_type}
        scaling.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
        unsupported(rope_type not in ("llama3", "linear"), f"rope scaling type {rope_type!r} (supported: llama3, linear)")
    ids = dict(bos_id=hf.get("bos_token_id"), eos_id=hf.get("eos_token_id"))

    if mt == "gpt2":
        unsupported(hf.get("scale_attn_by_inverse_layer_idx"), "scale_attn_by_inverse_layer_idx")
        unsupported(not hf.get("scale_attn_weights", True), "scale_attn_weights=false")
        unsupported(hf.get("add_cross_attention"), "add_cross_attention")
        return GPTConfig(
            vocab_size=get("vocab_size"), n_layer=get("n_layer"), n_head=get("n_head"), n_embd=get("n_embd"),
            mlp_hidden=hf.get("n_inner"), max_seq_len=get("n_positions", "n_ctx"),
            norm_eps=get("layer_norm_epsilon", default=1e-5), activation=act("activation_function", "gelu_new"),
            tie_embeddings=hf.get("tie_word_embeddings", True), **ids)
    if mt == "gpt_neox":
        n_embd, n_head = get("hidden_size"), get("num_attention_heads")
        pct = rope.get("partial_rotary_factor", hf.get("rotary_pct", 0.25))
        bias = hf.get("attention_bias", True)
        return GPTConfig(
            vocab_size=get("vocab_size"), n_layer=get("num_hidden_layers"), n_head=n_head, n_embd=n_embd,
            mlp_hidden=get("intermediate_size"), max_seq_len=get("max_position_embeddings", default=2048),
            position="rotary", rotary_dim=int(n_embd // n_head * pct),
            rope_theta=rope.get("rope_theta", hf.get("rotary_emb_base", 10000.0)), rope_scaling=scaling or None,
            norm_eps=get("layer_norm_eps", default=1e-5), activation=act("hidden_act", "gelu"),
            parallel_residual=hf.get("use_parallel_residual", True), qkv_bias=bias, attn_out_bias=bias,
            tie_embeddings=hf.get("tie_word_embeddings", False), **ids)
    if mt == "gptj":
        n_embd, n_head = get("n_embd"), get("n_head")
        return GPTConfig(
            vocab_size=get("vocab_size"), n_layer=get("n_layer"), n_head=n_head, n_embd=n_embd,
            mlp_hidden=hf.get("n_inner"), max_seq_len=get("n_positions", default=2048),
            position="rotary", rotary_dim=hf.get("rotary_dim") or n_embd // n_head, rotary_interleaved=True,
            norm_eps=get("layer_norm_epsilon", default=1e-5), activation=act("activation_function", "gelu_new"),
            parallel_residual=True, shared_norm=True, qkv_bias=False, attn_out_bias=False, lm_head_bias=True,
            tie_embeddings=hf.get("tie_word_embeddings", False), **ids)
    # llama family: llama, smollm3 (attention_bias, mlp_bias), mistral (no biases), qwen2 (bias on q, k, v
    # only), qwen3 (attention_bias on q, k, v, o)
    n_embd, n_head, n_layer = get("hidden_size"), get("num_attention_heads"), get("num_hidden_layers")
    head_dim = hf.get("head_dim") or n_embd // n_head
    max_seq_len = get("max_position_embeddings", default=2048)
    window = hf.get("sliding_window") if (mt == "mistral" or hf.get("use_sliding_window")) else None
    if window:  # within the window, sliding-window attention is plain causal attention
        max_seq_len = min(max_seq_len, window)
    attention_bias = bool(hf.get("attention_bias")) and mt in ("llama", "qwen3", "smollm3")
    nope_layers = None
    if mt == "smollm3":  # no_rope_layers[i] == 1: layer i uses rotary; 0: NoPE (see the module docstring)
        every = hf.get("no_rope_layer_interval") or 4
        use_rope = hf.get("no_rope_layers") or [int((i + 1) % every != 0) for i in range(n_layer)]
        unsupported(len(use_rope) < n_layer, f"no_rope_layers of {len(use_rope)} entries for {n_layer} layers")
        nope_layers = [i for i in range(n_layer) if not use_rope[i]] or None
    return GPTConfig(
        vocab_size=get("vocab_size"), n_layer=n_layer, n_head=n_head, n_embd=n_embd,
        n_kv_head=hf.get("num_key_value_heads") or n_head, head_dim=head_dim, mlp_hidden=get("intermediate_size"),
        max_seq_len=max_seq_len, position="rotary",
        rotary_dim=int(head_dim * rope.get("partial_rotary_factor", 1.0)),
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", DEFAULT_ROPE_THETA.get(mt, 10000.0))),
        rope_scaling=scaling or None, nope_layers=nope_layers, qk_norm=mt == "qwen3",
        norm="rmsnorm", norm_eps=get("rms_norm_eps", default=1e-6), activation=act("hidden_act", "silu"),
        gated_mlp=True, qkv_bias=attention_bias or mt == "qwen2", attn_out_bias=attention_bias,
        mlp_bias=bool(hf.get("mlp_bias")) and mt in ("llama", "smollm3"),
        tie_embeddings=hf.get("tie_word_embeddings", mt == "smollm3"), **ids)


def model_type_of(cfg: GPTConfig) -> str:
    """The Hugging Face model_type whose architecture equals this config, or a CheckpointError."""
    def need(ok, mt, what):
        if not ok:
            raise CheckpointError(f"config cannot be saved in Hugging Face layout: {mt} needs {what}")
    same_heads = cfg.n_kv_head == cfg.n_head and cfg.head_dim * cfg.n_head == cfg.n_embd
    if cfg.qk_norm or cfg.nope_layers:
        mt = "qwen3" if cfg.qk_norm else "smollm3"
        need(not (cfg.qk_norm and cfg.nope_layers), mt, "qk_norm (qwen3) or nope_layers (smollm3), not both")
        need(cfg.position == "rotary" and not cfg.rotary_interleaved and cfg.norm == "rmsnorm", mt,
             "half-split rotary and rmsnorm")
    if cfg.position == "learned":
        need(cfg.norm == "layernorm" and not cfg.gated_mlp and not cfg.parallel_residual, "gpt2",
             "layernorm, a plain mlp, a sequential block")
        need(cfg.qkv_bias and cfg.attn_out_bias and cfg.mlp_bias and not cfg.lm_head_bias and same_heads, "gpt2",
             "all biases but lm_head's, n_kv_head == n_head")
        return "gpt2"
    if cfg.rotary_interleaved:
        need(cfg.norm == "layernorm" and not cfg.gated_mlp and cfg.shared_norm and same_heads, "gptj",
             "layernorm, a plain mlp, a parallel block with one norm, n_kv_head == n_head")
        need(not cfg.qkv_bias and not cfg.attn_out_bias and cfg.mlp_bias and cfg.lm_head_bias, "gptj",
             "biases on mlp and lm_head only")
        return "gptj"
    if cfg.norm == "layernorm":
        need(not cfg.gated_mlp and not cfg.shared_norm and same_heads and not cfg.lm_head_bias, "gpt_neox",
             "a plain mlp, two norms, n_kv_head == n_head, no lm_head bias")
        need(cfg.qkv_bias == cfg.attn_out_bias and cfg.mlp_bias and not cfg.rope_scaling, "gpt_neox",
             "attention biases all or none, mlp biases, no rope_scaling")
        return "gpt_neox"
    need(cfg.gated_mlp and not cfg.parallel_residual and not cfg.lm_head_bias, "llama",
         "a gated mlp, a sequential block, no lm_head bias")
    if cfg.qk_norm:
        need(cfg.qkv_bias == cfg.attn_out_bias and not cfg.mlp_bias, "qwen3",
             "q, k, v and o biases all or none, no mlp biases")
        return "qwen3"
    if cfg.qkv_bias and not cfg.attn_out_bias and not cfg.mlp_bias and not cfg.nope_layers:
        return "qwen2"
    mt = "smollm3" if cfg.nope_layers else "llama"
    need(cfg.qkv_bias == cfg.attn_out_bias, mt, "q, k, v and o biases all or none")
    return mt


def config_to_hf(cfg: GPTConfig, dtype: torch.dtype | None = None) -> dict:
    """A config.json dict that transformers (4.x and 5.x) reads back as the same architecture."""
    mt = model_type_of(cfg)
    hf = {"architectures": [ARCHITECTURE[mt]], "model_type": mt, "vocab_size": cfg.vocab_size,
          "bos_token_id": cfg.bos_id, "eos_token_id": cfg.eos_id, "tie_word_embeddings": cfg.tie_embeddings}
    if dtype is not None:
        hf["torch_dtype"] = str(dtype).removeprefix("torch.")
    act = ACT_TO_HF[cfg.activation]
    if mt in ("gpt2", "gptj"):
        hf.update(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, n_inner=cfg.mlp_hidden,
                  n_positions=cfg.max_seq_len, n_ctx=cfg.max_seq_len, layer_norm_epsilon=cfg.norm_eps,
                  activation_function=act, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout)
        if mt == "gptj":
            hf["rotary_dim"] = cfg.rotary_dim
        return hf
    hf.update(num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, hidden_size=cfg.n_embd,
              intermediate_size=cfg.mlp_hidden, max_position_embeddings=cfg.max_seq_len, hidden_act=act)
    # both spellings of the rotary settings: top-level keys (transformers 4) and rope_parameters (5)
    rope = {"rope_type": "default", **(cfg.rope_scaling or {}), "rope_theta": cfg.rope_theta}
    if mt == "gpt_neox":
        pct = cfg.rotary_dim / cfg.head_dim
        hf.update(layer_norm_eps=cfg.norm_eps, use_parallel_residual=cfg.parallel_residual,
                  attention_bias=cfg.qkv_bias, rotary_pct=pct, rotary_emb_base=cfg.rope_theta,
                  attention_dropout=cfg.dropout, hidden_dropout=cfg.dropout,
                  rope_parameters={**rope, "partial_rotary_factor": pct})
        return hf
    if cfg.rotary_dim != cfg.head_dim:
        raise CheckpointError(f"config cannot be saved in Hugging Face layout: {mt} rotates all of head_dim")
    hf.update(num_key_value_heads=cfg.n_kv_head, head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
              rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling, rope_parameters=rope,
              attention_dropout=cfg.dropout)
    if mt in ("llama", "smollm3", "qwen3"):
        hf["attention_bias"] = cfg.qkv_bias
    if mt in ("llama", "smollm3"):
        hf["mlp_bias"] = cfg.mlp_bias
    if mt == "smollm3":  # 1 = the layer uses rotary (see the module docstring)
        hf["no_rope_layers"] = [int(i not in cfg.nope_layers) for i in range(cfg.n_layer)]
        hf["pad_token_id"] = None  # else transformers' default 128004, outside a smaller vocabulary
    if mt != "llama":
        hf.update(use_sliding_window=False, sliding_window=None)
    return hf


# ---------------------------------------------------------------- tensor layouts

_COPY = ((lambda ts: ts[0]), (lambda t: [t]))
_CONV1D = ((lambda ts: ts[0].t()), (lambda t: [t.t()]))  # GPT-2 Conv1D [in, out] <-> Linear [out, in]


def _concat(sizes):
    return (lambda ts: torch.cat(ts, dim=0)), (lambda t: list(t.split(sizes, dim=0)))


def _neox_qkv(n_head, head_dim):  # rows (H, 3, D) in HF <-> (3, H, D) in ours; weight and bias alike
    return ((lambda ts: ts[0].unflatten(0, (n_head, 3, head_dim)).transpose(0, 1).flatten(0, 2)),
            (lambda t: [t.unflatten(0, (3, n_head, head_dim)).transpose(0, 1).flatten(0, 2)]))


def layout(cfg: GPTConfig, mt: str) -> list[tuple]:
    """[(our_name, [hf_names], to_ours, to_hf)] covering every parameter of GPT(cfg) (tied: wte once)."""
    p = PREFIX[mt]
    entries = []

    def add(ours, hf_names, fns=_COPY, bias=True):
        entries.append((f"{ours}.weight", [f"{n}.weight" for n in hf_names], *fns))
        if bias:  # a bias is split / regrouped like its weight, but never transposed
            entries.append((f"{ours}.bias", [f"{n}.bias" for n in hf_names], *(_COPY if fns is _CONV1D else fns)))

    ln = cfg.norm == "layernorm"  # LayerNorm has a bias, RMSNorm does not
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    if mt == "gpt2":
        add("wte", [p + "wte"], bias=False)
        add("wpe", [p + "wpe"], bias=False)
        for i in range(cfg.n_layer):
            h, b = f"{p}h.{i}.", f"blocks.{i}."
            add(b + "norm1", [h + "ln_1"])
            add(b + "attn.qkv", [h + "attn.c_attn"], _CONV1D)
            add(b + "attn.proj", [h + "attn.c_proj"], _CONV1D)
            add(b + "norm2", [h + "ln_2"])
            add(b + "mlp.fc", [h + "mlp.c_fc"], _CONV1D)
            add(b + "mlp.proj", [h + "mlp.c_proj"], _CONV1D)
        add("norm_f", [p + "ln_f"])
    elif mt == "gpt_neox":
        add("wte", [p + "embed_in"], bias=False)
        for i in range(cfg.n_layer):
            h, b = f"{p}layers.{i}.", f"blocks.{i}."
            add(b + "norm1", [h + "input_layernorm"])
            add(b + "attn.qkv", [h + "attention.query_key_value"], _neox_qkv(cfg.n_head, cfg.head_dim), cfg.qkv_bias)
            add(b + "attn.proj", [h + "attention.dense"], bias=cfg.attn_out_bias)
            add(b + "norm2", [h + "post_attention_layernorm"])
            add(b + "mlp.fc", [h + "mlp.dense_h_to_4h"])
            add(b + "mlp.proj", [h + "mlp.dense_4h_to_h"])
        add("norm_f", [p + "final_layer_norm"])
    elif mt == "gptj":
        add("wte", [p + "wte"], bias=False)
        for i in range(cfg.n_layer):
            h, b = f"{p}h.{i}.", f"blocks.{i}."
            add(b + "norm1", [h + "ln_1"])
            add(b + "attn.qkv", [h + f"attn.{x}_proj" for x in "qkv"], _concat([q, kv, kv]), bias=False)
            add(b + "attn.proj", [h + "attn.out_proj"], bias=False)
            add(b + "mlp.fc", [h + "mlp.fc_in"])
            add(b + "mlp.proj", [h + "mlp.fc_out"])
        add("norm_f", [p + "ln_f"])
    else:
        add("wte", [p + "embed_tokens"], bias=False)
        for i in range(cfg.n_layer):
            h, b = f"{p}layers.{i}.", f"blocks.{i}."
            add(b + "norm1", [h + "input_layernorm"], bias=ln)
            add(b + "attn.qkv", [h + f"self_attn.{x}_proj" for x in "qkv"], _concat([q, kv, kv]), cfg.qkv_bias)
            add(b + "attn.proj", [h + "self_attn.o_proj"], bias=cfg.attn_out_bias)
            for x in "qk" if cfg.qk_norm else "":  # Qwen3's per-head RMSNorm gains [D]
                add(b + f"attn.{x}_norm", [h + f"self_attn.{x}_norm"], bias=False)
            add(b + "norm2", [h + "post_attention_layernorm"], bias=ln)
            add(b + "mlp.fc", [h + "mlp.gate_proj", h + "mlp.up_proj"], _concat([cfg.mlp_hidden] * 2), cfg.mlp_bias)
            add(b + "mlp.proj", [h + "mlp.down_proj"], bias=cfg.mlp_bias)
        add("norm_f", [p + "norm"], bias=ln)
    if not cfg.tie_embeddings:
        add("lm_head", ["embed_out" if mt == "gpt_neox" else "lm_head"], bias=cfg.lm_head_bias)
    elif cfg.lm_head_bias:
        entries.append(("lm_head.bias", ["lm_head.bias"], *_COPY))
    return entries


# ---------------------------------------------------------------- checkpoint files

class _Checkpoint:
    """Name -> tensor access over the weight files of one checkpoint folder, one tensor at a time."""

    def __init__(self, directory: Path):
        self.directory = directory
        d = directory
        if (d / "model.safetensors").is_file():
            self.files = dict.fromkeys(safetensors.read_header(d / "model.safetensors")[0], d / "model.safetensors")
        elif (d / "model.safetensors.index.json").is_file():
            self.files = self._index(d / "model.safetensors.index.json")
        elif (d / "pytorch_model.bin").is_file():
            self.files = dict.fromkeys(self._load_bin(d / "pytorch_model.bin"), d / "pytorch_model.bin")
        elif (d / "pytorch_model.bin.index.json").is_file():
            self.files = self._index(d / "pytorch_model.bin.index.json")
        else:
            raise CheckpointError(f"{d}: no weights found (expected model.safetensors, model.safetensors.index.json, "
                                  "pytorch_model.bin or pytorch_model.bin.index.json)")
        self._bin_path, self._bin = None, None

    def _index(self, path: Path) -> dict:
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{path}: not a valid index file ({e!r})") from None
        files = {name: path.parent / f for name, f in weight_map.items()}
        for f in set(files.values()):
            if not f.is_file():
                raise CheckpointError(f"{path}: lists shard {f.name}, which is missing")
        return files

    @staticmethod
    def _load_bin(path: Path) -> dict:
        # mmap: tensors stay in the file until read; weights_only: no code runs from the pickle
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)

    def get(self, name: str, dtype: torch.dtype, device) -> torch.Tensor:
        path = self.files[name]
        if path.suffix == ".safetensors":
            t = safetensors.load_file(path, dtype=dtype, names=[name])[name]
        else:
            if path != self._bin_path:  # keep one .bin shard mapped at a time
                self._bin_path, self._bin = path, self._load_bin(path)
            t = self._bin[name].to(dtype=dtype, copy=True)  # copy: leave nothing backed by the file
        return t.to(device)


def _read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (a Hugging Face checkpoint folder needs config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def load_pretrained(name_or_dir, dtype: torch.dtype | None = None, device="cpu") -> GPT:
    """GPT from a Hugging Face checkpoint folder or a hub name (dpo.interop.hub.resolve_model_dir). dtype None
    means float32. Weights are read tensor by tensor into a model built on the meta device, so the model
    is never held twice."""
    directory = resolve_model_dir(name_or_dir)
    hf = _read_config(directory)
    cfg = config_from_hf(hf, source=str(directory / "config.json"))
    mt, dtype = hf["model_type"], dtype or torch.float32
    ckpt = _Checkpoint(directory)
    # names as transformers writes them: prefixed base model, lm_head outside (old files lack the prefix)
    prefix = PREFIX[mt]
    full = {(n if n.startswith((prefix, "lm_head.", "embed_out.")) else prefix + n): n for n in ckpt.files}
    if mt == "gpt_neox" and "lm_head.weight" in full:  # transformers 5 renamed NeoX's embed_out
        full["embed_out.weight"] = full.pop("lm_head.weight")
    with torch.device("meta"):
        model = GPT(cfg)
    meta = model.state_dict()
    loaded, used = {}, set()
    for ours, hf_names, to_ours, _ in layout(cfg, mt):
        missing = [n for n in hf_names if n not in full]
        if missing:
            raise CheckpointError(f"{directory}: tensor {missing[0]!r} is missing from the checkpoint")
        t = to_ours([ckpt.get(full[n], dtype, device) for n in hf_names]).contiguous()
        if t.shape != meta[ours].shape:
            raise CheckpointError(f"{directory}: {', '.join(hf_names)} gives shape {tuple(t.shape)} but config.json "
                                  f"implies {tuple(meta[ours].shape)} for {ours}")
        loaded[ours] = t
        used.update(hf_names)
    unused = [n for n in full if n not in used and not IGNORED.search(n)
              and not (n == "lm_head.weight" and cfg.tie_embeddings)]  # a tied copy of wte
    if unused:
        raise CheckpointError(f"{directory}: {len(unused)} checkpoint tensors do not fit model_type {mt}: "
                              f"{', '.join(unused[:5])}")
    model.load_state_dict(loaded, strict=False, assign=True)
    model.reset_buffers(device)  # also points lm_head at the new wte.weight when tied
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise CheckpointError(f"{directory}: no tensor loaded for {', '.join(still_meta[:5])}")
    return model


def save_pretrained(model: GPT, directory, dtype: torch.dtype | None = None, state_dict: dict | None = None) -> None:
    """Write config.json and model.safetensors (each atomically) that transformers' from_pretrained
    loads with the same logits. dtype None keeps the parameters' dtype. Tied weights: wte only.
    state_dict: the weights to write instead of model.state_dict() (e.g. gathered from FSDP shards)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    mt = model_type_of(cfg)
    state = model.state_dict() if state_dict is None else state_dict
    tensors = {}
    for ours, hf_names, _, to_hf in layout(cfg, mt):
        for name, t in zip(hf_names, to_hf(state[ours].detach())):
            tensors[name] = t if dtype is None else t.to(dtype)
    save_file_dtype = dtype or next(iter(tensors.values())).dtype
    safetensors.save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    atomic_write(directory / "config.json", json.dumps(config_to_hf(cfg, save_file_dtype), indent=2) + "\n")
