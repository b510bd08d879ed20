"""Run configuration: plain typed dataclasses, filled from a YAML file and then `key=value` overrides.

    python train.py --config configs/quickstart.yaml loss.beta=0.5 train.lr=1e-6

Every key is checked: an unknown key fails with the list of valid ones, a value of the wrong type
fails naming the key, the expected type and where the value came from (file or command line).
The meaning of each key is documented next to it in the shipped configs (configs/*.yaml).
"""
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dpo.errors import UserError
from dpo.files import atomic_write, check_writable


class ConfigError(UserError, ValueError):
    pass


@dataclass
class ModelConfig:
    name: str = ""                  # HF checkpoint dir, hub name (gpt2-large) or run checkpoint; "" = new model
    tokenizer: str = ""             # tokenizer dir / .model file; "" = the one stored with `name`
    dtype: str = "float32"          # parameter dtype: float32 | bfloat16
    tokenizer_vocab_size: int = 0   # new model, no tokenizer given: train a SentencePiece one of this size
    # Shape of a new model (used only when name == ""): a GPT-2-style decoder.
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    max_seq_len: int = 512
    dropout: float = 0.0


@dataclass
class DataConfig:
    format: str = "preference_jsonl"  # a key of dpo.formats.FORMATS: preference_jsonl | sft_jsonl | text | imdb | tldr | ...
    path: str = ""                  # file or folder of the training data
    split: str = "train"            # split read from `path` (folders holding several splits)
    eval_path: str = ""             # "" = `path`
    eval_split: str = "test"
    eval_examples: int = 256        # seeded random subset of the evaluation set (0 = all)
    max_length: int = 512           # prompt + response tokens
    max_prompt_length: int = 256
    truncation: str = "reference"   # reference | keep_response (see dpo/batching.py)
    prompt_truncation_side: str = ""  # keep_start | keep_end | "" = the format's default (keep_end for HH)
    pad_to_multiple_of: int = 0     # 0 = no rounding of the padded length
    chat_template: str = ""         # conversational data: "" = the tokenizer's own template, or a family name
    share_prompt: bool = True       # pairs as [prompt | chosen | rejected] blocks in one row: prompt once, no padding


@dataclass
class LossConfig:
    name: str = "sigmoid"           # a key of dpo.losses.LOSSES (or a mix: sigmoid+sft), classifier, reward_model, ppo
    beta: float = 0.1
    label_smoothing: float = 0.0    # conservative DPO epsilon
    rpo_alpha: float = 0.0          # weight of an NLL term on the chosen response (RPO); 0 = off
    ld_alpha: float = 1.0           # LD-DPO: weight of response tokens past the shorter response (1 = off)
    wpo: bool = False               # WPO: weight each pair by the policy's probability of it
    options: dict = field(default_factory=dict)  # the losses' own options (see dpo.losses.LOSSES)

    def loss_options(self) -> dict:
        """The keyword options the preference losses get from this section (besides beta and the lengths):
        `options`, and label_smoothing when it is set."""
        return {**self.options, **({"label_smoothing": self.label_smoothing} if self.label_smoothing else {})}


@dataclass
class LoraConfig:
    rank: int = 0                   # LoRA rank r (0 = full fine-tuning); the base weights stay frozen
    alpha: float = 16.0             # the adapters' output is scaled by alpha / r
    dropout: float = 0.0            # dropout on the adapters' input
    target_modules: list = field(default_factory=lambda: ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"])


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    seed: int = 0
    epochs: int = 1
    max_examples: int = 0           # stop after this many training examples (0 = `epochs` full passes)
    batch_size: int = 64            # global batch, in preference pairs (or sequences for sft)
    micro_batch_size: int = 8       # per rank per forward; accumulation = batch / (micro * world)
    optimizer: str = "rmsprop"      # rmsprop (the paper) | adamw | sgd
    lr: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 150
    schedule: str = "constant"      # constant | linear | cosine (after warmup)
    max_grad_norm: float = 10.0
    eval_every: int = 0             # in optimizer steps; 0 = only after the last step
    save_every: int = 0             # in optimizer steps; 0 = only at the end
    sample_every: int = 0           # in optimizer steps; 0 = never
    sample_prompts: int = 4
    sample_max_new_tokens: int = 64
    sample_temperature: float = 1.0
    sample_reward: str = ""         # score samples with a reward: "" | quickstart (the built-in ground truth)
    log_every: int = 1              # in optimizer steps
    early_stopping_patience: int = 0  # stop after this many evaluations in a row without improvement (0 = off)
    early_stopping_metric: str = "loss/eval"  # the evaluation metric watched; its best model goes to out_dir/best/
    early_stopping_mode: str = "min"  # min | max: whether lower or higher is better
    early_stopping_min_delta: float = 0.0  # an improvement must be larger than this
    resume: bool = False            # continue from out_dir's latest checkpoint (one must exist)
    resume_changed: bool = False    # resume even if model / data / loss settings differ from the checkpoint's
    parallel: str = "auto"          # auto | none | ddp | fsdp (auto: ddp when world_size > 1)
    mixed_precision: str = "none"   # none | bf16 | fp16 (autocast / FSDP2 MixedPrecisionPolicy; fp16 scales the loss)
    activation_checkpointing: bool = False
    cpu_offload: bool = False
    compile: bool = False
    reference_cache: bool = False   # precompute reference log-probs once and keep only the policy
    device: str = "auto"            # auto | cpu | cuda


@dataclass
class PPOConfig:
    """loss.name=ppo (dpo/ppo/): the policy is trained on its own samples against a reward, with a per-token KL
    penalty towards the reference. train.lr, optimizer, schedule and warmup_steps apply to PPO's optimizer steps
    (one per minibatch); train.log_every, eval_every and save_every count iterations (rollouts); train.batch_size,
    micro_batch_size, epochs, max_examples and sample_* are not read."""
    reward: str = "quickstart"      # the scorer: classifier:DIR (PPO-GT) | reward_model:DIR | hf:NAME | quickstart
    value_model: str = ""           # the critic's start: "" = the reward model (reward_model:DIR), else the policy
    iterations: int = 100           # rollouts: generate, score, then ppo_epochs passes of minibatch updates
    rollout_prompts: int = 64       # prompts per rollout (global, one completion each)
    minibatch_size: int = 16        # completions per optimizer step (global); divides rollout_prompts
    ppo_epochs: int = 4             # passes over each rollout
    clip_range: float = 0.2         # ε of the clipped policy ratio
    value_clip_range: float = 0.2   # how far a value may move from its rollout value before the loss clips it
    vf_coef: float = 0.1            # weight of the value loss
    gamma: float = 1.0              # discount over response tokens
    lam: float = 0.95               # GAE λ
    kl_coef: float = 0.05           # the initial coefficient of the per-token KL penalty
    kl_target: float = 6.0          # adaptive controller's target KL (nats per sample); 0 = kl_coef stays fixed
    kl_horizon: int = 10000         # the controller's horizon, in samples
    whiten_advantages: bool = True  # advantages to mean 0, variance 1 over each rollout's response tokens
    max_new_tokens: int = 64        # completion length
    temperature: float = 1.0        # sampling temperature of the rollouts (and the evaluation samples)


@dataclass
class WandbConfig:
    mode: str = "auto"              # auto (online with an API key, else offline) | online | offline | disabled
    project: str = "dpo"
    name: str = ""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    reference: str = ""             # reference model path; "" = a frozen copy of the initial policy
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    next_config: str = ""           # a config to run after this one (e.g. DPO after SFT); overrides don't carry


def _check_type(value, expected, key: str, origin: str):
    """Return `value` as `expected` (int -> float is allowed), or raise naming the key."""
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        try:  # PyYAML reads 1e-6 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if expected is str and origin == "command line" and isinstance(value, (int, float, bool)):
        return str(value)  # train.out_dir=2024 on the command line is the string "2024"
    base = typing.get_origin(expected) or expected
    if base is typing.Union:  # Optional[X]
        if value is None:
            return None
        expected = [a for a in typing.get_args(expected) if a is not type(None)][0]
        base = expected
    if isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    if expected is str and isinstance(value, bool):
        raise ConfigError(f"{origin}: key '{key}' expects a string, got the YAML boolean {value} (YAML reads "
                          f"on/off/yes/no unquoted as booleans): quote it, e.g. {key.rsplit('.', 1)[-1]}: \"off\"")
    raise ConfigError(f"{origin}: key '{key}' expects {getattr(expected, '__name__', expected)}, "
                      f"got {type(value).__name__} {value!r}")


def _fill(obj, values: dict, prefix: str, origin: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{origin}: key '{prefix.rstrip('.')}' expects a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"{origin}: unknown key '{prefix}{key}'; valid keys: "
                              + ", ".join(prefix + n for n in names))
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _fill(current, value, f"{prefix}{key}.", origin)
        else:
            setattr(obj, key, _check_type(value, hints[key], prefix + key, origin))


def _set_dotted(values: dict, dotted: str, value):
    *parents, last = dotted.split(".")
    for p in parents:
        values = values.setdefault(p, {})
    values[last] = value


CHOICES = {  # key -> the values it may take (validate; data.truncation's come from dpo.batching)
    "model.dtype": ("float32", "bfloat16", "float16"),
    "train.optimizer": ("rmsprop", "adamw", "sgd"),
    "train.schedule": ("constant", "linear", "cosine"),
    "train.parallel": ("auto", "none", "ddp", "fsdp"),
    "train.mixed_precision": ("none", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.sample_reward": ("", "quickstart"),
    "train.early_stopping_mode": ("min", "max"),
    "wandb.mode": ("auto", "online", "offline", "disabled"),
}


def validate(config: Config) -> None:
    """Check every key's value before any work; raise one ConfigError listing every problem, one per line.

    Choices (CHOICES, data.format, loss.name and its options), numeric ranges, CUDA when train.device asks
    for it, and a new model's shape. Paths and the lengths a pretrained model allows are checked when they
    are opened (train.py)."""
    from dpo.batching import PROMPT_TRUNCATION_SIDES, TRUNCATIONS
    from dpo.chat_template import FAMILIES
    from dpo.formats import FORMATS
    from dpo.losses import check_options, parse_loss_names
    c, problems = config, []
    choices = {**CHOICES, "data.truncation": TRUNCATIONS, "data.prompt_truncation_side": ("",) + PROMPT_TRUNCATION_SIDES}
    for key, allowed in choices.items():
        section, name = key.split(".")
        value = getattr(getattr(c, section), name)
        if value not in allowed:
            problems.append(f"{key}: expected one of {' | '.join(a or repr(a) for a in allowed)}, got {value!r}")
    if c.data.format not in FORMATS:
        problems.append(f"data.format: expected one of {' | '.join(FORMATS)}, got {c.data.format!r}")
    if c.data.chat_template and c.data.chat_template not in FAMILIES:
        problems.append(f"data.chat_template: expected \"\" (the tokenizer's own) or one of {' | '.join(FAMILIES)}, "
                        f"got {c.data.chat_template!r}")
    import torch
    if c.train.device == "cuda" and not torch.cuda.is_available():
        problems.append("train.device: cuda asked for, but no CUDA device is available (use auto or cpu)")
    device = "cuda" if c.train.device != "cpu" and torch.cuda.is_available() else "cpu"
    if (c.train.parallel == "fsdp" and c.loss.name != "ppo"  # (PPO refuses FSDP2 whatever the torch, below)
            and device == "cpu" and not fsdp2_on_cpu()):
        problems.append(f"train.parallel: FSDP2 on CPU needs torch >= 2.9 (2.6 fails in its first all-gather; 2.7 "
                        f"and 2.8 sum the gradients over gloo where they average), this is torch "
                        f"{torch.__version__}; use ddp, or a GPU")
    if c.train.mixed_precision == "fp16":
        if c.model.dtype != "float32":  # loss scaling unscales fp32 gradients of fp32 weights
            problems.append(f"train.mixed_precision: fp16 needs model.dtype float32 (fp32 weights, fp16 compute), "
                            f"got {c.model.dtype}")
        if not torch.amp.autocast_mode.is_autocast_available(device) or (
                device == "cpu" and not fp16_autocast_on_cpu()):
            problems.append(f"train.mixed_precision: fp16 autocast is not available on {device} with torch "
                            f"{torch.__version__}; use bf16 or none")
    t, d, m, loss = c.train, c.data, c.model, c.loss
    ranges = [
        ("loss.beta", loss.beta > 0, "> 0", loss.beta), ("loss.label_smoothing", 0 <= loss.label_smoothing < 1,
                                                         "in [0, 1)", loss.label_smoothing),
        ("loss.rpo_alpha", loss.rpo_alpha >= 0, ">= 0", loss.rpo_alpha),
        ("loss.ld_alpha", 0 <= loss.ld_alpha <= 1, "in [0, 1]", loss.ld_alpha),
        ("train.lr", t.lr > 0, "> 0", t.lr), ("train.weight_decay", t.weight_decay >= 0, ">= 0", t.weight_decay),
        ("train.warmup_steps", t.warmup_steps >= 0, ">= 0", t.warmup_steps),
        ("train.max_grad_norm", t.max_grad_norm >= 0, ">= 0 (0 = no clipping)", t.max_grad_norm),
        ("train.batch_size", t.batch_size > 0, "> 0", t.batch_size),
        ("train.micro_batch_size", 0 < t.micro_batch_size <= t.batch_size and t.batch_size % t.micro_batch_size == 0,
         f"a divisor of train.batch_size ({t.batch_size})", t.micro_batch_size),
        ("train.epochs", t.epochs >= 1 or t.max_examples > 0, ">= 1 (or train.max_examples > 0)", t.epochs),
        ("train.max_examples", t.max_examples >= 0, ">= 0", t.max_examples),
        ("train.log_every", t.log_every >= 1, ">= 1", t.log_every),
        ("train.eval_every", t.eval_every >= 0, ">= 0", t.eval_every),
        ("train.save_every", t.save_every >= 0, ">= 0", t.save_every),
        ("train.sample_every", t.sample_every >= 0, ">= 0", t.sample_every),
        ("train.sample_prompts", t.sample_prompts >= 0, ">= 0", t.sample_prompts),
        ("train.early_stopping_patience", t.early_stopping_patience >= 0 and (t.early_stopping_patience == 0 or
                                                                               t.eval_every > 0),
         ">= 0, and > 0 only with train.eval_every > 0", t.early_stopping_patience),
        ("train.early_stopping_min_delta", t.early_stopping_min_delta >= 0, ">= 0", t.early_stopping_min_delta),
        ("train.sample_max_new_tokens", t.sample_max_new_tokens >= 1, ">= 1", t.sample_max_new_tokens),
        ("train.sample_temperature", t.sample_temperature >= 0, ">= 0 (0 = greedy)", t.sample_temperature),
        ("data.max_length", d.max_length >= 2, ">= 2", d.max_length),
        ("data.eval_examples", d.eval_examples >= 0, ">= 0 (0 = all)", d.eval_examples),
        ("data.pad_to_multiple_of", d.pad_to_multiple_of >= 0, ">= 0", d.pad_to_multiple_of),
        ("model.dropout", 0 <= m.dropout < 1, "in [0, 1)", m.dropout),
        ("model.tokenizer_vocab_size", m.tokenizer_vocab_size >= 0, ">= 0", m.tokenizer_vocab_size),
    ]
    if not m.name:  # a new model: its shape
        ranges += [("model.n_layer", m.n_layer >= 1, ">= 1", m.n_layer), ("model.n_head", m.n_head >= 1, ">= 1", m.n_head),
                   ("model.n_embd", m.n_embd >= 1 and m.n_embd % max(m.n_head, 1) == 0,
                    f"a positive multiple of model.n_head ({m.n_head})", m.n_embd),
                   ("data.max_length", d.max_length <= m.max_seq_len,
                    f"<= model.max_seq_len ({m.max_seq_len})", d.max_length)]
    if c.lora.rank:
        ranges += [("lora.rank", c.lora.rank > 0 and bool(m.name), "> 0, with a pretrained model.name", c.lora.rank),
                   ("lora.alpha", c.lora.alpha > 0, "> 0", c.lora.alpha),
                   ("lora.dropout", 0 <= c.lora.dropout < 1, "in [0, 1)", c.lora.dropout),
                   ("lora.target_modules", bool(c.lora.target_modules), "a non-empty list", c.lora.target_modules),
                   ("loss.name", loss.name not in ("classifier", "reward_model"), "a policy loss with LoRA", loss.name)]
    if loss.name not in ("classifier", "reward_model"):  # reward models read max_length only
        ranges.append(("data.max_prompt_length", 0 < d.max_prompt_length < d.max_length,
                       f"in (0, data.max_length = {d.max_length})", d.max_prompt_length))
    if loss.name == "ppo":
        problems += ppo_problems(c)
    elif loss.name not in ("classifier", "reward_model"):
        try:
            names = parse_loss_names(loss.name)
            options = dict(loss.loss_options(), beta=loss.beta)
            if "unlikelihood" in names:
                options["policy_rejected_unlikelihood"] = None
            if not set(names) <= {"sft", "sft_mean"}:
                check_options(names, options, wpo=loss.wpo)
        except ValueError as e:
            problems.append(f"loss.name / loss.options: {e}")
    problems += [f"{key}: expected {expected}, got {value!r}" for key, ok, expected, value in ranges if not ok]
    if problems:
        raise ConfigError("\n".join(problems))


def ppo_problems(c: Config) -> list[str]:
    """loss.name=ppo: the ppo section's values (each named), the reward spec's form (its folder: check_paths), and
    the settings the PPO loop does not take (a new model, FSDP2, the reference cache, dropout)."""
    from dpo.evaluate.rewards import check_spec
    p, problems = c.ppo, []
    try:
        check_spec(p.reward, folders=False)
    except UserError as e:
        problems.append(f"ppo.reward: {e}")
    ranges = [
        ("ppo.iterations", p.iterations >= 1, ">= 1", p.iterations),
        ("ppo.rollout_prompts", p.rollout_prompts >= 1, ">= 1", p.rollout_prompts),
        ("ppo.minibatch_size", p.minibatch_size >= 1 and p.rollout_prompts % p.minibatch_size == 0,
         f"a divisor of ppo.rollout_prompts ({p.rollout_prompts})", p.minibatch_size),
        ("ppo.ppo_epochs", p.ppo_epochs >= 1, ">= 1", p.ppo_epochs),
        ("ppo.clip_range", p.clip_range > 0, "> 0", p.clip_range),
        ("ppo.value_clip_range", p.value_clip_range > 0, "> 0", p.value_clip_range),
        ("ppo.vf_coef", p.vf_coef > 0, "> 0", p.vf_coef),
        ("ppo.gamma", 0 < p.gamma <= 1, "in (0, 1]", p.gamma),
        ("ppo.lam", 0 <= p.lam <= 1, "in [0, 1]", p.lam),
        ("ppo.kl_coef", p.kl_coef >= 0, ">= 0", p.kl_coef),
        ("ppo.kl_target", p.kl_target >= 0, ">= 0 (0 = a fixed ppo.kl_coef)", p.kl_target),
        ("ppo.kl_horizon", p.kl_horizon >= 1, ">= 1", p.kl_horizon),
        ("ppo.max_new_tokens", p.max_new_tokens >= 1, ">= 1", p.max_new_tokens),
        ("ppo.temperature", p.temperature > 0, "> 0 (rollouts sample from the policy)", p.temperature),
        ("model.name", bool(c.model.name), "the trained policy PPO starts from (loss.name=ppo)", c.model.name),
        ("train.parallel", c.train.parallel != "fsdp", "auto | none | ddp with loss.name=ppo (no FSDP2 in the "
                                                       "PPO loop)", c.train.parallel),
        ("train.reference_cache", not c.train.reference_cache, "false with loss.name=ppo (rollouts are new "
                                                               "samples)", c.train.reference_cache),
        # log π_old (rollout) and log π (update) are both computed in train mode: with dropout they would come
        # from two different networks, and the ratio would not start at 1
        ("model.dropout", c.model.dropout == 0, "0 with loss.name=ppo (π/π_old needs one network)", c.model.dropout),
        ("lora.dropout", c.lora.dropout == 0, "0 with loss.name=ppo (π/π_old needs one network)", c.lora.dropout),
    ]
    return problems + [f"{key}: expected {expected}, got {value!r}" for key, ok, expected, value in ranges if not ok]


def fsdp2_on_cpu() -> bool:
    """Whether this torch's FSDP2 trains correctly on CPU (gloo): from 2.9 (2.6's stops at its first all-gather;
    2.7's and 2.8's leave the gradients world_size times too large, with no error)."""
    import torch
    from torch.torch_version import TorchVersion
    return TorchVersion(torch.__version__) >= (2, 9)


def fp16_autocast_on_cpu() -> bool:
    """Whether this torch computes a CPU matmul in fp16 under autocast (older versions warn and run fp32)."""
    import warnings
    import torch
    with warnings.catch_warnings(), torch.autocast("cpu", dtype=torch.float16):
        warnings.simplefilter("ignore")
        return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16


def load_config(path: str | None = None, overrides: list[str] = (), cls=Config):
    """Defaults <- YAML file <- `key=value` overrides (values parsed as YAML: 1e-6, true, [a, b]).

    cls: the dataclass to fill (Config for train.py; the experiment drivers pass their own)."""
    config = cls()
    if path:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
        _fill(config, values, "", path)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"command line: override '{item}' is not of the form key=value")
        value = yaml.safe_load(raw) if raw != "" else ""
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            value = raw  # wandb.mode=off: the word, not YAML 1.1's boolean
        nested: dict = {}
        _set_dotted(nested, key.lstrip("-"), value)
        _fill(config, nested, "", "command line")
    return config


def save_config(config, path) -> None:
    """Write the resolved config (any of these dataclasses) as YAML, atomically, so a run records exactly
    what it ran."""
    atomic_write(path, yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


def check_paths(config: Config) -> None:
    """The folders a run reads and writes, checked before any work (all problems at once): out_dir is a
    writable folder; model.name, reference and model.tokenizer exist (or model.name / reference are hub
    names, fetched now); data.path exists; with loss.name=ppo, the folder of a classifier:DIR or reward_model:DIR
    reward."""
    from dpo.evaluate.rewards import check_spec
    from dpo.interop.hub import resolve_model_dir
    problems = []
    try:
        check_writable(config.train.out_dir, "train.out_dir", folder=True)
    except UserError as e:
        problems.append(str(e))
    for key, name in (("model.name", config.model.name), ("reference", config.reference)):
        try:
            if name:
                resolve_model_dir(name)
        except FileNotFoundError as e:
            problems.append(f"{key}: {e}")
    for key, path in (("model.tokenizer", config.model.tokenizer), ("data.path", config.data.path),
                      ("data.eval_path", config.data.eval_path), ("ppo.value_model", config.ppo.value_model)):
        if path and not Path(path).exists():
            problems.append(f"{key}: {path}: no such file or folder")
    try:
        if config.loss.name == "ppo":
            check_spec(config.ppo.reward)
    except UserError as e:
        problems.append(f"ppo.reward: {e}")
    if problems:
        raise ConfigError("\n".join(problems))
