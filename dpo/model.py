"""One GPT-style decoder for six families: GPT-2, GPT-NeoX (Pythia), GPT-J, Llama (Mistral, Qwen2), Qwen3
and SmolLM3.

The families differ only in a handful of switches, so `GPTConfig` holds switches, not family names:

    family   positions            norm       mlp            block                       biases
    GPT-2    learned table        LayerNorm  GELU-tanh      x + attn(ln1), + mlp(ln2)   all, tied head
    NeoX     rotary, half-split,  LayerNorm  GELU           x + attn(ln1(x))            all, untied head
             first rotary_pct                               + mlp(ln2(x))  (parallel)
    GPT-J    rotary, interleaved  LayerNorm  GELU-tanh      x + attn(ln(x)) + mlp(ln(x))  mlp + head bias
    Llama    rotary, half-split   RMSNorm    SwiGLU         x + attn(n1), + mlp(n2)     none; GQA
    Qwen3    as Llama, q and k    RMSNorm    SwiGLU         as Llama                    none; GQA, head_dim
             RMSNorm-ed per head                                                        free of n_embd / n_head
             before rotary (qk_norm)
    SmolLM3  as Llama, no rotary  RMSNorm    SwiGLU         as Llama                    none; GQA, tied head
             in nope_layers (every 4th: NoPE, attention sees no positions)

Shapes: B batch, T new tokens, S = past + T key positions, C n_embd, H heads, Hkv key/value heads,
D head_dim, V vocab. Padding: `attention_mask [B, S]` (1 = token, 0 = pad) masks pad keys, and token
positions are counted over real tokens only (cumsum(mask) - 1), so a left-padded prompt sees the same
positions as an unpadded one, as Hugging Face `generate` does.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

ACTIVATIONS = {
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
    "relu": F.relu,
}


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_head: int | None = None  # < n_head: grouped-query attention (None: = n_head)
    head_dim: int | None = None  # None: n_embd // n_head
    mlp_hidden: int | None = None  # None: 4 * n_embd
    max_seq_len: int = 1024
    position: str = "learned"  # "learned" (a table of max_seq_len rows) | "rotary"
    rotary_dim: int | None = None  # leading dims of each head that rotate (None: all of head_dim)
    rotary_interleaved: bool = False  # GPT-J pairs dims (2i, 2i+1); NeoX/Llama pair (i, i + rotary_dim/2)
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "llama3" | "linear", ...} as in HF config.json
    nope_layers: list[int] | None = None  # indices of the layers whose q, k skip rotary (SmolLM3's NoPE layers)
    qk_norm: bool = False  # RMSNorm (weight [D]) over each head's D dims of q and k, before rotary (Qwen3)
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-5
    activation: str = "gelu_tanh"  # a key of ACTIVATIONS
    gated_mlp: bool = False  # act(x W_gate) * (x W_up), e.g. SwiGLU with activation "silu"
    parallel_residual: bool = False  # x + attn(norm1(x)) + mlp(norm2(x)) instead of sequential
    shared_norm: bool = False  # parallel block feeds one norm to both branches (GPT-J): no norm2
    qkv_bias: bool = True
    attn_out_bias: bool = True
    mlp_bias: bool = True
    lm_head_bias: bool = False
    tie_embeddings: bool = True  # lm_head.weight is wte.weight
    dropout: float = 0.0  # embeddings, attention probabilities and both residual branches
    bos_id: int | None = None
    eos_id: int | list[int] | None = None  # a list: any of them ends a sample (dpo.generation.stop_ids)

    def __post_init__(self):
        def check(ok, msg):
            if not ok:
                raise ValueError(f"GPTConfig: {msg}")
        if self.head_dim is None:
            check(self.n_embd % self.n_head == 0, f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
            self.head_dim = self.n_embd // self.n_head
        self.n_kv_head = self.n_kv_head or self.n_head
        self.mlp_hidden = self.mlp_hidden or 4 * self.n_embd
        check(self.n_head % self.n_kv_head == 0, f"n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}")
        check(self.position in ("learned", "rotary"), f"position must be 'learned' or 'rotary', got {self.position!r}")
        if self.position == "rotary":
            self.rotary_dim = self.rotary_dim or self.head_dim
            check(self.rotary_dim % 2 == 0 and 0 < self.rotary_dim <= self.head_dim,
                  f"rotary_dim must be even and in (0, head_dim={self.head_dim}], got {self.rotary_dim}")
        check(self.norm in ("layernorm", "rmsnorm"), f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        check(self.activation in ACTIVATIONS, f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        check(not self.shared_norm or self.parallel_residual, "shared_norm needs parallel_residual")
        check(all(0 <= i < self.n_layer for i in self.nope_layers or ()),
              f"nope_layers must be layer indices in [0, n_layer={self.n_layer}), got {self.nope_layers}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            check(kind in ("llama3", "linear", "default"),
                  f"rope_scaling type {kind!r} is not supported (supported: llama3, linear)")


def rope_inv_freq(cfg: GPTConfig, device=None) -> torch.Tensor:
    """Rotation frequency of each dim pair: theta^(-2i / rotary_dim), i < rotary_dim / 2 → [rotary_dim / 2]."""
    dim = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":
        # Llama 3.1: long wavelengths slow down by `factor`, short ones stay, a smooth blend in between.
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = torch.where(wavelen > old_len / low, inv_freq / factor,
                               torch.where(wavelen < old_len / high, inv_freq, blended))
    return inv_freq


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate the leading 2 * cos.shape[-1] dims of x: [B, H, T, D]; cos, sin: [B, 1, T, R/2].

    Pair (x1, x2) turns by the angle: (x1 cos - x2 sin, x2 cos + x1 sin). The pairs are (2i, 2i+1) when
    `interleaved` (GPT-J's rotate_every_two) and (i, i + R/2) otherwise (NeoX/Llama's rotate_half)."""
    r = 2 * cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    x1, x2 = (x_rot[..., 0::2], x_rot[..., 1::2]) if interleaved else x_rot.chunk(2, dim=-1)
    y1, y2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
    y = torch.stack((y1, y2), dim=-1).flatten(-2) if interleaved else torch.cat((y1, y2), dim=-1)
    return torch.cat((y, x_pass), dim=-1)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, the statistic taken in fp32 (as Llama does, so bf16 matches HF)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def make_norm(cfg: GPTConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.n_embd, cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)


class KVCache:
    """Keys and values of the tokens seen so far, preallocated per layer: k[i], v[i]: [B, Hkv, max_len, D].

    `length` counts filled positions; GPT.forward advances it after all layers have written. A plain class,
    not a dataclass: wrappers that rebuild dataclass arguments (FSDP2's input casting) would update a copy."""

    def __init__(self, k: list, v: list, length: int = 0):
        self.k, self.v, self.length = k, v, length

    @classmethod
    def empty(cls, cfg: GPTConfig, batch_size: int, max_len: int, device=None, dtype=None):
        shape = (batch_size, cfg.n_kv_head, max_len, cfg.head_dim)
        make = lambda: torch.zeros(shape, device=device, dtype=dtype)  # noqa: E731
        return cls([make() for _ in range(cfg.n_layer)], [make() for _ in range(cfg.n_layer)])

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v [B, Hkv, T, D] after the cached ones; return all keys and values [B, Hkv, S, D]."""
        end = self.length + k.shape[2]
        if end > self.k[layer].shape[2]:
            raise ValueError(f"KVCache: {end} positions exceed its capacity {self.k[layer].shape[2]}")
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        self.split = (q_dim, kv_dim, kv_dim)
        self.qkv = nn.Linear(cfg.n_embd, q_dim + 2 * kv_dim, bias=cfg.qkv_bias)  # rows: [q heads | k | v]
        self.proj = nn.Linear(q_dim, cfg.n_embd, bias=cfg.attn_out_bias)
        self.resid_drop = nn.Dropout(cfg.dropout)
        if cfg.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps), RMSNorm(cfg.head_dim, cfg.norm_eps)

    def forward(self, x, rope, attn_mask, kv_cache=None, layer=0):
        """x: [B, T, C]; rope: (cos, sin) [B, 1, T, R/2] or None; attn_mask: [B, 1, T, S] bool or None (causal),
        or for one packed row (B = 1) a list of (start, end, mask [1, 1, end − start, end − start]) blocks.

        With qk_norm, q [B, H, T, D] and k [B, Hkv, T, D] are each RMS-normalised over D (one gain [D] shared by
        all heads) before rotary, so the scale of the scores q.k / sqrt(D) no longer follows the projections' scale."""
        cfg, (B, T, _) = self.cfg, x.shape
        q, k, v = self.qkv(x).split(self.split, dim=-1)
        q = q.view(B, T, cfg.n_head, cfg.head_dim).transpose(1, 2)  # [B, H, T, D]
        k = k.view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
        v = v.view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q = apply_rotary(q, *rope, cfg.rotary_interleaved)
            k = apply_rotary(k, *rope, cfg.rotary_interleaved)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)
        if isinstance(attn_mask, list):  # one packed row: each sequence's block alone, no work across blocks
            y = torch.cat([self.attend(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], mask) for s, e, mask in attn_mask], 2)
        else:
            y = self.attend(q, k, v, attn_mask)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, -1)))

    def attend(self, q, k, v, attn_mask):
        """q [B, H, T, D], k and v [B, Hkv, S, D], attn_mask [B, 1, T, S] bool or None (causal) -> [B, H, T, D]."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
                                              dropout_p=self.cfg.dropout if self.training else 0.0,
                                              enable_gqa=self.cfg.n_kv_head != self.cfg.n_head)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.gated = cfg.gated_mlp
        self.act = ACTIVATIONS[cfg.activation]
        # gated: one matmul makes [gate | up] rows
        self.fc = nn.Linear(cfg.n_embd, cfg.mlp_hidden * (2 if cfg.gated_mlp else 1), bias=cfg.mlp_bias)
        self.proj = nn.Linear(cfg.mlp_hidden, cfg.n_embd, bias=cfg.mlp_bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        h = self.fc(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.drop(self.proj(h))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.parallel = cfg.parallel_residual
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.norm2 = None if cfg.shared_norm else make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, attn_mask, kv_cache=None, layer=0):
        h = self.norm1(x)
        a = self.attn(h, rope, attn_mask, kv_cache, layer)
        if not self.parallel:
            x = x + a
            return x + self.mlp(self.norm2(x))
        return x + a + self.mlp(h if self.norm2 is None else self.norm2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = cfg = config
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.n_embd) if cfg.position == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=cfg.lm_head_bias)
        self.register_buffer("inv_freq", None, persistent=False)
        self.activation_checkpointing = False  # set by the training loop (train.activation_checkpointing)
        self.reset_buffers()
        if self.wte.weight.device.type != "meta":  # on meta: to_empty(), then init_weights() or a load
            self.init_weights()

    def tie_weights(self):
        if self.config.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def reset_buffers(self, device=None):
        """After building on meta and to_empty() (or assign-loading): recompute the non-persistent
        buffers (rotary frequencies) and re-tie lm_head to wte, since to_empty makes new tensors."""
        self.tie_weights()
        if self.config.position == "rotary":
            device = device if device is not None else self.wte.weight.device
            self.inv_freq = rope_inv_freq(self.config, device=device)

    def init_weights(self):
        """GPT-2 init for training from scratch: N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 L))
        so the residual stream's variance does not grow with depth; biases 0, norms 1."""
        for name, p in self.named_parameters():
            if p.dim() == 1:  # norm gains 1, norm and linear biases 0
                nn.init.ones_(p) if "norm" in name and name.endswith("weight") else nn.init.zeros_(p)
            elif name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, std=0.02)

    def forward(self, input_ids, attention_mask=None, kv_cache: KVCache | None = None, return_hidden=False,
                positions=None, segments=None, block_masks=None):
        """input_ids: [B, T]; attention_mask: [B, S] over cached + new tokens (S = past + T), 1 = token.
        Or, for blocks of sequences laid out back to back in one row (B = 1, batching.collate_shared), instead of
        attention_mask: their own positions [1, T]; segments [n + 1] (block i is [segments[i], segments[i + 1]),
        no query sees a key outside its block); block_masks [Σ_i L_i²] bool, block i's [L_i, L_i] mask (True
        where a query may attend a key) flattened, in order. Attention runs block by block, none of it across
        blocks, and no [T, T] mask exists.

        Returns logits [B, T, V], or with return_hidden the final normed hidden states [B, T, C] such that
        logits == self.lm_head(hidden)."""
        cfg, (B, T) = self.config, input_ids.shape
        past = kv_cache.length if kv_cache is not None else 0
        S = past + T
        if S > cfg.max_seq_len and positions is None:  # (laid-out rows: each sequence's positions fit)
            raise ValueError(f"sequence of {S} positions exceeds max_seq_len {cfg.max_seq_len}")
        device = input_ids.device
        if positions is not None:
            bounds = segments.tolist()
            lengths = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
            masks = block_masks.split([n * n for n in lengths])
            pos, attn_mask = positions, [(s, s + n, m.view(1, 1, n, n)) for s, n, m in zip(bounds, lengths, masks)]
        elif attention_mask is None:
            pos = torch.arange(past, S, device=device).expand(B, T)
            # no pads: plain causal attention (is_causal fast path) unless a cache offsets the queries
            attn_mask = None if past == 0 else torch.ones(1, 1, T, S, dtype=torch.bool, device=device)
        else:
            if attention_mask.shape != (B, S):
                raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)}, expected {(B, S)}")
            keep = attention_mask.bool()
            pos = (keep.long().cumsum(-1) - 1).clamp(min=0)[:, past:]  # count real tokens only
            q_idx = torch.arange(past, S, device=device)[:, None]
            k_idx = torch.arange(S, device=device)[None, :]
            # a query always sees itself, so a pad's row is never empty (an empty row gives NaN)
            attn_mask = ((k_idx <= q_idx) & keep[:, None, None, :]) | (k_idx == q_idx)  # [B, 1, T, S]
        x = self.wte(input_ids)
        if self.wpe is not None:
            x = x + self.wpe(pos)
        x = self.drop(x)
        rope = None
        if cfg.position == "rotary":
            freqs = pos[..., None].float() * self.inv_freq  # [B, T, R/2]
            rope = (freqs.cos().to(x.dtype)[:, None], freqs.sin().to(x.dtype)[:, None])
        for i, block in enumerate(self.blocks):
            rope_i = None if i in (cfg.nope_layers or ()) else rope  # a NoPE layer: no positions in q, k
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                # keep only each block's input; recompute its activations in backward (memory for compute)
                x = torch.utils.checkpoint.checkpoint(block, x, rope_i, attn_mask, use_reentrant=False)
            else:
                x = block(x, rope_i, attn_mask, kv_cache, i)
        if kv_cache is not None:
            kv_cache.length = S
        x = self.norm_f(x)
        return x if return_hidden else self.lm_head(x)

    def num_params(self, exclude_embeddings: bool = True) -> int:
        """Parameter count (a tied matrix once). exclude_embeddings drops the lookup tables (wpe, and wte
        unless it doubles as lm_head), leaving the weights that take part in matmuls."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.wpe.weight.numel() if self.wpe is not None else 0
            n -= 0 if self.config.tie_embeddings else self.wte.weight.numel()
        return n
