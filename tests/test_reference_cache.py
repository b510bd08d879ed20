"""dpo/reference_cache.py: computed once per example (whatever the order, micro-batch size or rank split),
equal to the live computation, looked up by example index, and cached on disk under a key that changes
with the data, the settings and the reference checkpoint's files."""
import os
import random
import shutil

import pytest
import torch

from dpo import reference_cache
from dpo.batching import collate_preference, tokenize_dataset
from dpo.distributed import Dist
from dpo.interop.hf_checkpoint import save_pretrained
from dpo.logprobs import model_token_logps, response_mask, sequence_logps
from dpo.model import GPT, GPTConfig
from dpo.reference_cache import ReferenceLogps, cache_key, cache_path
from helpers import ByteTokenizer

TOK = ByteTokenizer()
CPU = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def collate(examples):
    return collate_preference(examples, TOK.pad_id_or_eos())


def tiny_reference(seed=0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, n_layer=2, n_head=2, n_embd=16, max_seq_len=64,
                          tie_embeddings=False, dropout=0.5))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()  # the reference is frozen: eval mode (its dropout would otherwise change the numbers)


def make_examples(n=7, seed=0):
    """Tokenized pairs of different prompt and response lengths, as train.py gets them."""
    rng = random.Random(seed)
    word = lambda lo, hi: "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(lo, hi)))
    raw = [{"prompt": word(0, 8), "chosen": word(1, 12), "rejected": word(1, 12)} for _ in range(n)]
    kept, _ = tokenize_dataset(raw, TOK, kind="preference", max_length=40, max_prompt_length=20)
    assert [ex["index"] for ex in kept] == list(range(n))
    return kept


def live_logps(model, example, ld_alpha=1.0):
    """The live reference's numbers for one pair, in a batch of its own (no padding): (chosen, rejected)."""
    batch = collate([example])
    with torch.no_grad():
        token_logps, _ = model_token_logps(model, batch)
        logps, _ = sequence_logps(token_logps, response_mask(batch["labels"]), ld_alpha)
    return logps.tolist()


@pytest.mark.parametrize("micro_batch_size", [1, 3, 7, 10])
def test_values_are_per_example_whatever_the_order_and_micro_batch_size(micro_batch_size):
    examples = make_examples()
    model = tiny_reference()
    shuffled = [examples[i] for i in (4, 0, 6, 2, 1, 5, 3)]  # each keeps its "index"
    table = reference_cache.compute(model, shuffled, collate, micro_batch_size, CPU)
    assert table.chosen_logps.dtype == table.rejected_logps.dtype == torch.float32
    assert table.chosen_logps.shape == table.rejected_logps.shape == (7,)
    for i, example in enumerate(examples):
        chosen, rejected = live_logps(model, example)
        assert table.chosen_logps[i].item() == pytest.approx(chosen, abs=1e-5)
        assert table.rejected_logps[i].item() == pytest.approx(rejected, abs=1e-5)
    assert (table.chosen_logps < 0).all() and (table.rejected_logps < 0).all()  # every entry was written
    other = reference_cache.compute(model, examples, collate, 2, CPU)
    torch.testing.assert_close(other.chosen_logps, table.chosen_logps, rtol=0, atol=1e-5)
    torch.testing.assert_close(other.rejected_logps, table.rejected_logps, rtol=0, atol=1e-5)


def test_ld_alpha_is_applied_per_pair():
    examples = make_examples(5, seed=1)
    model = tiny_reference()
    table = reference_cache.compute(model, examples, collate, 2, CPU, ld_alpha=0.5)
    plain = reference_cache.compute(model, examples, collate, 2, CPU)
    one = reference_cache.compute(model, examples, collate, 2, CPU, ld_alpha=1.0)  # alpha = 1: plain DPO
    assert torch.equal(one.chosen_logps, plain.chosen_logps) and torch.equal(one.rejected_logps, plain.rejected_logps)
    for i, example in enumerate(examples):
        chosen, rejected = live_logps(model, example, ld_alpha=0.5)
        assert table.chosen_logps[i].item() == pytest.approx(chosen, abs=1e-5)
        assert table.rejected_logps[i].item() == pytest.approx(rejected, abs=1e-5)
    n_chosen = [len(ex["chosen_input_ids"]) for ex in examples]
    n_rejected = [len(ex["rejected_input_ids"]) for ex in examples]
    assert n_chosen != n_rejected  # some pair has a tail to down-weight ...
    assert not torch.equal(torch.cat([table.chosen_logps, table.rejected_logps]),
                           torch.cat([plain.chosen_logps, plain.rejected_logps]))  # ... and it shows


def test_ranks_each_compute_their_share_and_the_shares_sum_to_the_whole():
    """Without a process group each rank's table holds its own examples and zeros elsewhere: what
    all_reduce sums. Every example is computed by exactly one rank, padding examples by none."""
    examples = make_examples(7)
    model = tiny_reference()
    whole = reference_cache.compute(model, examples, collate, 2, CPU)
    shares = [reference_cache.compute(model, examples, collate, 2,
                                      Dist(rank=r, world_size=2, local_rank=r, device=torch.device("cpu")))
              for r in range(2)]
    computed = torch.stack([s.chosen_logps != 0 for s in shares])
    assert computed.sum(0).tolist() == [1] * 7
    assert torch.equal(computed, torch.stack([s.rejected_logps != 0 for s in shares]))
    torch.testing.assert_close(shares[0].chosen_logps + shares[1].chosen_logps, whole.chosen_logps,
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(shares[0].rejected_logps + shares[1].rejected_logps, whole.rejected_logps,
                               rtol=0, atol=1e-5)


def test_lookup_gives_chosen_rows_then_rejected_rows():
    table = ReferenceLogps(torch.tensor([-1.0, -2.0, -3.0, -4.0]), torch.tensor([-10.0, -20.0, -30.0, -40.0]))
    assert table.lookup(torch.tensor([3, 0, 3])).tolist() == [-4.0, -1.0, -4.0, -40.0, -10.0, -40.0]
    assert table.lookup(torch.tensor([1])).dtype == torch.float32
    with pytest.raises(IndexError):
        table.lookup(torch.tensor([4]))


@pytest.fixture
def reference_dir(tmp_path):
    """A reference checkpoint folder: config.json + model.safetensors."""
    path = tmp_path / "reference"
    save_pretrained(tiny_reference(), path)
    return path


SETTINGS = {"data": {"max_length": 40, "max_prompt_length": 20, "truncation": "reference"}, "ld_alpha": 1.0}


def test_key_changes_with_data_settings_and_reference_files(reference_dir, tmp_path):
    examples = make_examples()
    base = cache_key(examples, SETTINGS, reference_dir)
    assert len(base) == 64 and int(base, 16) >= 0  # sha256 hex
    # the same inputs give the same key; dict order and fields that do not shape the numbers do not matter
    assert cache_key([dict(ex, source="elsewhere") for ex in examples],
                     dict(reversed(list(SETTINGS.items()))), reference_dir) == base
    changed = [dict(ex) for ex in examples]
    changed[3] = {**changed[3], "rejected_labels": changed[3]["rejected_labels"][:-1] + [-100]}
    assert cache_key(changed, SETTINGS, reference_dir) != base  # one label
    changed[3] = {**examples[3], "chosen_input_ids": examples[3]["chosen_input_ids"] + [1]}
    assert cache_key(changed, SETTINGS, reference_dir) != base  # one token id
    # the rows' boundaries count: moving a token from one row to the next is another key
    a = {"chosen_input_ids": [1, 2], "chosen_labels": [3], "rejected_input_ids": [4], "rejected_labels": [5]}
    b = {"chosen_input_ids": [1], "chosen_labels": [2, 3], "rejected_input_ids": [4], "rejected_labels": [5]}
    assert cache_key([a], SETTINGS, reference_dir) != cache_key([b], SETTINGS, reference_dir)
    assert cache_key(examples[:-1], SETTINGS, reference_dir) != base
    assert cache_key(examples[::-1], SETTINGS, reference_dir) != base
    assert cache_key(examples, {**SETTINGS, "ld_alpha": 0.5}, reference_dir) != base
    assert cache_key(examples, {**SETTINGS, "data": {**SETTINGS["data"], "max_length": 41}}, reference_dir) != base
    # the reference: another folder with the same files, a weight file rewritten, a file added
    copy = tmp_path / "copy"
    shutil.copytree(reference_dir, copy)  # copy2 keeps sizes and mtimes
    assert cache_key(examples, SETTINGS, copy) != base
    weights = reference_dir / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    touched = cache_key(examples, SETTINGS, reference_dir)
    assert touched != base
    (reference_dir / "generation_config.json").write_text("{}")
    added = cache_key(examples, SETTINGS, reference_dir)
    assert added not in (base, touched)
    (reference_dir / "notes.txt").write_text("not a weight or config file")  # not part of the identity
    assert cache_key(examples, SETTINGS, reference_dir) == added


def test_cache_path_follows_dpo_cache_dir(monkeypatch, tmp_path):
    key = "ab" * 32
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "c"))
    assert cache_path(key) == tmp_path / "c" / "reference_logps" / f"reference_logps-{key[:32]}.pt"
    monkeypatch.delenv("DPO_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = tmp_path / "home" / ".cache" / "dpo" / "reference_logps"
    assert cache_path(key) == default / f"reference_logps-{key[:32]}.pt"


def test_save_then_load_hits_and_a_miss_is_none(reference_dir, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache_here"))
    examples = make_examples()
    model = tiny_reference()
    key = cache_key(examples, SETTINGS, reference_dir)
    assert reference_cache.load(key) is None  # nothing cached yet
    table = reference_cache.compute(model, examples, collate, 3, CPU)
    path = reference_cache.save(table, key)
    assert path == cache_path(key) and path.parent == tmp_path / "cache_here" / "reference_logps"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # written atomically: no temp file left
    assert "reference log-probs of 7 pairs cached in" in capsys.readouterr().out
    loaded = reference_cache.load(key)
    assert torch.equal(loaded.chosen_logps, table.chosen_logps)
    assert torch.equal(loaded.rejected_logps, table.rejected_logps)
    index = torch.tensor([6, 1, 1])
    assert torch.equal(loaded.lookup(index), table.lookup(index))
    # other data, settings or reference: another key, a miss
    assert reference_cache.load(cache_key(examples[:-1], SETTINGS, reference_dir)) is None
    assert reference_cache.load(cache_key(examples, {**SETTINGS, "ld_alpha": 0.5}, reference_dir)) is None


def test_stale_or_unreadable_file_is_recomputed(reference_dir, capsys):
    examples = make_examples()
    model = tiny_reference()
    key = cache_key(examples, SETTINGS, reference_dir)
    table = reference_cache.compute(model, examples, collate, 3, CPU)
    # a file at that path whose stored key differs (a file-name prefix collision) is stale
    other = key[:32] + ("0" if key[32] != "0" else "1") * 32
    assert cache_path(other) == cache_path(key)
    reference_cache.save(ReferenceLogps(torch.zeros(7), torch.zeros(7)), other)
    capsys.readouterr()
    assert reference_cache.load(key) is None
    assert "key mismatch; recomputing" in capsys.readouterr().err
    assert reference_cache.load(other) is not None
    # a truncated or foreign file: None (recompute), not an error
    cache_path(key).write_bytes(b"not a torch file")
    assert reference_cache.load(key) is None
    assert "unreadable" in capsys.readouterr().err
    cache_path(key).write_bytes(b"")
    assert reference_cache.load(key) is None
    torch.save([1, 2, 3], cache_path(key))  # readable, but not ours
    assert reference_cache.load(key) is None
    reference_cache.save(reference_cache.compute(model, examples, collate, 3, CPU), key)  # recomputed
    assert torch.equal(reference_cache.load(key).chosen_logps, table.chosen_logps)
