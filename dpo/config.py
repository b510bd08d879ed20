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

from dpo.files import atomic_write


class ConfigError(ValueError):
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
    format: str = "preference_jsonl"  # a key of dpo.data.FORMATS: preference_jsonl | sft_jsonl | text | imdb | tldr | ...
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


@dataclass
class LossConfig:
    name: str = "sigmoid"           # a key of dpo.losses.LOSSES (or a mix: sigmoid+sft), classifier, reward_model
    beta: float = 0.1
    label_smoothing: float = 0.0    # conservative DPO epsilon
    rpo_alpha: float = 0.0          # weight of an NLL term on the chosen response (RPO); 0 = off
    ld_alpha: float = 1.0           # LD-DPO: weight of response tokens past the shorter response (1 = off)
    wpo: bool = False               # WPO: weight each pair by the policy's probability of it
    options: dict = field(default_factory=dict)  # the losses' own options (see dpo.losses.LOSSES)


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
    resume: bool = False
    parallel: str = "auto"          # auto | none | ddp | fsdp (auto: ddp when world_size > 1)
    mixed_precision: str = "none"   # none | bf16 (autocast / FSDP2 MixedPrecisionPolicy)
    activation_checkpointing: bool = False
    cpu_offload: bool = False
    compile: bool = False
    reference_cache: bool = False   # precompute reference log-probs once and keep only the policy
    device: str = "auto"            # auto | cpu | cuda


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
    train: TrainConfig = field(default_factory=TrainConfig)
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
        nested: dict = {}
        _set_dotted(nested, key.lstrip("-"), yaml.safe_load(raw) if raw != "" else "")
        _fill(config, nested, "", "command line")
    return config


def save_config(config, path) -> None:
    """Write the resolved config (any of these dataclasses) as YAML, atomically, so a run records exactly
    what it ran."""
    atomic_write(path, yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
