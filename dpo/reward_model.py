"""A GPT backbone with a linear head read at each sequence's last token: a sentiment classifier or a
Bradley–Terry reward model, saved in the Hugging Face *ForSequenceClassification layout.

    classifier      n_outputs = 2, logits [B, 2]; reward = p(positive) = softmax(logits)[:, i], i the output
                    whose id2label name is POSITIVE (1 in the models we train: {0: NEGATIVE, 1: POSITIVE}),
                    the paper's IMDB reward when trained on IMDB labels
    bradley_terry   n_outputs = 1, a scalar r(x, y) [B]; trained on preference pairs so that
                    p(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l))  (Best-of-N, and an offline judge)

Which token is read: the last real token of each row, found from attention_mask, so left and right
padding both work. Inputs carry NO EOS (collate_* below and dpo.evaluate.rewards build them so): the score is read
at the last token of the text. This is also what transformers does with a saved model when pad_token_id
is set: it reads the last token that is not pad_token_id. For GPT-2, which has no pad token, we write
pad_token_id = EOS (the usual choice), and a trailing EOS would then be taken for padding by transformers
but not by us; keeping EOS out of the inputs makes both read the same token.

Files (Hugging Face layout, loadable by AutoModelForSequenceClassification): config.json with
architectures ["GPT2ForSequenceClassification"] (or GPTNeoX-, GPTJ-, Llama-, Mistral-, Qwen2-), num_labels,
id2label / label2id ({0: NEGATIVE, 1: POSITIVE} or {0: REWARD}), pad_token_id, and "dpo_reward_kind";
model.safetensors with the backbone under transformers' names (dpo.interop.hf_checkpoint) and the head as
`score.weight` [n_outputs, C]. The backbone's output projection (lm_head) is not part of the model.
A model with LoRA adapters on its backbone (PPO's critic, dpo/ppo/loop.py) is written merged, and its adapters
also in PEFT's layout in adapter/ (dpo.lora.save_adapter), which a resume puts back onto the unmerged base.
"""
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from dpo import lora
from dpo.batching import pad_rows
from dpo.errors import UserError
from dpo.files import atomic_write
from dpo.interop import hf_checkpoint, safetensors
from dpo.model import GPT

CLASSIFIER, BRADLEY_TERRY = "classifier", "bradley_terry"
LABELS = {CLASSIFIER: {0: "NEGATIVE", 1: "POSITIVE"}, BRADLEY_TERRY: {0: "REWARD"}}
SEQUENCE_CLASSIFICATION = {"gpt2": "GPT2ForSequenceClassification", "gptj": "GPTJForSequenceClassification",
                           "gpt_neox": "GPTNeoXForSequenceClassification",
                           "llama": "LlamaForSequenceClassification",
                           "mistral": "MistralForSequenceClassification",
                           "qwen2": "Qwen2ForSequenceClassification"}


class RewardModelError(UserError, ValueError):
    pass


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """attention_mask [B, T] (1 = token) → [B] index of each row's last real token (left or right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.bool()).argmax(-1)


class RewardModel(nn.Module):
    """backbone: GPT (its lm_head unused) + score: Linear(C, n_outputs, bias=False) at the last real token.

    The head starts at zero, so every score is 0 at step 0: the Bradley–Terry loss is exactly ln 2 and the
    classifier says p = 1/2, as DPO starts at ln 2."""

    def __init__(self, backbone: GPT, n_outputs: int = 1, pad_id: int | None = None):
        super().__init__()
        if n_outputs not in (1, 2):
            raise RewardModelError(f"n_outputs must be 1 (Bradley–Terry) or 2 (classifier), got {n_outputs}")
        if not backbone.config.tie_embeddings:
            backbone.lm_head = None  # unused: drop it (and its memory; DDP would also find it unused)
        self.backbone = backbone
        self.score = nn.Linear(backbone.config.n_embd, n_outputs, bias=False,
                               device=backbone.wte.weight.device, dtype=backbone.wte.weight.dtype)
        nn.init.zeros_(self.score.weight)
        self.pad_id = pad_id
        self.labels = dict(LABELS[CLASSIFIER if n_outputs == 2 else BRADLEY_TERRY])  # index -> name

    @property
    def positive_index(self) -> int:
        """The output that means "positive": the label named POSITIVE (any case), else index 1."""
        named = [i for i, name in self.labels.items() if name.lower() == "positive"]
        return named[0] if len(named) == 1 else 1

    @property
    def kind(self) -> str:
        return CLASSIFIER if self.score.out_features == 2 else BRADLEY_TERRY

    @property
    def blocks(self):  # dpo.distributed.wrap shards each block under FSDP
        return self.backbone.blocks

    @property
    def activation_checkpointing(self) -> bool:
        return self.backbone.activation_checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, value: bool):
        self.backbone.activation_checkpointing = value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                every_position: bool = False) -> torch.Tensor:
        """input_ids, attention_mask: [B, T] → scores [B, n_outputs] (fp32), read at the last real token; with
        `every_position`, [B, T, n_outputs]: the head read at each position (PPO's value model, dpo/ppo/)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.backbone(input_ids, attention_mask, return_hidden=True)  # [B, T, C]
        if every_position:
            return self.score(hidden).float()
        last = last_token_index(attention_mask)
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B, C]
        return self.score(h).float()

    def rewards(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B] reward: p(positive) for a classifier (positive_index), the scalar for a Bradley–Terry model."""
        scores = self(input_ids, attention_mask)
        return scores.softmax(-1)[:, self.positive_index] if self.kind == CLASSIFIER else scores[:, 0]

    def save_pretrained(self, directory, tokenizer=None, dtype: torch.dtype | None = None) -> None:
        save_reward_model(self, directory, tokenizer, dtype)

    @classmethod
    def from_pretrained(cls, directory, dtype: torch.dtype | None = None, device="cpu") -> "RewardModel":
        return load_reward_model(directory, dtype, device)


# --------------------------------------------------------------------------------------------------
# Losses (per example, so the caller can weight and reduce them)


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """chosen_scores, rejected_scores: [B] (or [B, 1]) → [B] −log σ(r_w − r_l), in fp32."""
    margin = chosen_scores.float().reshape(-1) - rejected_scores.float().reshape(-1)
    return -F.logsigmoid(margin)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [B, 2], labels [B] (1 = positive) → [B] cross-entropy, in fp32."""
    return F.cross_entropy(logits.float(), labels.long(), reduction="none")


def bradley_terry_metrics(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> dict:
    """Per-pair [B] metrics: accuracy (strict r_w > r_l), margin r_w − r_l, and both scores."""
    chosen, rejected = chosen_scores.detach().float().reshape(-1), rejected_scores.detach().float().reshape(-1)
    return {"rewards/accuracies": (chosen > rejected).float(), "rewards/margins": chosen - rejected,
            "rewards/chosen": chosen, "rewards/rejected": rejected}


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Per-example [B] metrics: accuracy and p(positive)."""
    logits = logits.detach().float()
    return {"accuracy": (logits.argmax(-1) == labels).float(), "p_positive": logits.softmax(-1)[:, 1]}


# --------------------------------------------------------------------------------------------------
# Collation (right-padded; no EOS, see the module docstring)


def collate_classification(examples: list[dict], tokenizer, max_length: int) -> dict:
    """{"text", "label"} examples → input_ids, attention_mask [B, T] (right-padded), labels [B].
    A text longer than max_length tokens keeps its first max_length tokens."""
    rows = [tokenizer.encode(ex["text"])[:max_length] for ex in examples]
    if any(not r for r in rows):
        raise RewardModelError("collate_classification: an example has an empty text")
    ids, mask = pad_rows(rows, tokenizer.pad_id_or_eos())
    return {"input_ids": ids, "attention_mask": mask,
            "labels": torch.tensor([int(ex["label"]) for ex in examples], dtype=torch.long)}


def pair_ids(prompt_ids: list[int], response_ids: list[int], max_length: int) -> list[int]:
    """prompt + response ids cut to max_length: the prompt loses its first tokens first (the response is
    what is scored), then the response its last ones."""
    overflow = len(prompt_ids) + len(response_ids) - max_length
    if overflow > 0:
        prompt_ids = prompt_ids[min(overflow, len(prompt_ids)):]
    return (prompt_ids + response_ids)[:max_length]


def collate_reward_pairs(examples: list[dict], tokenizer, max_length: int) -> dict:
    """{"prompt", "chosen", "rejected"} → input_ids, attention_mask [2B, T] (rows 0..B−1 chosen, B..2B−1
    rejected, one forward). Prompt and responses are tokenized apart (as for DPO), no EOS."""
    chosen, rejected = [], []
    for ex in examples:
        prompt = tokenizer.encode(ex["prompt"])
        chosen.append(pair_ids(prompt, tokenizer.encode(ex["chosen"]), max_length))
        rejected.append(pair_ids(prompt, tokenizer.encode(ex["rejected"]), max_length))
    ids, mask = pad_rows(chosen + rejected, tokenizer.pad_id_or_eos())
    return {"input_ids": ids, "attention_mask": mask}


# --------------------------------------------------------------------------------------------------
# Save / load in Hugging Face layout


def save_reward_model(model: RewardModel, directory, tokenizer=None, dtype: torch.dtype | None = None,
                      state_dict: dict | None = None, lora_base: str = "") -> None:
    """config.json + model.safetensors (each atomic) + the tokenizer's files when given; with LoRA adapters,
    the merged weights and adapter/ (`lora_base`: the model whose trunk they apply to). state_dict: the weights
    to write instead of model.state_dict() (e.g. gathered from FSDP shards; same names)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.backbone.config
    mt = hf_checkpoint.model_type_of(cfg)
    state = model.state_dict() if state_dict is None else state_dict
    if lora.lora_modules(model):
        lora.save_adapter(model.backbone, directory / "adapter", lora_base,
                          state_dict={k.removeprefix("backbone."): v for k, v in state.items()})
        state = lora.merged_state_dict(model, state)
    tensors = {}
    for ours, hf_names, _, to_hf in hf_checkpoint.layout(cfg, mt):
        if ours.startswith("lm_head."):
            continue
        for name, t in zip(hf_names, to_hf(state[f"backbone.{ours}"].detach())):
            tensors[name] = t if dtype is None else t.to(dtype)
    tensors["score.weight"] = state["score.weight"].detach().to(dtype or state["score.weight"].dtype)
    safetensors.save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, directory / "model.safetensors",
                          metadata={"format": "pt"})
    hf = hf_checkpoint.config_to_hf(cfg, dtype or state["score.weight"].dtype)
    labels = model.labels
    pad_id = model.pad_id
    if pad_id is None and tokenizer is not None:
        pad_id = tokenizer.pad_id_or_eos()
    if pad_id is None:
        pad_id = cfg.eos_id[0] if isinstance(cfg.eos_id, list) else cfg.eos_id
    hf.update(architectures=[SEQUENCE_CLASSIFICATION[mt]], num_labels=len(labels),
              id2label={str(k): v for k, v in labels.items()}, label2id={v: k for k, v in labels.items()},
              pad_token_id=pad_id, dpo_reward_kind=model.kind,
              problem_type="single_label_classification" if model.kind == CLASSIFIER else "regression")
    atomic_write(directory / "config.json", json.dumps(hf, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def load_reward_model(directory, dtype: torch.dtype | None = None, device="cpu") -> RewardModel:
    """A RewardModel from a folder written by save_reward_model (or by transformers' *ForSequenceClassification
    of a supported family with 1 or 2 labels and no score bias)."""
    directory = Path(directory)
    path = directory / "config.json"
    if not path.is_file():
        raise RewardModelError(f"{path}: not found (a reward model folder needs config.json)")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RewardModelError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    # transformers omits num_labels and id2label when they are its default (2 labels)
    n_outputs = hf.get("num_labels") or len(hf.get("id2label") or {}) or 2
    if n_outputs not in (1, 2):
        raise RewardModelError(f"{path}: num_labels must be 1 (reward model) or 2 (classifier), got {n_outputs}")
    cfg = hf_checkpoint.config_from_hf(hf, source=str(path))
    mt, dtype = hf["model_type"], dtype or torch.float32
    ckpt = hf_checkpoint._Checkpoint(directory)
    prefix = hf_checkpoint.PREFIX[mt]
    full = {(n if n.startswith((prefix, "score.")) else prefix + n): n for n in ckpt.files}
    with torch.device("meta"):
        model = RewardModel(GPT(cfg), n_outputs, pad_id=hf.get("pad_token_id"))
    if hf.get("id2label"):
        model.labels = {int(k): str(v) for k, v in hf["id2label"].items()}
    loaded, used = {}, set()
    for ours, hf_names, to_ours, _ in hf_checkpoint.layout(cfg, mt):
        if ours.startswith("lm_head."):
            continue
        missing = [n for n in hf_names if n not in full]
        if missing:
            raise RewardModelError(f"{directory}: tensor {missing[0]!r} is missing from the checkpoint")
        loaded[f"backbone.{ours}"] = to_ours([ckpt.get(full[n], dtype, device) for n in hf_names]).contiguous()
        used.update(hf_names)
    if "score.weight" not in full:
        raise RewardModelError(f"{directory}: tensor 'score.weight' (the head) is missing")
    loaded["score.weight"] = ckpt.get(full["score.weight"], dtype, device)
    used.add("score.weight")
    unused = [n for n in full if n not in used and not hf_checkpoint.IGNORED.search(n)]
    if unused:
        raise RewardModelError(f"{directory}: {len(unused)} tensors do not fit a {mt} reward model: "
                               f"{', '.join(unused[:5])}")
    model.load_state_dict(loaded, strict=False, assign=True)
    model.backbone.reset_buffers(device)
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:
        raise RewardModelError(f"{directory}: no tensor loaded for {', '.join(still_meta[:5])}")
    return model.eval()


def is_reward_model_dir(directory) -> bool:
    path = Path(directory) / "config.json"
    try:
        hf = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return any(a.endswith("ForSequenceClassification") for a in hf.get("architectures") or [])
