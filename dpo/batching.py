"""Tokenization with explicit truncation, padding into batches, and the seeded distributed batch schedule.

Token layout (the authors' reference code): prompt, chosen and rejected are tokenized SEPARATELY with no
special tokens, EOS is appended once to each response, and a sequence is prompt_ids + response_ids.
labels = input_ids with every prompt position set to IGNORE_INDEX (−100); padding gets −100 too (the
reference code once padded labels with the pad id: a silent bug). labels are aligned with input_ids, not
shifted: the log-prob code compares logits[:, :-1] with labels[:, 1:]. No text may contain EOS: checked on
the ids (dpo.tokenizer encodes a literal "<|endoftext|>" as plain text, so this fires only with tokenizers
that turn special-token strings into their ids).

Why tokenize apart: a BPE tokenizer can merge across the prompt|response boundary (a response starting
without a space glues onto the prompt's last word), and then encode(prompt + response) has no clean
split. Tokenizing apart keeps prompt ids identical for chosen and rejected and makes the response exactly
the tokens its log-prob is summed over. The dataset summary reports how often the two tokenizations differ
(GPT-2 on tldr-mini: 0 of 8,000 with our " summary" responses, 18 of 8,000 without the leading space).

Truncation (DataConfig.truncation, with max_length, max_prompt_length and prompt_truncation_side):
- "reference": the authors' code. If prompt + longer response > max_length, the prompt is cut to
  max_prompt_length tokens (keep_start: its first tokens; keep_end: its last, used for HH dialogue); if
  still too long, every response is cut to max_length − max_prompt_length tokens, which can remove its
  EOS. Never drops an example. With an empty prompt (IMDB SFT, plain text) responses are still cut to
  max_length − max_prompt_length, so set max_prompt_length small for such data.
- "keep_response": responses are never cut (EOS always kept). The prompt is cut by just as many tokens as
  needed to fit max_length (max_prompt_length is not used); if that would leave no prompt token (or the
  prompt is empty and the response alone is too long), the example is dropped and counted.
"""
import hashlib
import math

import torch

from dpo import chat_template, data, formats
from dpo.data import DataError, percentiles

IGNORE_INDEX = -100
TRUNCATIONS = ("reference", "keep_response")
PROMPT_TRUNCATION_SIDES = ("keep_start", "keep_end")
DROP_RESPONSE_TOO_LONG = "response longer than max_length allows (truncation=keep_response)"


def check_truncation(max_length: int, max_prompt_length: int, truncation: str, prompt_truncation_side: str):
    if truncation not in TRUNCATIONS:
        raise DataError(f"truncation must be one of {', '.join(TRUNCATIONS)}; got {truncation!r}")
    if prompt_truncation_side not in PROMPT_TRUNCATION_SIDES:
        raise DataError(f"prompt_truncation_side must be keep_start or keep_end; got {prompt_truncation_side!r}")
    if not 0 < max_prompt_length < max_length:
        raise DataError(f"need 0 < max_prompt_length < max_length; got {max_prompt_length} and {max_length}")


def truncate(prompt: list[int], responses: list[list[int]], *, max_length: int, max_prompt_length: int,
             truncation: str = "reference", prompt_truncation_side: str = "keep_start"):
    """Fit prompt + each response (EOS already appended) into max_length, as the module docstring says.
    Returns (prompt, responses, drop_reason); drop_reason is None when the example is kept."""
    longest = max(len(r) for r in responses)
    if len(prompt) + longest <= max_length:
        return prompt, responses, None
    if truncation == "reference":
        keep = max_prompt_length
    else:
        keep = max_length - longest
        if keep < 1:
            return prompt, responses, DROP_RESPONSE_TOO_LONG
    if len(prompt) > keep:
        prompt = prompt[:keep] if prompt_truncation_side == "keep_start" else prompt[len(prompt) - keep:]
    if truncation == "reference" and len(prompt) + longest > max_length:
        responses = [r[:max_length - max_prompt_length] for r in responses]
    return prompt, responses, None


def _encode(tokenizer, text: str, what: str, source: str, cache: dict | None = None) -> list[int]:
    if cache is not None and text in cache:
        return cache[text]
    ids = list(tokenizer.encode(text))
    if tokenizer.eos_id in ids:
        raise DataError(f"{source}: {what} contains the EOS token (id {tokenizer.eos_id}); text must not contain it")
    if cache is not None:
        cache[text] = ids
    return ids


def encode_example(example: dict, tokenizer, cache: dict | None = None, chat: str | None = None) -> dict:
    """Token ids of an example's parts, untruncated: {"prompt": ids, "<response>": ids + [EOS], ...} for
    responses "chosen"/"rejected" (preference) or "completion" (SFT). `cache` memoises prompts (TL;DR
    comparisons repeat each post many times). chat: the template family of conversational examples."""
    if chat is not None:
        return encode_conversation(example, tokenizer, chat)
    source = example.get("source", "example")
    ids = {"prompt": _encode(tokenizer, example["prompt"], "prompt", source, cache)}
    for key in ("chosen", "rejected", "completion"):
        if key in example:
            ids[key] = _encode(tokenizer, example[key], key, source) + [tokenizer.eos_id]
    return ids


def chat_family(examples: list[dict], tokenizer, override: str = "") -> str | None:
    """The chat template family to render conversational examples with (None for plain-text data): the
    override (data.chat_template), else the family of the tokenizer's own template."""
    if not any(isinstance(v, list) for ex in examples[:1] for v in ex.values()):
        return None
    if override:
        return chat_template.check_family(override)
    if tokenizer.chat_template is None:
        raise DataError(f"{examples[0].get('source', 'data')}: conversational data, but the tokenizer has no chat "
                        f"template; set data.chat_template to one of {', '.join(chat_template.FAMILIES)}")
    return chat_template.detect(tokenizer.chat_template)


def encode_conversation(example: dict, tokenizer, family: str) -> dict:
    """Token ids of a conversational example (message lists) as the model's chat template renders it: the
    prompt with the generation prompt; each response is what the template adds for the reply, cut at its
    end-of-turn marker, + the end-of-turn id (what the chat model emits to stop: it plays EOS's part here).
    {"messages"}: the text before the first assistant turn is the prompt, the rest the "completion", with
    "completion_labels" −100 outside the assistant turns. Special tokens in the rendered text become ids."""
    end, source = chat_template.end_of_turn(family), example.get("source", "example")
    end_id, encode = tokenizer.token_to_id(end), lambda text: list(tokenizer.encode(text, allow_special=True))
    bos = tokenizer.id_to_token(tokenizer.bos_id) if tokenizer.bos_id is not None else None
    if end_id is None:
        raise DataError(f"{source}: the tokenizer has no {end!r} token, which ends a turn in the {family} template")

    def reply(history: list, turn: list):  # (text before the reply, text up to its end marker, reply ids)
        before = chat_template.render(family, history, add_generation_prompt=True, bos_token=bos)
        full = chat_template.render(family, history + turn, add_generation_prompt=False, bos_token=bos)
        if not full.startswith(before) or end not in full[len(before):]:
            raise DataError(f"{source}: the {family} template does not render this reply after its prompt")
        cut = full.rindex(end)
        return before, full[:cut + len(end)], encode(full[len(before):cut]) + [end_id]

    if "messages" not in example:
        before = chat_template.render(family, example["prompt"], add_generation_prompt=True, bos_token=bos)
        return {"prompt": encode(before), **{key: reply(example["prompt"], example[key])[2]
                                            for key in ("chosen", "rejected", "completion") if key in example}}
    done, prompt, completion, labels = "", None, [], []
    for i, message in enumerate(example["messages"]):
        if message["role"] == "assistant":
            before, done_next, response = reply(example["messages"][:i], [message])
            if not before.startswith(done):
                raise DataError(f"{source}: the {family} template renders turn {i} differently in a longer conversation")
            context = encode(before[len(done):])
            if prompt is None:
                prompt = context
            else:
                completion, labels = completion + context, labels + [IGNORE_INDEX] * len(context)
            completion, labels, done = completion + response, labels + response, done_next
    return {"prompt": prompt, "completion": completion, "completion_labels": labels}


def _sequence(prompt: list[int], response: list[int], response_labels: list[int] | None = None):
    return prompt + response, [IGNORE_INDEX] * len(prompt) + (response_labels or response)[:len(response)]


def _build(ids: dict, response_keys: tuple, eos_id: int, **truncation_args):
    """Truncate and lay out one encoded example. Returns (tokenized dict, None) or (None, drop reason)."""
    prompt, responses, reason = truncate(ids["prompt"], [ids[k] for k in response_keys], **truncation_args)
    if reason is not None:
        return None, reason
    out = {"prompt_input_ids": prompt, "prompt_truncated": len(prompt) < len(ids["prompt"]),
           "responses_truncated": sum(len(r) < len(ids[k]) for k, r in zip(response_keys, responses)),
           "eos_removed": sum(r[-1:] != [eos_id] for r in responses)}
    if response_keys == ("completion",):
        out["input_ids"], out["labels"] = _sequence(prompt, responses[0], ids.get("completion_labels"))
    else:
        for key, response in zip(response_keys, responses):
            out[f"{key}_input_ids"], out[f"{key}_labels"] = _sequence(prompt, response)
    return out, None


def tokenize_dataset(examples: list[dict], tokenizer, *, kind: str, max_length: int, max_prompt_length: int,
                     truncation: str = "reference", prompt_truncation_side: str = "keep_start",
                     boundary_checks: int = 256, chat_template_family: str = ""):
    """Tokenize a whole dataset ("preference" or "sft" examples). Returns (kept, stats): kept examples carry
    "index" (their position in `kept`, the key of the reference log-prob cache) and "source"; stats feed
    data.format_summary: counts kept / dropped by reason / truncated, token-length percentiles before
    truncation, and how often, among the first `boundary_checks` examples, encode(prompt + response)
    differs from encode(prompt) + encode(response). Conversational examples are rendered with the chat
    template (chat_family: data.chat_template, else the tokenizer's own); their responses end with its
    end-of-turn token."""
    check_truncation(max_length, max_prompt_length, truncation, prompt_truncation_side)
    chat = chat_family(examples, tokenizer, chat_template_family)
    eos_id = tokenizer.eos_id if chat is None else tokenizer.token_to_id(chat_template.end_of_turn(chat))
    if kind not in ("preference", "sft"):
        raise DataError(f"kind must be preference or sft; got {kind!r}")
    response_keys = ("chosen", "rejected") if kind == "preference" else ("completion",)
    kept, dropped, cache = [], {}, {}
    lengths = {key: [] for key in ("prompt",) + response_keys}
    stats = {"examples": len(examples), "kept": 0, "dropped": dropped, "prompts_truncated": 0,
             "responses_truncated": 0, "eos_removed": 0, "truncation": truncation, "max_length": max_length,
             "max_prompt_length": max_prompt_length, "prompt_truncation_side": prompt_truncation_side,
             "boundary_checked": 0, "boundary_differs": 0}
    for i, example in enumerate(examples):
        ids = encode_example(example, tokenizer, cache, chat)
        for key in lengths:
            lengths[key].append(len(ids[key]))
        if i < boundary_checks and chat is None:
            joint = tokenizer.encode(example["prompt"] + example[response_keys[0]])
            stats["boundary_checked"] += 1
            stats["boundary_differs"] += joint != ids["prompt"] + ids[response_keys[0]][:-1]
        out, reason = _build(ids, response_keys, eos_id, max_length=max_length,
                             max_prompt_length=max_prompt_length, truncation=truncation,
                             prompt_truncation_side=prompt_truncation_side)
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        for key in ("prompts_truncated", "responses_truncated", "eos_removed"):
            stats[key] += int(out[key.replace("prompts", "prompt")])
        out["index"], out["source"] = len(kept), example.get("source", f"example {i}")
        kept.append(out)
    stats["kept"] = len(kept)
    stats["lengths"] = {key: percentiles(v) for key, v in lengths.items()}
    return kept, stats


def load_tokenized(fmt: str, path, split: str, tokenizer, *, max_length: int, max_prompt_length: int,
                   truncation: str = "reference", prompt_truncation_side: str | None = None, limit: int = 0,
                   seed: int = 0, boundary_checks: int = 256, chat_template_family: str = ""):
    """Read (formats.load_examples) and tokenize a preference or SFT dataset. Returns (kind, examples,
    summary text to print before training). prompt_truncation_side None = the format's default (keep_end
    for HH dialogue, keep_start otherwise). limit > 0 keeps a seeded random subset of that many examples
    (in file order; e.g. an evaluation cap: HH's test files are subsets one after another, so the first N
    would all be helpful-base)."""
    kind, examples, counts = formats.load_examples(fmt, path, split)
    if kind not in ("preference", "sft"):
        raise DataError(f"format {fmt!r} gives {kind} examples, not preference or sft")
    if 0 < limit < len(examples):
        counts[f"not used (limit={limit}, seeded subset)"] += len(examples) - limit
        examples = [examples[i] for i in data.seeded_subset(len(examples), limit, seed)]
    side = prompt_truncation_side or formats.DEFAULT_PROMPT_TRUNCATION_SIDE.get(fmt, "keep_start")
    kept, stats = tokenize_dataset(examples, tokenizer, kind=kind, max_length=max_length,
                                   max_prompt_length=max_prompt_length, truncation=truncation,
                                   prompt_truncation_side=side, boundary_checks=boundary_checks,
                                   chat_template_family=chat_template_family)
    return kind, kept, data.format_summary(f"{fmt} {path} [{split}]", counts, stats)


# --------------------------------------------------------------------------------------------------
# Collation


def pad_rows(rows: list[list[int]], value: int, *, left: bool = False, multiple_of: int | None = None):
    """Token rows -> (ids [B, T] filled with `value` beyond each row, attention_mask [B, T]: 1 on the row's
    tokens), T = the longest row rounded up to multiple_of. Right-padded, or left-padded with `left` (prompts
    for generation: every row's next token then goes at position T; positions come from the mask)."""
    length = max(len(r) for r in rows)
    if multiple_of:
        length = -(-length // multiple_of) * multiple_of
    ids = torch.full((len(rows), length), value, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if left else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row, dtype=torch.long), 1
    return ids, mask


def collate(input_rows: list[list[int]], label_rows: list[list[int]], indices: list[int], pad_id: int,
            pad_to_multiple_of: int | None = None) -> dict:
    """Right-padded input_ids, attention_mask, labels (−100 on padding): [N, T]; indices: the examples'
    dataset indices."""
    input_ids, attention_mask = pad_rows(input_rows, pad_id, multiple_of=pad_to_multiple_of)
    labels, _ = pad_rows(label_rows, IGNORE_INDEX, multiple_of=pad_to_multiple_of)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "indices": torch.tensor(indices, dtype=torch.long)}


def collate_preference(batch: list[dict], pad_id: int, pad_to_multiple_of: int | None = None) -> dict:
    """B tokenized pairs -> input_ids, attention_mask, labels: [2B, T] (rows 0..B−1 chosen, B..2B−1
    rejected, one forward pass), right-padded to the longest of both; indices: [B]."""
    rows = [ex["chosen_input_ids"] for ex in batch] + [ex["rejected_input_ids"] for ex in batch]
    labels = [ex["chosen_labels"] for ex in batch] + [ex["rejected_labels"] for ex in batch]
    return collate(rows, labels, [ex["index"] for ex in batch], pad_id, pad_to_multiple_of)


def collate_shared(batch: list[dict], pad_id: int, pad_to_multiple_of: int | None = None) -> dict:
    """B tokenized pairs -> one row of [prompt | chosen | rejected] blocks, back to back: each prompt is
    computed once and no position is padding (but for rounding up to pad_to_multiple_of).

    input_ids, attention_mask (1 on tokens), positions: [1, N], positions restarting at each pair and, for its
    rejected response, after its prompt, as if it followed the prompt alone; segments [B + 1]: pair b's block is
    [segments[b], segments[b + 1]) (the padding, if any, in the last block), so attention runs block by block
    (GPT.forward) and no pair sees another; block_masks [Σ_b L_b²]: each block's [L_b, L_b] mask flattened,
    causal, the rejected response not seeing the chosen one, a padding position only itself (Σ L² values
    where an [N, N] mask would take N², most of them False); the response tokens scored: gather_rows [M] (the
    positions whose outputs predict them: the last prompt position predicts both first tokens), gather_targets
    [M], gather_sequence [M] (pair b's chosen is sequence b, its rejected B + b); indices [B]. The log-probs
    equal, to float tolerance, those of collate_preference's [2B] rows (tested for every model family)."""
    B, tokens, positions, blocks, flat = len(batch), [], [], [], []
    for b, ex in enumerate(batch):
        p, start = len(ex["prompt_input_ids"]), len(tokens)
        chosen, rejected = ex["chosen_input_ids"][p:], ex["rejected_input_ids"][p:]
        flat += [(b + seq * B, start + ((first + k - 1) if k else p - 1), label)
                 for seq, first, labels in ((0, p, ex["chosen_labels"][p:]), (1, p + len(chosen), ex["rejected_labels"][p:]))
                 for k, label in enumerate(labels) if label != IGNORE_INDEX and (k or p)]  # no prompt: no first score
        blocks.append((start, p, len(chosen), len(rejected)))
        tokens += ex["prompt_input_ids"] + chosen + rejected
        positions += list(range(p + len(chosen))) + list(range(p, p + len(rejected)))
    input_ids, attention_mask = pad_rows([tokens], pad_id, multiple_of=pad_to_multiple_of)
    N, masks = input_ids.shape[1], []
    for b, (start, p, c, r) in enumerate(blocks):
        end = N if b == B - 1 else blocks[b + 1][0]
        block = torch.eye(end - start, dtype=torch.bool)  # a query always sees itself (padding only itself)
        block[:p + c + r, :p + c + r] = torch.ones(p + c + r, p + c + r, dtype=torch.bool).tril()
        block[p + c:p + c + r, p:p + c] = False  # the rejected response does not see the chosen one
        masks.append(block.flatten())
    seq_ids, flat_rows, targets = zip(*flat) if flat else ((), (), ())
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "positions": pad_rows([positions], 0, multiple_of=pad_to_multiple_of)[0],
            "segments": torch.tensor([start for start, *_ in blocks] + [N], dtype=torch.long),
            "block_masks": torch.cat(masks),
            "gather_rows": torch.tensor(flat_rows, dtype=torch.long), "gather_targets": torch.tensor(targets, dtype=torch.long),
            "gather_sequence": torch.tensor(seq_ids, dtype=torch.long),
            "indices": torch.tensor([ex["index"] for ex in batch], dtype=torch.long)}


def collate_sft(batch: list[dict], pad_id: int, pad_to_multiple_of: int | None = None) -> dict:
    """B tokenized SFT examples -> input_ids, attention_mask, labels: [B, T] right-padded; indices: [B]."""
    return collate([ex["input_ids"] for ex in batch], [ex["labels"] for ex in batch],
                   [ex["index"] for ex in batch], pad_id, pad_to_multiple_of)


# --------------------------------------------------------------------------------------------------
# Batch schedule


def epoch_seed(seed: int | str, epoch: int) -> int:
    """A 32-bit seed for (run seed, epoch): the first 4 bytes of sha256("seed:epoch"). Not seed + epoch,
    which would give seed 1's epoch 0 the order of seed 0's epoch 1; and not seed·2³² + epoch, since the
    CPU torch.Generator keeps only the low 32 bits of its seed. A string seed keeps another stream apart
    (PPO's sampling: "ppo:SEED", iteration)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:4], "little")


def epoch_order(n_examples: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The example order of one epoch: torch.randperm from a generator seeded by epoch_seed(seed, epoch)."""
    if not shuffle:
        return list(range(n_examples))
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(n_examples, generator=generator).tolist()


class BatchSchedule:
    """Which examples each rank trains on at each optimizer step.

    The data is one stream: epoch 0's seeded order, then epoch 1's, and so on. Global batch s is stream
    items [s·G, (s+1)·G) with G = global_batch_size; a batch that reaches past the end of an epoch is
    completed from the start of the next epoch's order (so no example is silently dropped and every
    step is full). A run covers `max_examples` examples if > 0, else `epochs` passes, rounded UP to whole
    global batches (`describe()` says by how many). Within a global batch, rank r takes the r-th
    contiguous slice of G / world_size examples and cuts it into micro-batches of micro_batch_size, so
    every rank runs the same number of micro-batches per step (no collective hangs).

    The position is `examples_seen` (steps done × G). `state_dict()` / `load_state_dict()` save and
    restore it; it does not depend on world_size or micro_batch_size, so a run may resume on another
    number of ranks with the same global batch.
    """

    def __init__(self, n_examples: int, global_batch_size: int, micro_batch_size: int, *, world_size: int = 1,
                 rank: int = 0, seed: int = 0, epochs: int = 1, max_examples: int = 0, shuffle: bool = True):
        if n_examples < 1:
            raise DataError("the dataset is empty: no examples to batch")
        if micro_batch_size < 1 or world_size < 1 or global_batch_size % (world_size * micro_batch_size):
            raise DataError(f"global batch size {global_batch_size} must be a positive multiple of world_size "
                            f"({world_size}) x micro_batch_size ({micro_batch_size})")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, {world_size})")
        if global_batch_size < 1 or (max_examples <= 0 and epochs < 1):
            raise DataError("need global_batch_size >= 1 and epochs >= 1 or max_examples > 0")
        self.n_examples, self.global_batch_size = n_examples, global_batch_size
        self.micro_batch_size = micro_batch_size
        self.world_size, self.rank, self.seed, self.shuffle = world_size, rank, seed, shuffle
        self.total_examples = max_examples if max_examples > 0 else epochs * n_examples
        self.n_steps = math.ceil(self.total_examples / global_batch_size)
        self.examples_seen = 0
        self._orders = {}

    @property
    def step(self) -> int:
        return self.examples_seen // self.global_batch_size

    @property
    def epoch(self) -> int:
        return self.examples_seen // self.n_examples

    @property
    def accumulation_steps(self) -> int:
        return self.global_batch_size // (self.world_size * self.micro_batch_size)

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}  # keep memory flat
            self._orders[epoch] = epoch_order(self.n_examples, self.seed, epoch, self.shuffle)
        return self._orders[epoch]

    def global_batch(self, step: int) -> list[int]:
        """Example indices of global batch `step` (all ranks)."""
        start = step * self.global_batch_size
        return [self._order(k // self.n_examples)[k % self.n_examples]
                for k in range(start, start + self.global_batch_size)]

    def rank_micro_batches(self, global_indices: list[int]) -> list[list[int]]:
        """This rank's share of a global batch, as accumulation_steps micro-batches."""
        per_rank = self.global_batch_size // self.world_size
        mine = global_indices[self.rank * per_rank:(self.rank + 1) * per_rank]
        return [mine[i:i + self.micro_batch_size] for i in range(0, per_rank, self.micro_batch_size)]

    def __iter__(self):
        return self

    def __next__(self) -> list[list[int]]:
        """The next step's micro-batches for this rank; advances the position."""
        if self.step >= self.n_steps:
            raise StopIteration
        micro_batches = self.rank_micro_batches(self.global_batch(self.step))
        self.examples_seen += self.global_batch_size
        return micro_batches

    def __len__(self) -> int:
        return self.n_steps - self.step

    def state_dict(self) -> dict:
        return {"examples_seen": self.examples_seen, "epoch": self.epoch, "step": self.step, "seed": self.seed,
                "n_examples": self.n_examples, "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict):
        for key in ("seed", "n_examples", "global_batch_size"):
            if state[key] != getattr(self, key):
                raise DataError(f"saved data position has {key}={state[key]}, this run has {getattr(self, key)}: "
                                f"the data order would not continue where it stopped")
        self.examples_seen = int(state["examples_seen"])

    def describe(self) -> str:
        extra = self.n_steps * self.global_batch_size - self.total_examples
        return (f"{self.n_steps} steps of {self.global_batch_size} examples ({self.world_size} ranks x "
                f"{self.accumulation_steps} micro-batches of {self.micro_batch_size}) over {self.n_examples} "
                f"examples, seed {self.seed}; {self.total_examples} examples asked, the last batch takes "
                f"{extra} more from the next epoch's order")


def eval_micro_batches(n_examples: int, micro_batch_size: int, world_size: int = 1, rank: int = 0):
    """Every example once, in order, spread over ranks with the same number of micro-batches each: the
    order is padded to a multiple of world_size × micro_batch_size by repeating examples from the start.
    Returns [(indices, is_real)] for this rank; weight metrics by is_real so padding never counts."""
    if n_examples < 1:
        raise DataError("the evaluation set is empty")
    chunk = world_size * micro_batch_size
    padded = -(-n_examples // chunk) * chunk
    order = [(i % n_examples, i < n_examples) for i in range(padded)]
    per_rank = padded // world_size
    mine = order[rank * per_rank:(rank + 1) * per_rank]
    return [([i for i, _ in mine[j:j + micro_batch_size]], [r for _, r in mine[j:j + micro_batch_size]])
            for j in range(0, per_rank, micro_batch_size)]
