"""Tokenization with explicit truncation, collation, and the seeded distributed batch schedule."""
import gzip
import json
import random

import pytest
import torch

from dpo import batching, data, formats
from dpo.batching import IGNORE_INDEX, BatchSchedule
from dpo.data import DataError
from helpers import ByteTokenizer, byte_tokenizer, chatml_tokenizer


TOK = ByteTokenizer()
EOS = TOK.eos_id


def reference_tokenize(prompt, chosen, rejected, truncation_mode, max_length, max_prompt_length):
    """The authors' tokenize_batch_element (preference_datasets.py), transcribed on id lists."""
    prompt_tokens, chosen_tokens, rejected_tokens = list(prompt), list(chosen) + [EOS], list(rejected) + [EOS]
    longer_response_length = max(len(chosen_tokens), len(rejected_tokens))
    if len(prompt_tokens) + longer_response_length > max_length:
        if truncation_mode == "keep_start":
            prompt_tokens = prompt_tokens[:max_prompt_length]
        else:
            prompt_tokens = prompt_tokens[-max_prompt_length:]
    if len(prompt_tokens) + longer_response_length > max_length:
        chosen_tokens = chosen_tokens[:max_length - max_prompt_length]
        rejected_tokens = rejected_tokens[:max_length - max_prompt_length]
    chosen_seq, rejected_seq = prompt_tokens + chosen_tokens, prompt_tokens + rejected_tokens
    chosen_labels = [-100] * len(prompt_tokens) + chosen_seq[len(prompt_tokens):]
    rejected_labels = [-100] * len(prompt_tokens) + rejected_seq[len(prompt_tokens):]
    return chosen_seq, chosen_labels, rejected_seq, rejected_labels


def random_example(rng):
    word = lambda n: "".join(rng.choice("abcdefgh ") for _ in range(n))
    return {"prompt": word(rng.randint(0, 40)), "chosen": word(rng.randint(1, 40)),
            "rejected": word(rng.randint(1, 40)), "source": "rand"}


def tokenize_one(example, kind="preference", **settings):
    """One example through tokenize_dataset: (tokenized example, None) or (None, drop reason)."""
    kept, stats = batching.tokenize_dataset([example], TOK, kind=kind, **settings)
    if kept:
        assert stats["kept"] == 1 and stats["dropped"] == {} and kept[0]["index"] == 0
        return kept[0], None
    (reason,) = stats["dropped"]
    return None, reason


@pytest.mark.parametrize("side", ["keep_start", "keep_end"])
def test_reference_mode_matches_the_authors_code(side):
    rng = random.Random(side)
    for _ in range(400):
        ex = random_example(rng)
        max_length = rng.randint(8, 70)
        max_prompt_length = rng.randint(1, max_length - 1)
        out, reason = tokenize_one(ex, max_length=max_length, max_prompt_length=max_prompt_length,
                                   truncation="reference", prompt_truncation_side=side)
        expected = reference_tokenize(*(TOK.encode(ex[k]) for k in ("prompt", "chosen", "rejected")),
                                      side, max_length, max_prompt_length)
        assert reason is None
        got = tuple(out[f"{k}_{part}"] for k in ("chosen", "rejected") for part in ("input_ids", "labels"))
        assert got == expected
        assert max(len(out["chosen_input_ids"]), len(out["rejected_input_ids"])) <= max_length


@pytest.mark.parametrize("side", ["keep_start", "keep_end"])
def test_keep_response_mode_never_cuts_responses(side):
    rng = random.Random(side)
    dropped = kept_cut = 0
    for _ in range(400):
        ex = random_example(rng)
        max_length = rng.randint(8, 70)
        out, reason = tokenize_one(ex, max_length=max_length, max_prompt_length=4,
                                   truncation="keep_response", prompt_truncation_side=side)
        prompt = TOK.encode(ex["prompt"])
        longest = 1 + max(len(ex["chosen"]), len(ex["rejected"]))
        if reason is not None:  # dropped exactly when not even one prompt token (or no prompt at all) fits
            assert reason == batching.DROP_RESPONSE_TOO_LONG
            assert longest + min(1, len(prompt)) > max_length
            dropped += 1
            continue
        kept_prompt = out["prompt_input_ids"]
        assert len(kept_prompt) == min(len(prompt), max_length - longest)  # cut only as much as needed
        kept_side = prompt[:len(kept_prompt)] if side == "keep_start" else prompt[len(prompt) - len(kept_prompt):]
        assert kept_prompt == kept_side
        kept_cut += len(kept_prompt) < len(prompt)
        for key in ("chosen", "rejected"):
            assert out[f"{key}_input_ids"] == kept_prompt + TOK.encode(ex[key]) + [EOS]
            assert len(out[f"{key}_input_ids"]) <= max_length
        assert out["eos_removed"] == out["responses_truncated"] == 0
    assert dropped > 10 and kept_cut > 10  # both branches exercised


def test_eos_once_per_response_unless_truncated_and_labels_mask_prompt():
    rng = random.Random(0)
    for truncation in batching.TRUNCATIONS:
        for _ in range(200):
            ex = random_example(rng)
            out, reason = tokenize_one(ex, max_length=40, max_prompt_length=20, truncation=truncation)
            if reason:
                continue
            n_prompt = len(out["prompt_input_ids"])
            eos_lost = 0
            for key in ("chosen", "rejected"):
                ids, labels = out[f"{key}_input_ids"], out[f"{key}_labels"]
                assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
                assert ids.count(EOS) == (ids[-1] == EOS) and ids.count(EOS) <= 1
                eos_lost += ids[-1] != EOS
            assert eos_lost == out["eos_removed"] <= out["responses_truncated"]


def test_text_containing_eos_is_an_error():
    ex = {"prompt": "p", "chosen": "fine", "rejected": "bad<|endoftext|>", "source": "f.jsonl:7"}
    with pytest.raises(DataError, match=r"^f.jsonl:7: rejected contains the EOS token \(id 256\)"):
        tokenize_one(ex, max_length=64, max_prompt_length=32)


def test_bad_truncation_settings():
    ex = {"prompt": "p", "chosen": "c", "rejected": "r"}
    for kwargs, expected in [({"truncation": "smart"}, "truncation must be one of reference, keep_response"),
                             ({"prompt_truncation_side": "middle"}, "prompt_truncation_side must be"),
                             ({"max_prompt_length": 64}, "need 0 < max_prompt_length < max_length")]:
        with pytest.raises(DataError, match=expected):
            tokenize_one(ex, **{"max_length": 64, "max_prompt_length": 8, **kwargs})
    with pytest.raises(DataError, match="kind must be preference or sft"):
        batching.tokenize_dataset([ex], TOK, kind="classification", max_length=64, max_prompt_length=8)


def test_sft():
    out, reason = tokenize_one({"prompt": "ab", "completion": "cde"}, kind="sft", max_length=16, max_prompt_length=8)
    assert reason is None and out["input_ids"] == [97, 98, 99, 100, 101, EOS]
    assert out["labels"] == [IGNORE_INDEX, IGNORE_INDEX, 99, 100, 101, EOS] and out["prompt_input_ids"] == [97, 98]
    # an empty prompt (plain text): every token is a label; the first is never scored (nothing precedes it)
    out, _ = tokenize_one({"prompt": "", "completion": "xyz"}, kind="sft", max_length=16, max_prompt_length=8)
    assert out["input_ids"] == out["labels"] == [120, 121, 122, EOS]
    # reference mode cuts the completion to max_length - max_prompt_length, removing its EOS
    out, _ = tokenize_one({"prompt": "", "completion": "x" * 20}, kind="sft", max_length=16, max_prompt_length=8)
    assert out["input_ids"] == [120] * 8 and out["eos_removed"] == out["responses_truncated"] == 1
    out, reason = tokenize_one({"prompt": "", "completion": "x" * 20}, kind="sft", max_length=16,
                               max_prompt_length=8, truncation="keep_response")
    assert out is None and reason == batching.DROP_RESPONSE_TOO_LONG


def test_encode_example_and_truncate():
    """The two steps tokenize_dataset is made of: ids with EOS appended to each response, then the cut."""
    ids = batching.encode_example({"prompt": "abcd", "chosen": "xy", "rejected": "z"}, TOK)
    assert ids == {"prompt": [97, 98, 99, 100], "chosen": [120, 121, EOS], "rejected": [122, EOS]}
    assert batching.encode_example({"prompt": "", "completion": "q"}, TOK) == {"prompt": [], "completion": [113, EOS]}
    responses = [ids["chosen"], ids["rejected"]]
    assert batching.truncate(ids["prompt"], responses, max_length=7, max_prompt_length=2) == \
        (ids["prompt"], responses, None)
    for side, prompt in (("keep_start", [97, 98]), ("keep_end", [99, 100])):
        assert batching.truncate(ids["prompt"], responses, max_length=6, max_prompt_length=2,
                                 prompt_truncation_side=side) == (prompt, responses, None)
        assert batching.truncate(ids["prompt"], responses, max_length=6, max_prompt_length=3,
                                 truncation="keep_response", prompt_truncation_side=side) == \
            (ids["prompt"][:3] if side == "keep_start" else ids["prompt"][1:], responses, None)
    assert batching.truncate(ids["prompt"], responses, max_length=4, max_prompt_length=2) == \
        ([97, 98], [[120, 121], [122, EOS]], None)
    assert batching.truncate([], responses, max_length=2, max_prompt_length=1, truncation="keep_response") == \
        ([], responses, batching.DROP_RESPONSE_TOO_LONG)


def test_tokenize_dataset_stats_and_summary(tmp_path):
    rows = [{"prompt": "p" * 30, "chosen": "c" * 5, "rejected": "r" * 3},   # prompt cut
            {"prompt": "p", "chosen": "c" * 60, "rejected": "r"},          # dropped under keep_response
            {"prompt": "q", "chosen": "c", "rejected": "rr"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kind, examples, counts = formats.load_examples("preference_jsonl", path)
    kept, stats = batching.tokenize_dataset(examples, TOK, kind=kind, max_length=32, max_prompt_length=16,
                                            truncation="keep_response")
    assert [k["index"] for k in kept] == [0, 1] and [k["source"] for k in kept] == [f"{path}:1", f"{path}:3"]
    assert stats["kept"] == 2 and stats["dropped"] == {batching.DROP_RESPONSE_TOO_LONG: 1}
    assert stats["prompts_truncated"] == 1 and stats["eos_removed"] == 0
    assert stats["lengths"]["chosen"] == {"p50": 6, "p90": 61, "p99": 61, "max": 61}
    assert stats["boundary_checked"] == 3 and stats["boundary_differs"] == 0  # bytes never merge
    ref_kept, ref_stats = batching.tokenize_dataset(examples, TOK, kind=kind, max_length=32, max_prompt_length=16)
    assert ref_stats["kept"] == 3 and ref_stats["eos_removed"] == 1 and ref_stats["responses_truncated"] == 1
    summary = data.format_summary("pairs", counts, stats)
    assert "tokenized 3: kept 2, dropped 1" in summary and "dropped: 1 response longer than" in summary
    assert "chosen tokens before truncation: p50 6 p90 61 p99 61 max 61" in summary


def test_load_tokenized_limit_is_a_seeded_subset_in_file_order(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "c", "rejected": "r"}) + "\n" for i in range(50)))
    kind, kept, summary = batching.load_tokenized("preference_jsonl", path, "train", TOK, max_length=32,
                                                  max_prompt_length=16, limit=10, seed=1)
    lines = [int(ex["source"].rsplit(":", 1)[1]) for ex in kept]
    assert kind == "preference" and len(kept) == 10 and lines == sorted(lines) and lines != list(range(1, 11))
    assert lines == [i + 1 for i in data.seeded_subset(50, 10, seed=1)]
    assert [ex["index"] for ex in kept] == list(range(10))
    again = batching.load_tokenized("preference_jsonl", path, "train", TOK, max_length=32, max_prompt_length=16,
                                    limit=10, seed=1)[1]
    assert [ex["source"] for ex in again] == [ex["source"] for ex in kept]
    assert "read 50 records" in summary and "40 not used (limit=10, seeded subset)" in summary
    assert "tokenized 10: kept 10, dropped 0" in summary and "keep_start" in summary


def test_hh_prompts_are_cut_from_the_start_by_default(tmp_path):
    path = tmp_path / "test.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"chosen": "\n\nHuman: " + "x" * 40 + "\n\nAssistant: yes",
                            "rejected": "\n\nHuman: " + "x" * 40 + "\n\nAssistant: no"}) + "\n")
    _, (ex,), summary = batching.load_tokenized("hh", path, "test", TOK, max_length=32, max_prompt_length=16)
    assert "keep_end" in summary and TOK.decode(ex["prompt_input_ids"]) == "x" * 4 + "\n\nAssistant:"


# ---------------------------------------------------------------------------------------------- collation


def pairs(n, rng):
    examples = [random_example(rng) for _ in range(n)]
    kept, stats = batching.tokenize_dataset(examples, TOK, kind="preference", max_length=48, max_prompt_length=24)
    assert stats["kept"] == n
    return kept


@pytest.mark.parametrize("multiple", [None, 8])
def test_collate_preference_padding_never_carries_a_label(multiple):
    kept = pairs(12, random.Random(1))
    batch = [kept[i] for i in (7, 2, 9, 0, 4)]  # a shuffled micro-batch
    out = batching.collate_preference(batch, pad_id=0, pad_to_multiple_of=multiple)
    B, T = 5, out["input_ids"].shape[1]
    longest = max(len(ex[f"{k}_input_ids"]) for ex in batch for k in ("chosen", "rejected"))
    assert T == (longest if multiple is None else -(-longest // 8) * 8)
    assert out["input_ids"].shape == out["attention_mask"].shape == out["labels"].shape == (2 * B, T)
    assert out["indices"].tolist() == [7, 2, 9, 0, 4] and out["indices"].dtype == torch.long
    pad = out["attention_mask"] == 0
    assert (out["labels"][pad] == IGNORE_INDEX).all() and (out["input_ids"][pad] == 0).all()
    for row, ex in enumerate(batch + batch):
        key = "chosen" if row < B else "rejected"
        n = len(ex[f"{key}_input_ids"])
        assert out["attention_mask"][row].tolist() == [1] * n + [0] * (T - n)  # right padding
        assert out["input_ids"][row, :n].tolist() == ex[f"{key}_input_ids"]
        assert out["labels"][row, :n].tolist() == ex[f"{key}_labels"]
    sft = batching.collate_sft([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "index": 3},
                                {"input_ids": [8], "labels": [8], "index": 4}], pad_id=9)
    assert sft["input_ids"].tolist() == [[5, 6, 7], [8, 9, 9]]
    assert sft["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert sft["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]] and sft["indices"].tolist() == [3, 4]
    with pytest.raises(KeyError, match="index"):  # every tokenized example carries its index
        batching.collate_sft([{"input_ids": [5], "labels": [5]}], pad_id=9)
    with pytest.raises(KeyError, match="index"):
        batching.collate_preference([{k: v for k, v in batch[0].items() if k != "index"}], pad_id=0)


def test_pad_rows_right_and_left():
    ids, mask = batching.pad_rows([[1, 2, 3], [4], [5, 6]], 0, left=True, multiple_of=4)
    assert ids.tolist() == [[0, 1, 2, 3], [0, 0, 0, 4], [0, 0, 5, 6]]
    assert mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 1, 1]]
    ids, mask = batching.pad_rows([[1, 2, 3], [4], [5, 6]], -100)
    assert ids.tolist() == [[1, 2, 3], [4, -100, -100], [5, 6, -100]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]] and ids.dtype == mask.dtype == torch.long
    ids, mask = batching.pad_rows([[7, 8]], 9, multiple_of=2)  # already a multiple: no extra column
    assert ids.tolist() == [[7, 8]] and mask.tolist() == [[1, 1]]
    ids, mask = batching.pad_rows([[], [3]], 9)  # an empty row is all padding
    assert ids.tolist() == [[9], [3]] and mask.tolist() == [[0], [1]]
    # the pad id rule: the tokenizer's pad id, else EOS (GPT-2 has none)
    assert TOK.pad_id_or_eos() == EOS and byte_tokenizer().pad_id_or_eos() == EOS


# ---------------------------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("n_examples", [37, 50, 13, 64])
def test_ranks_and_micro_batches_cover_the_same_examples_as_one_batch(n_examples):
    one = BatchSchedule(n_examples, 16, 16, seed=5, epochs=3)
    ranks = [BatchSchedule(n_examples, 16, 2, world_size=2, rank=r, seed=5, epochs=3) for r in range(2)]
    assert len(one) == len(ranks[0]) == -(-3 * n_examples // 16)
    for step, (single,) in enumerate(one):
        per_rank = [next(s) for s in ranks]
        assert [len(m) for m in per_rank] == [4, 4]  # same micro-batch count on every rank: no hang
        assert all(len(mb) == 2 for m in per_rank for mb in m)
        assert [i for m in per_rank for mb in m for i in mb] == single
    assert all(len(s) == 0 for s in ranks)


def test_the_stream_is_seeded_epoch_orders_without_drops():
    n, gbs = 37, 8
    sched = BatchSchedule(n, gbs, 4, seed=11, epochs=2)
    stream = [i for step in sched for mb in step for i in mb]
    orders = [batching.epoch_order(n, 11, e) for e in range(3)]
    assert stream == (orders[0] + orders[1] + orders[2])[:len(stream)]
    assert len(stream) == 80 and sorted(orders[0]) == list(range(n)) and orders[0] != orders[1]
    assert "10 steps" in sched.describe() and "takes 6 more from the next epoch" in sched.describe()
    assert batching.epoch_order(n, 12, 0) != orders[0] and batching.epoch_order(n, 12, 0) != orders[1]
    assert batching.epoch_order(5, 0, 0, shuffle=False) == [0, 1, 2, 3, 4]
    distinct = {tuple(batching.epoch_order(n, seed, epoch)) for seed in range(8) for epoch in range(8)}
    assert len(distinct) == 64  # every (seed, epoch) has its own order
    assert len(BatchSchedule(n, gbs, 4, max_examples=20)) == 3


def test_restoring_a_saved_position_continues_with_the_same_batch():
    uninterrupted = BatchSchedule(29, 8, 2, world_size=2, rank=1, seed=3, epochs=4)
    for _ in range(6):
        next(uninterrupted)
    state = json.loads(json.dumps(uninterrupted.state_dict()))  # what a checkpoint stores
    assert state == {"examples_seen": 48, "epoch": 1, "step": 6, "seed": 3, "n_examples": 29, "global_batch_size": 8}
    resumed = BatchSchedule(29, 8, 2, world_size=2, rank=1, seed=3, epochs=4)
    resumed.load_state_dict(state)
    assert list(resumed) == list(uninterrupted)
    one_rank = BatchSchedule(29, 8, 4, seed=3, epochs=4)  # resuming on another world size: same global batch
    one_rank.load_state_dict(state)
    assert one_rank.global_batch(one_rank.step) == BatchSchedule(29, 8, 8, seed=3).global_batch(6)
    with pytest.raises(DataError, match="saved data position has seed=3, this run has 4"):
        BatchSchedule(29, 8, 2, seed=4).load_state_dict(state)


def test_schedule_rejects_bad_shapes():
    with pytest.raises(DataError, match=r"global batch size 10 must be a positive multiple of "
                                        r"world_size \(2\) x micro_batch_size \(4\)"):
        BatchSchedule(100, 10, 4, world_size=2)
    with pytest.raises(DataError, match="dataset is empty"):
        BatchSchedule(0, 8, 4)
    with pytest.raises(DataError, match="rank 2 is not in"):
        BatchSchedule(10, 8, 4, world_size=2, rank=2)


@pytest.mark.parametrize("n", [1, 10, 16, 17])
def test_eval_micro_batches_cover_every_example_once(n):
    per_rank = [batching.eval_micro_batches(n, 4, world_size=2, rank=r) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1])
    real = [i for mbs in per_rank for idx, is_real in mbs for i, r in zip(idx, is_real) if r]
    assert sorted(real) == list(range(n)) and all(len(idx) == 4 for mbs in per_rank for idx, _ in mbs)


# ---------------------------------------------------------------------------------------------- real tokenizer


def test_gpt2_prompt_response_boundary(shared_data):
    tokenizer_module = pytest.importorskip("dpo.tokenizer")
    tok = tokenizer_module.Tokenizer.from_pretrained(shared_data / "gpt2")
    examples = formats.read_tldr_sft(shared_data / "tldr-mini", "valid")[:200]
    kept, stats = batching.tokenize_dataset(examples, tok, kind="sft", max_length=512, max_prompt_length=384,
                                            boundary_checks=200)
    # "TL;DR:" + " summary": the space starts the response's first token, so nothing merges across.
    assert stats["boundary_checked"] == 200 and stats["boundary_differs"] == 0
    ex = kept[0]
    assert ex["input_ids"][len(ex["prompt_input_ids"]):] == tok.encode(examples[0]["completion"]) + [tok.eos_id]
    # A response without its leading space merges with the prompt's last word under GPT-2 BPE: we keep
    # the ids tokenized apart (prompt ids are then identical for chosen and rejected).
    glued = {"prompt": "Human: hello", "completion": "world", "source": "glued"}
    _, glued_stats = batching.tokenize_dataset([glued], tok, kind="sft", max_length=64, max_prompt_length=32)
    assert tok.encode("Human: hello") + tok.encode("world") != tok.encode("Human: helloworld")
    assert glued_stats["boundary_differs"] == 1
    hh_like = {"prompt": "\n\nHuman: Hi\n\nAssistant:", "completion": " Hello there.", "source": "hh"}
    _, hh_stats = batching.tokenize_dataset([hh_like], tok, kind="sft", max_length=64, max_prompt_length=32)
    assert hh_stats["boundary_differs"] == 0
    reviews = formats.read_imdb(shared_data / "aclImdb-mini", "test")[:100]
    for p, r in zip(formats.imdb_prefix_prompts(reviews, tok, seed=0), reviews):
        assert tok.encode(r["text"])[: len(p["prompt_input_ids"])] == p["prompt_input_ids"]


# ----- conversational examples: rendered by the chat template ------------------------------------------------

def messages(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


def test_conversational_pair_is_the_template_text_and_ends_with_the_end_of_turn_token():
    from dpo import chat_template
    tok = chatml_tokenizer()
    prompt = messages(("system", "Be brief."), ("user", "Hi?"))
    example = {"prompt": prompt, "chosen": messages(("assistant", "Hello.")), "rejected": messages(("assistant", "No."))}
    ids = batching.encode_conversation(example, tok, "chatml")
    assert ids["prompt"] == tok.encode(chat_template.render("chatml", prompt, add_generation_prompt=True),
                                       allow_special=True)
    assert ids["chosen"] == tok.encode("Hello.") + [258] and ids["rejected"] == tok.encode("No.") + [258]
    whole = chat_template.render("chatml", prompt + example["chosen"], add_generation_prompt=False)
    assert tok.decode(ids["prompt"] + ids["chosen"]) == whole.removesuffix("\n")  # the model stops at <|im_end|>


def test_multi_turn_sft_learns_every_assistant_turn_and_nothing_else():
    from dpo import chat_template
    tok = chatml_tokenizer()
    conversation = messages(("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2"))
    ids = batching.encode_conversation({"messages": conversation}, tok, "chatml")
    whole = chat_template.render("chatml", conversation, add_generation_prompt=False).removesuffix("\n")
    assert ids["prompt"] + ids["completion"] == tok.encode(whole, allow_special=True)
    learned = [i for i in ids["completion_labels"] if i != IGNORE_INDEX]
    assert learned == tok.encode("A1") + [258] + tok.encode("A2") + [258]
    assert ids["completion_labels"][:3] == tok.encode("A1") + [258] and ids["completion_labels"][-3:] == learned[-3:]
    kept, stats = batching.tokenize_dataset([{"messages": conversation, "source": "s:1"}], tok, kind="sft",
                                            max_length=64, max_prompt_length=32, chat_template_family="chatml")
    labels = [i for i in kept[0]["labels"] if i != IGNORE_INDEX]
    assert labels == learned and stats["eos_removed"] == 0


def test_conversational_data_needs_a_template():
    from dpo.chat_template import ChatTemplateError
    example = {"prompt": messages(("user", "Q")), "chosen": messages(("assistant", "A")),
               "rejected": messages(("assistant", "B")), "source": "pairs.jsonl:1"}
    with pytest.raises(DataError, match="pairs.jsonl:1: conversational data, but the tokenizer has no chat template"):
        batching.tokenize_dataset([example], chatml_tokenizer(), kind="preference", max_length=64,
                                  max_prompt_length=32)
    with pytest.raises(ChatTemplateError, match="unknown chat template family 'chatmI'"):
        batching.tokenize_dataset([example], chatml_tokenizer(), kind="preference", max_length=64,
                                  max_prompt_length=32, chat_template_family="chatmI")


def test_collate_shared_lays_out_prompt_once_and_hides_the_responses_from_each_other():
    ex = {"prompt_input_ids": [1, 2], "chosen_input_ids": [1, 2, 3, 4], "chosen_labels": [-100, -100, 3, 4],
          "rejected_input_ids": [1, 2, 5], "rejected_labels": [-100, -100, 5], "index": 7}
    batch = batching.collate_shared([ex], pad_id=0, pad_to_multiple_of=8)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0, 0, 0]]
    assert batch["positions"].tolist() == [[0, 1, 2, 3, 2, 0, 0, 0]]  # the rejected restarts after the prompt
    mask = batch["block_masks"].view(8, 8)  # one block, the rounding padding in it
    assert mask[4].tolist() == [True, True, False, False, True, False, False, False]  # rejected: prompt + itself
    assert mask[3].tolist() == [True, True, True, True, False, False, False, False]   # chosen: prompt + chosen
    assert mask[6].tolist() == [False] * 6 + [True, False]  # a padding position sees only itself
    # scored: chosen 3 from position 1, chosen 4 from 2; rejected 5 from the prompt's last position, 1
    assert batch["gather_rows"].tolist() == [1, 2, 1] and batch["gather_targets"].tolist() == [3, 4, 5]
    assert batch["gather_sequence"].tolist() == [0, 0, 1] and batch["indices"].tolist() == [7]
    assert batch["segments"].tolist() == [0, 8]
