"""LoRA (Hu et al., 2021): low-rank adapters on chosen linear layers of a frozen GPT.

    y = x W^T + b  +  (dropout(x) A^T B^T) · alpha / r        A [r, in], B [out, r]

A starts as peft initialises it (kaiming-uniform, a = √5: uniform in ±1/√in) and B at zero, so a freshly
wrapped model computes exactly what the base model does; only A and B are trained. At init A's gradient
is zero (it is multiplied by B = 0) and B's is not; A starts learning once B has moved.

The reference model of DPO is the same model with the adapters off (`adapters_disabled`), so no second
copy is ever loaded. A `LoRALinear` keeps the base layer's `weight` and `bias` under their own names, so
the state dict keeps every base key (`blocks.0.attn.qkv.weight`) and adds `blocks.0.attn.qkv.lora_A` /
`.lora_B`: `save_pretrained` of a wrapped model writes the unchanged base, and checkpoints round-trip.

Targets are the linear layers inside the blocks: attn.qkv, attn.proj, mlp.fc, mlp.proj (a target
matches a module name or its ending after a dot, `all-linear` takes all four). lm_head is not one: the
log-probs read its weight directly (dpo/logprobs.py).

Files: `merge_lora` / `merged_state_dict` fold B A · alpha / r into the weights (then `save_pretrained`
gives a plain Hugging Face model); `save_adapter` / `load_adapter` write and read PEFT's layout
(adapter_config.json + adapter_model.safetensors, keys `base_model.model.<hf module>.lora_A.weight`).

Fused layers. Where Hugging Face keeps separate modules that we fuse (Llama / GPT-J q_proj, k_proj,
v_proj in attn.qkv; Llama gate_proj, up_proj in mlp.fc), the adapter is written as one PEFT adapter per
Hugging Face module, each with the same A and the rows of B that belong to it: B A restricted to the
q rows is B_q A, so peft computes exactly our output. (With dropout > 0, training draws one mask for the
fused layer where peft would draw one per module; outputs at eval are equal.) The reverse holds only for
adapters written that way: `load_adapter` refuses a fused target whose parts carry different A matrices
or only some of the parts (e.g. a peft adapter on q_proj and v_proj alone), naming the module. GPT-2's
fused c_attn and GPT-NeoX's query_key_value map 1:1 (NeoX's rows regrouped per head, as for the weight).
"""
import contextlib
import json
import math
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from dpo.errors import UserError
from dpo.files import atomic_write
from dpo.interop import safetensors
from dpo.interop.hf_checkpoint import layout, model_type_of

ALL_LINEAR = "all-linear"
# Hugging Face module names a user may bring from peft / TRL configs -> ours (for the error message)
HF_NAMES = {"q_proj": "attn.qkv", "k_proj": "attn.qkv", "v_proj": "attn.qkv", "c_attn": "attn.qkv",
            "query_key_value": "attn.qkv", "o_proj": "attn.proj", "out_proj": "attn.proj", "dense": "attn.proj",
            "c_proj": "attn.proj or mlp.proj", "gate_proj": "mlp.fc", "up_proj": "mlp.fc", "c_fc": "mlp.fc",
            "fc_in": "mlp.fc", "dense_h_to_4h": "mlp.fc", "down_proj": "mlp.proj", "fc_out": "mlp.proj",
            "dense_4h_to_h": "mlp.proj"}
ADAPTER_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")


class LoRAError(UserError, ValueError):
    pass


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update. x [..., in] -> [..., out]:

        F.linear(x, weight, bias) + (dropout(x) @ lora_A.T @ lora_B.T) * scale,   scale = alpha / rank

    `weight` [out, in] and `bias` [out] are the base layer's own Parameters (frozen, same objects);
    lora_A [rank, in], lora_B [out, rank] live on the weight's device and dtype. `enabled = False`
    gives the base layer's output exactly (see `adapters_disabled`)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, rank, **factory))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True
        self.reset_lora_parameters()

    def reset_lora_parameters(self):
        """A as peft (kaiming-uniform, a = √5), B = 0: the update starts at zero."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if not self.enabled:
            return y
        return y + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scale

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, alpha={self.alpha}"


def lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Within the block, every LoRALinear of `model` (wrapped by DDP / FSDP2 or not) computes its base layer
    alone: the reference model of DPO. The previous switches come back afterwards."""
    modules = [m for _, m in lora_modules(model)]
    before = [m.enabled for m in modules]
    for m in modules:
        m.enabled = False
    try:
        yield model
    finally:
        for m, on in zip(modules, before):
            m.enabled = on


class WithoutAdapters:
    """The frozen reference of a LoRA run: the policy itself with its adapters switched off, so no second
    copy of the weights is loaded. Called like the model; its other attributes (lm_head, config) are the
    policy's."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, *args, **kwargs):
        with adapters_disabled(self.model):
            return self.model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def _candidates(model: nn.Module) -> list[str]:
    """Names of the linear layers inside transformer blocks (blocks.{i}.attn.qkv, ...)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and re.search(r"(^|\.)blocks\.\d+\.", n)]


def _no_match_error(missing: list[str], candidates: list[str]) -> LoRAError:
    kinds = list(dict.fromkeys(re.sub(r"^(.*\.)?blocks\.\d+\.", "", n) for n in candidates))
    n_layer = len({re.search(r"blocks\.\d+\.", n).group(0) for n in candidates})
    hints = [f"{t!r} is Hugging Face's name, ours is {HF_NAMES[t.split('.')[-1]]}" for t in missing
             if t.split(".")[-1] in HF_NAMES]
    hints += ["lm_head is not a target (the log-probs read its weight directly)"] * any("lm_head" in t for t in missing)
    return LoRAError(f"LoRA target_modules {', '.join(map(repr, missing))} match no linear layer of the model; its "
                     f"linear layers are {', '.join(kinds)} in each of blocks.0 .. blocks.{n_layer - 1} "
                     f"(a target is a name or its ending, e.g. 'attn.qkv' or 'blocks.0.mlp.fc', or {ALL_LINEAR!r})"
                     + "".join(f"; {h}" for h in hints))


def add_lora(model: nn.Module, rank: int, alpha: float, dropout: float, target_modules: list[str]) -> list[str]:
    """Replace the linear layers of `model` named by target_modules (a name, its ending after a dot, or
    'all-linear') by LoRALinear, freeze every other parameter, and return the wrapped names in model order.
    The optimizer should then see only the parameters with requires_grad (the lora_A / lora_B)."""
    if lora_modules(model):
        raise LoRAError("add_lora: the model already has LoRA adapters")
    if not (isinstance(rank, int) and rank > 0) or not alpha > 0 or not 0.0 <= dropout < 1.0:
        raise LoRAError(f"LoRA needs rank > 0 (an integer), alpha > 0 and 0 <= dropout < 1; "
                        f"got rank={rank!r}, alpha={alpha!r}, dropout={dropout!r}")
    candidates = _candidates(model)
    matches = lambda name, t: t == ALL_LINEAR or name == t or name.endswith("." + t)  # noqa: E731
    missing = [t for t in target_modules if not any(matches(n, t) for n in candidates)]
    if missing or not target_modules:
        raise _no_match_error(missing or ["(none given)"], candidates)
    wrapped = [n for n in candidates if any(matches(n, t) for t in target_modules)]
    model.requires_grad_(False)
    for name in wrapped:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout))
    return wrapped


def merged_weight(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float) -> torch.Tensor:
    """weight [out, in] + scale · lora_B [out, r] @ lora_A [r, in], summed in fp32 (or wider), in weight's dtype."""
    wide = torch.promote_types(weight.dtype, torch.float32)
    return (weight.to(wide) + scale * (lora_B.to(wide) @ lora_A.to(wide))).to(weight.dtype)


def merged_state_dict(model: nn.Module, state_dict: dict | None = None) -> dict[str, torch.Tensor]:
    """The state dict of the merged model, without lora keys; the model is left as it is. state_dict: the
    weights to merge instead of model.state_dict() (e.g. gathered from FSDP shards), with the same keys.
    For `save_pretrained(model, dir, state_dict=merged_state_dict(model, state))`."""
    state = dict(model.state_dict() if state_dict is None else state_dict)
    for name, m in lora_modules(model):
        A, B = state.pop(f"{name}.lora_A"), state.pop(f"{name}.lora_B")
        state[f"{name}.weight"] = merged_weight(state[f"{name}.weight"].detach(), A, B, m.scale)
    return state


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain nn.Linear layers back, in place (the weight
    Parameters are reused). Returns the model; its state dict then has the base model's keys only."""
    for name, m in lora_modules(model):
        m.weight.copy_(merged_weight(m.weight, m.lora_A, m.lora_B, m.scale))
        linear = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        linear.weight, linear.bias = m.weight, m.bias
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, linear)
    return model


# ---------------------------------------------------------------- PEFT's adapter files

def _hf_modules(model: nn.Module, hf_model_type: str | None) -> tuple[str, dict]:
    """(model_type, {our module: (hf module paths, to_ours, to_hf)}) for the layers of a GPT.

    lora_B's rows split / regroup with the weight's (to_hf / to_ours), lora_A is shared by the parts. GPT-2
    alone differs: its Conv1D weights are [in, out] (to_hf transposes), but peft's lora_A / lora_B on a
    Conv1D are [r, in] / [out, r] as on a Linear, so there both are copied as they are."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(model, "blocks"):
        raise LoRAError(f"LoRA adapter files are written for a GPT, not a {type(model).__name__}")
    own = model_type_of(cfg)
    mt = hf_model_type or own
    names = lambda t: [hf for _, hf, *_ in layout(cfg, t)]  # noqa: E731
    try:
        fits = names(mt) == names(own)  # e.g. mistral / qwen2 module names for a llama-layout model
    except KeyError:  # not a model_type we know
        fits = False
    if not fits:
        raise LoRAError(f"hf_model_type {mt!r} does not fit this model, whose Hugging Face layout is {own}")
    return mt, {ours.removesuffix(".weight"): ([n.removesuffix(".weight") for n in hf], to_ours, to_hf)
                for ours, hf, to_ours, to_hf in layout(cfg, mt) if ours.endswith(".weight")}


def _peft_targets(paths: list[str], n_layer: int) -> list[str]:
    """target_modules for peft: `self_attn.q_proj` where every layer has it, else the full module paths."""
    by_kind = {}
    for p in paths:
        by_kind.setdefault(re.sub(r"^.*?\.\d+\.", "", p), []).append(p)
    return sorted(t for kind, ps in by_kind.items() for t in ([kind] if len(ps) == n_layer else ps))


def save_adapter(model: nn.Module, directory, base_model_name_or_path: str, hf_model_type: str | None = None,
                 state_dict: dict | None = None) -> None:
    """Write the adapters of a GPT in PEFT's layout: adapter_model.safetensors, then adapter_config.json
    (each atomically), loadable by `peft.PeftModel.from_pretrained(<base in transformers>, directory)`.
    hf_model_type: default the model's own (model_type_of); mistral / qwen2 for a Llama-layout model.
    state_dict: the weights to write instead of model.state_dict() (e.g. gathered from FSDP shards)."""
    modules = lora_modules(model)
    if not modules:
        raise LoRAError("save_adapter: the model has no LoRA adapters (add_lora first)")
    settings = {(m.rank, m.alpha, getattr(m.dropout, "p", 0.0)) for _, m in modules}
    if len(settings) > 1:
        raise LoRAError(f"save_adapter: the adapters differ in (rank, alpha, dropout): {sorted(settings)}; "
                        "PEFT's adapter_config.json holds one setting")
    (rank, alpha, dropout), = settings
    mt, hf = _hf_modules(model, hf_model_type)
    state = model.state_dict() if state_dict is None else state_dict
    tensors, paths = {}, []
    for name, _ in modules:
        hf_paths, _, to_hf = hf[name]
        A, B = state[f"{name}.lora_A"].detach(), state[f"{name}.lora_B"].detach()
        for path, b in zip(hf_paths, [B] if mt == "gpt2" else to_hf(B)):  # see _hf_modules
            tensors[f"base_model.model.{path}.lora_A.weight"] = A  # shared by the parts of a fused layer
            tensors[f"base_model.model.{path}.lora_B.weight"] = b
            paths.append(path)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base_model_name_or_path),
              "r": rank, "lora_alpha": alpha, "lora_dropout": dropout,
              "target_modules": _peft_targets(paths, model.config.n_layer), "bias": "none",
              "fan_in_fan_out": mt == "gpt2", "inference_mode": True, "init_lora_weights": True,
              "use_rslora": False, "use_dora": False, "modules_to_save": None}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    safetensors.save_file(tensors, directory / "adapter_model.safetensors", metadata={"format": "pt"})
    atomic_write(directory / "adapter_config.json", json.dumps(config, indent=2) + "\n")


def read_adapter_config(directory) -> dict:
    """adapter_config.json of a PEFT LoRA adapter folder, checked for what our LoRALinear computes."""
    path = Path(directory) / "adapter_config.json"
    if not path.is_file():
        raise LoRAError(f"{path}: not found (a PEFT adapter folder holds adapter_config.json and "
                        "adapter_model.safetensors)")
    try:
        conf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LoRAError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    unsupported = [f"{k}={conf.get(k)!r}" for k, ok in [
        ("peft_type", conf.get("peft_type") == "LORA"), ("bias", conf.get("bias", "none") == "none"),
        ("use_rslora", not conf.get("use_rslora")), ("use_dora", not conf.get("use_dora")),
        ("rank_pattern", not conf.get("rank_pattern")), ("alpha_pattern", not conf.get("alpha_pattern")),
        ("modules_to_save", not conf.get("modules_to_save")), ("r", isinstance(conf.get("r"), int))] if not ok]
    if unsupported:
        raise LoRAError(f"{path}: {', '.join(unsupported)} is not supported (plain LoRA: peft_type LORA, bias none, "
                        "one r and lora_alpha, no rslora / dora / modules_to_save)")
    return conf


@torch.no_grad()
def load_adapter(model: nn.Module, directory) -> list[str]:
    """Load a PEFT LoRA adapter folder into a GPT: adds the adapters first (rank, alpha, dropout from
    adapter_config.json) unless the model already has them on the same layers. Returns the wrapped names."""
    directory = Path(directory)
    conf = read_adapter_config(directory)
    weights = directory / "adapter_model.safetensors"
    if not weights.is_file():
        raise LoRAError(f"{weights}: not found")
    mt, hf = _hf_modules(model, None)
    ours_of = {path: (name, i) for name, (paths, _, _) in hf.items() for i, path in enumerate(paths)}
    parts = {}  # our module -> {(part index, "A" | "B"): tensor}
    for key, t in safetensors.load_file(weights).items():
        m = ADAPTER_KEY.fullmatch(key)
        if m is None or m.group(1) not in ours_of:
            raise LoRAError(f"{weights}: tensor {key!r} is not a LoRA weight of a linear layer of this model")
        name, i = ours_of[m.group(1)]
        parts.setdefault(name, {})[i, m.group(2)] = t
    for name, got in parts.items():
        paths = hf[name][0]
        if len(got) != 2 * len(paths) or any(not torch.equal(got[0, "A"], got[i, "A"]) for i in range(len(paths))):
            raise LoRAError(f"{weights}: {', '.join(paths)} are one fused layer here ({name}); an adapter on them "
                            "needs all of them with one shared lora_A (as save_adapter writes)")
    existing = [n for n, _ in lora_modules(model)]
    if not existing:
        add_lora(model, conf["r"], conf["lora_alpha"], conf.get("lora_dropout", 0.0), list(parts))
    elif sorted(existing) != sorted(parts):
        raise LoRAError(f"{directory}: the adapter is on {sorted(parts)}, the model's adapters on {sorted(existing)}")
    for name, got in parts.items():
        module = model.get_submodule(name)
        Bs = [got[i, "B"] for i in range(len(hf[name][0]))]
        A, B = got[0, "A"], Bs[0] if mt == "gpt2" else hf[name][1](Bs)
        if (A.shape, B.shape) != (module.lora_A.shape, module.lora_B.shape) or module.alpha != conf["lora_alpha"]:
            raise LoRAError(f"{directory}: {name} has lora_A {tuple(A.shape)}, lora_B {tuple(B.shape)}, alpha "
                            f"{conf['lora_alpha']}; the model expects {tuple(module.lora_A.shape)}, "
                            f"{tuple(module.lora_B.shape)}, alpha {module.alpha}")
        module.lora_A.copy_(A)
        module.lora_B.copy_(B)
    return existing or [n for n, _ in lora_modules(model)]
