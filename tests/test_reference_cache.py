"""dpo/reference_cache.py: computed once, looked up by example index, keyed by data + tokenization + weights."""
import pytest
import torch
import torch.nn.functional as F

from dpo.logprobs import sequence_logps
from dpo.reference_cache import (ReferenceLogps, cache_path, compute_reference_logps, default_cache_dir,
                                 hidden_gatherer, load_or_compute_reference_logps, load_reference_logps,
                                 logits_gatherer, reference_cache_key, save_reference_logps, weights_sha256)

V, C = 23, 8


class TinyLM(torch.nn.Module):
    """The model interface of dpo/model.py: model(input_ids, attention_mask=None, return_hidden=False)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(V, C)
        self.mix = torch.nn.Linear(C, C)
        self.dropout = torch.nn.Dropout(0.5)
        self.lm_head = torch.nn.Linear(C, V)
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, return_hidden=False):
        self.calls += 1
        x = self.embed(input_ids)
        x = torch.tanh(self.mix(self.dropout(x.cumsum(1))))  # each position sees its prefix
        return x if return_hidden else self.lm_head(x)


def make_examples(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        p, c, r = (int(torch.randint(1, 5, (1,), generator=g)) for _ in range(3))
        examples.append((torch.randint(0, V, (p,), generator=g).tolist(),
                         torch.randint(0, V, (c,), generator=g).tolist(),
                         torch.randint(0, V, (r,), generator=g).tolist()))
    return examples


def collate(examples, indices):
    """Chosen rows then rejected rows, right padded, labels -100 on prompt and padding."""
    rows = [examples[i][0] + examples[i][1] for i in indices] + [examples[i][0] + examples[i][2] for i in indices]
    prompts = [len(examples[i][0]) for i in indices] * 2
    T = max(map(len, rows))
    input_ids = torch.zeros(len(rows), T, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for k, (row, p) in enumerate(zip(rows, prompts)):
        input_ids[k, :len(row)] = torch.tensor(row)
        attention_mask[k, :len(row)] = 1
        labels[k, p:len(row)] = torch.tensor(row[p:])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "indices": torch.tensor(indices)}


def batches_in_order(examples, order, size=3):
    return [collate(examples, order[i:i + size]) for i in range(0, len(order), size)]


def one_example_logps(model, example):
    batch = collate([example], [0])
    with torch.no_grad():
        logps, n = sequence_logps(model(batch["input_ids"]), batch["labels"])
    return logps.tolist(), n.tolist()


def test_values_are_per_example_whatever_the_batch_order():
    examples = make_examples()
    model = TinyLM().train()
    order = [4, 0, 6, 2, 1, 5, 3]
    ref = compute_reference_logps(model, batches_in_order(examples, order), progress=False)
    assert model.training  # mode restored; dropout was off during the pass (values below match eval mode)
    model.eval()
    for i, example in enumerate(examples):
        (chosen, rejected), (nc, nr) = one_example_logps(model, example)
        assert ref.chosen_logps[i].item() == pytest.approx(chosen, abs=1e-5)
        assert ref.rejected_logps[i].item() == pytest.approx(rejected, abs=1e-5)
        assert (ref.chosen_lengths[i].item(), ref.rejected_lengths[i].item()) == (nc, nr)
    c, r = ref.lookup(torch.tensor([3, 0, 3]))
    assert c.tolist() == [ref.chosen_logps[3].item(), ref.chosen_logps[0].item(), ref.chosen_logps[3].item()]
    assert r.tolist() == [ref.rejected_logps[3].item(), ref.rejected_logps[0].item(), ref.rejected_logps[3].item()]
    with pytest.raises(IndexError, match="7 examples"):
        ref.lookup(torch.tensor([7]))


def test_hidden_gatherer_equals_logits_gatherer():
    examples = make_examples()
    model = TinyLM()
    batches = batches_in_order(examples, list(range(7)))
    a = compute_reference_logps(model, batches, logits_gatherer, progress=False)
    b = compute_reference_logps(model, batches, hidden_gatherer, progress=False)
    torch.testing.assert_close(a.chosen_logps, b.chosen_logps, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.rejected_logps, b.rejected_logps, rtol=0, atol=1e-5)


def test_batches_without_index_are_numbered_in_order():
    examples = make_examples(5)
    batches = batches_in_order(examples, list(range(5)), size=2)
    for b in batches:
        del b["indices"]
    ref = compute_reference_logps(TinyLM(), batches, progress=False)
    (chosen, _), _ = one_example_logps(TinyLM().eval(), examples[4])
    assert ref.chosen_logps[4].item() == pytest.approx(chosen, abs=1e-5)


def test_missing_and_duplicate_examples_are_errors():
    examples = make_examples()
    with pytest.raises(ValueError, match="1 of 7 examples are missing"):
        compute_reference_logps(TinyLM(), batches_in_order(examples, [0, 1, 2, 3, 4, 5]), num_examples=7,
                                progress=False)
    with pytest.raises(ValueError, match="appear more than once"):
        compute_reference_logps(TinyLM(), batches_in_order(examples, [0, 1, 2, 2]), progress=False)


def test_cache_hit_skips_the_model_and_miss_recomputes(tmp_path):
    examples = make_examples()
    model = TinyLM()
    tokenization = {"max_length": 512, "max_prompt_length": 256, "truncation": "reference"}
    key = reference_cache_key(examples, tokenization, weights_sha256(model))
    batches = batches_in_order(examples, list(range(7)))
    first, hit = load_or_compute_reference_logps(model, batches, key=key, cache_dir=tmp_path, progress=False)
    assert not hit and model.calls == len(batches)
    assert cache_path(key, tmp_path).is_file()
    assert [p.name for p in tmp_path.iterdir()] == [cache_path(key, tmp_path).name]  # no temp file left

    second, hit = load_or_compute_reference_logps(model, batches, key=key, cache_dir=tmp_path, progress=False)
    assert hit and model.calls == len(batches)  # not called again
    assert torch.equal(first.chosen_logps, second.chosen_logps)
    assert torch.equal(first.rejected_lengths, second.rejected_lengths)

    # a file at that path whose stored key differs (a file-name prefix collision) is recomputed
    path = cache_path(key, tmp_path)
    save_reference_logps(ReferenceLogps(*(torch.zeros(7),) * 4), key[:32] + "0" * 32, path)
    assert load_reference_logps(key, path) is None
    third, hit = load_or_compute_reference_logps(model, batches, key=key, cache_dir=tmp_path, progress=False)
    assert not hit and model.calls == 2 * len(batches) and torch.equal(third.chosen_logps, first.chosen_logps)
    # a truncated file is recomputed, not an error
    path.write_bytes(b"not a torch file")
    fourth, hit = load_or_compute_reference_logps(model, batches, key=key, cache_dir=tmp_path, progress=False)
    assert not hit and torch.equal(fourth.chosen_logps, first.chosen_logps)
    assert load_reference_logps(key, path) is not None  # rewritten


def test_key_depends_on_data_tokenization_weights_and_gatherer():
    examples = make_examples()
    model = TinyLM()
    tok = {"max_length": 512, "max_prompt_length": 256}
    base = reference_cache_key(examples, tok, weights_sha256(model))
    assert base == reference_cache_key([tuple(e) for e in examples], dict(reversed(tok.items())),
                                       weights_sha256(model))
    changed_data = [list(e) for e in examples]
    changed_data[3] = (examples[3][0], examples[3][1] + [1], examples[3][2])
    assert reference_cache_key(changed_data, tok, weights_sha256(model)) != base
    assert reference_cache_key(examples, {**tok, "max_length": 256}, weights_sha256(model)) != base
    with torch.no_grad():
        model.lm_head.bias[0] += 1e-3
    assert reference_cache_key(examples, tok, weights_sha256(model)) != base
    assert reference_cache_key(examples, tok, weights_sha256(TinyLM())) == base
    assert reference_cache_key(examples, tok, weights_sha256(TinyLM()), {"ld_alpha": 0.5}) != base
    # tensors and lists of the same ids hash alike only when they are the same type: no silent aliasing
    assert reference_cache_key([torch.tensor([1, 2])], tok, "x") != reference_cache_key([[1, 2]], tok, "x")


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "reference_logps"
    examples = make_examples(3)
    key = reference_cache_key(examples, {}, "ckpt-1")
    _, hit = load_or_compute_reference_logps(TinyLM(), batches_in_order(examples, [0, 1, 2]), key=key,
                                             progress=False)
    assert not hit and cache_path(key).parent == tmp_path / "c" / "reference_logps" and cache_path(key).is_file()


def test_logits_gatherer_uses_the_attention_mask_and_labels():
    examples = make_examples(2)
    batch = collate(examples, [0, 1])
    model = TinyLM().eval()
    logps, n = logits_gatherer(model, batch)
    expected, _ = sequence_logps(F.linear(model(batch["input_ids"], return_hidden=True), model.lm_head.weight,
                                          model.lm_head.bias), batch["labels"])
    torch.testing.assert_close(logps, expected)
    assert n.tolist() == (batch["labels"][:, 1:] != -100).sum(-1).tolist()
