"""dpo/generation.py: greedy generation equal to transformers' greedy tokens in every family, KV-cached and
left-padded sampling equal to a full recompute per prompt, batch independence with uniforms, the stop rule
(stop_ids, completions up to and including the first stop token, early exit), and the token draw (top-k,
top-p, softmax frequencies)."""
import contextlib

import pytest
import torch

from dpo.generation import attention_backends, completion_text, generate, sample_token, stop_ids
from dpo.interop.hf_checkpoint import load_pretrained
from dpo.model import GPT, GPTConfig
from helpers import FAMILIES, byte_tokenizer, hf_config, randomize_

V = 128
EOS, PAD = 1, 0


class IdTokenizer:
    """What generate asks of a tokenizer: eos_id (None: no EOS) and pad_id_or_eos()."""

    def __init__(self, eos_id=EOS, pad_id=PAD):
        self.eos_id, self.pad_id = eos_id, pad_id

    def pad_id_or_eos(self):
        return self.pad_id if self.pad_id is not None else self.eos_id


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    """(transformers model, our model loaded from its checkpoint) for each family of tests/test_model.py."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = randomize_(transformers.AutoModelForCausalLM.from_config(hf_config(request.param)))
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, load_pretrained(path).eval()


def prompts(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, V, (n,), generator=g).tolist() for n in lengths]


def until_stop(tokens, stop):
    """tokens cut after the first stop token (kept)."""
    end = next((k for k, t in enumerate(tokens) if t in stop), None)
    return tokens if end is None else tokens[:end + 1]


def test_greedy_generation_matches_transformers(pair):
    hf, ours = pair
    rows = prompts([9, 4], seed=2)  # left-padded in one batch
    ids = torch.full((2, 9), PAD)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, 9 - len(row):], mask[i, 9 - len(row):] = torch.tensor(row), 1
    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                           eos_token_id=EOS, pad_token_id=PAD)[:, 9:]
    got = generate(ours, IdTokenizer(), rows, max_new_tokens=20, temperature=0)
    assert stop_ids(ours, IdTokenizer()) == [EOS]
    assert got == [until_stop(row, [EOS]) for row in expected.tolist()]
    assert all(len(c) >= 1 for c in got) and max(map(len, got)) > 1


def reference_sample(model, prompt, uniforms, stop, max_new_tokens, **draw):
    """One prompt alone, no padding, no KV cache: the full sequence recomputed at every step."""
    seq = list(prompt)
    with torch.no_grad():
        for step in range(max_new_tokens):
            logits = model(torch.tensor([seq]))[:, -1]
            seq.append(int(sample_token(logits, uniforms=uniforms[step:step + 1], **draw)))
            if seq[-1] in stop:
                break
    return seq[len(prompt):]


def test_sampling_with_uniforms_equals_full_recompute_and_ignores_the_batch(pair):
    """KV cache + left padding + positions from the mask: each row's draws are those of its prompt alone."""
    _, ours = pair
    rows = prompts([7, 2, 5], seed=3)
    uniforms = torch.rand(3, 10, generator=torch.Generator().manual_seed(4))
    draw = dict(temperature=0.9, top_k=40, top_p=0.95)
    tok = IdTokenizer()
    stop = stop_ids(ours, tok)  # EOS (the config's eos_token_id too)
    got = generate(ours, tok, rows, max_new_tokens=10, uniforms=uniforms, **draw)
    assert sum(map(len, got)) > 10
    for i, row in enumerate(rows):
        assert got[i] == reference_sample(ours, row, uniforms[i], stop, 10, **draw)
        assert generate(ours, tok, [row], max_new_tokens=10, uniforms=uniforms[i:i + 1], **draw) == [got[i]]
    reordered = generate(ours, tok, rows[::-1], max_new_tokens=10, uniforms=uniforms.flip(0), **draw)
    assert reordered == got[::-1]


def small_model(**kw):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=V, n_layer=2, n_head=4, n_embd=32, max_seq_len=64, tie_embeddings=False, **kw)
    return randomize_(GPT(cfg))


def test_each_row_stops_at_its_first_stop_token():
    model = small_model()
    rows = prompts([6, 6], seed=5)
    free = generate(model, IdTokenizer(eos_id=None), rows, max_new_tokens=12, temperature=0)
    new0, new1 = free
    assert len(new0) == len(new1) == 12
    # a token that row 0 emits first at some step k > 0 and row 1 never emits: make it the EOS
    k, eos = next((k, t) for k, t in enumerate(new0) if k > 0 and t not in new0[:k] and t not in new1)
    out = generate(model, IdTokenizer(eos_id=eos), rows, max_new_tokens=12, temperature=0)
    assert out == [new0[:k + 1], new1]  # up to and including the EOS; row 1 never ends
    # the config's end ids stop rows too (an int or a list, on top of the tokenizer's EOS)
    model.config.eos_id = [new0[0], new1[0]]
    assert stop_ids(model, IdTokenizer(eos_id=eos)) == sorted({eos, new0[0], new1[0]})
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        first = generate(model, IdTokenizer(eos_id=None), rows, max_new_tokens=12, temperature=0)
    finally:
        hook.remove()
    assert first == [new0[:1], new1[:1]]
    assert len(calls) == 1  # every row ended at its first token: only the prompt's forward ran
    model.config.eos_id = new1[0]
    assert stop_ids(model, IdTokenizer(eos_id=None)) == [new1[0]]
    model.config.eos_id = None
    assert stop_ids(model, IdTokenizer(eos_id=None)) == []


def test_completion_text_drops_only_a_final_stop_token():
    tok = byte_tokenizer()
    eos = tok.eos_id
    assert completion_text(tok, tok.encode("hi there") + [eos], [eos]) == "hi there"
    assert completion_text(tok, tok.encode("cut short"), [eos]) == "cut short"  # did not end: all of it
    assert completion_text(tok, tok.encode("ab") + [7], [eos, 7]) == "ab"
    assert completion_text(tok, [], [eos]) == ""


def test_generate_with_the_real_tokenizer():
    """Prompts left-padded with the tokenizer's pad rule (EOS for a byte-level BPE), each row equal to its
    prompt alone, and a row that reaches EOS ends there."""
    tok = byte_tokenizer()
    eos = tok.eos_id
    assert tok.pad_id_or_eos() == eos
    torch.manual_seed(0)
    model = randomize_(GPT(GPTConfig(vocab_size=eos + 1, n_layer=1, n_head=2, n_embd=16, max_seq_len=48,
                                     tie_embeddings=False, lm_head_bias=True)))
    rows = [tok.encode("Hello there"), tok.encode("Hi"), tok.encode("A")]
    assert stop_ids(model, tok) == [eos]
    ended = False
    for eos_bias in torch.linspace(0, 4, 9).tolist():  # raise EOS's logit until some row ends early
        with torch.no_grad():
            model.lm_head.bias[eos] = eos_bias
        out = generate(model, tok, rows, max_new_tokens=16, temperature=0)
        for row, completion in zip(rows, out):
            assert completion == reference_sample(model, row, torch.zeros(16), [eos], 16, temperature=0)
            assert eos not in completion[:-1] and (len(completion) == 16 or completion[-1] == eos)
            ended |= 1 < len(completion) < 16
        if ended:
            break
    assert ended


def test_sampling_respects_top_k_and_top_p():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(4, 50, generator=g) * 2
    many = logits.repeat_interleave(500, dim=0)  # 500 draws per row
    drawn = sample_token(many, temperature=1.0, top_k=5, generator=g).view(4, 500)
    top5 = logits.topk(5).indices
    assert all(set(drawn[r].tolist()) <= set(top5[r].tolist()) for r in range(4))
    assert all(len(set(drawn[r].tolist())) > 1 for r in range(4))  # it samples, it is not argmax
    drawn = sample_token(many, temperature=0.7, top_p=0.6, generator=g).view(4, 500)
    probs, order = (logits / 0.7).softmax(-1).sort(descending=True)
    for r in range(4):
        n_keep = int((probs[r].cumsum(0) < 0.6).sum()) + 1  # smallest prefix reaching 0.6
        assert set(drawn[r].tolist()) <= set(order[r, :n_keep].tolist())
    assert torch.equal(sample_token(logits, top_k=1, generator=g), logits.argmax(-1))
    assert torch.equal(sample_token(logits, temperature=0), logits.argmax(-1))


def test_sampling_follows_softmax():
    g = torch.Generator().manual_seed(7)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    drawn = sample_token(logits.expand(20000, 4), temperature=1.0, generator=g)
    freq = torch.bincount(drawn, minlength=4) / 20000
    torch.testing.assert_close(freq, logits.softmax(-1)[0], atol=0.015, rtol=0)


def test_generate_sampling_is_reproducible_with_a_generator():
    model = small_model(position="rotary", norm="rmsnorm", gated_mlp=True, activation="silu")
    rows = prompts([5, 5], seed=8)
    tok = IdTokenizer(eos_id=None)
    a = generate(model, tok, rows, max_new_tokens=8, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(1))
    b = generate(model, tok, rows, max_new_tokens=8, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(1))
    c = generate(model, tok, rows, max_new_tokens=8, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(2))
    assert a == b and [len(x) for x in a] == [8, 8] and c != a


def test_generate_runs_in_eval_mode_restores_training_mode_and_checks_lengths():
    model = small_model(dropout=0.5).train()
    rows = prompts([4], seed=9)
    tok = IdTokenizer(eos_id=None)
    sampled = generate(model, tok, rows, max_new_tokens=6, temperature=0)
    assert model.training
    assert sampled == generate(model.eval(), tok, rows, max_new_tokens=6, temperature=0)  # no dropout then
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, tok, rows, max_new_tokens=61)
    with pytest.raises(ValueError, match="uniforms has 3 draws per row, need max_new_tokens=6"):
        generate(model, tok, rows, max_new_tokens=6, uniforms=torch.rand(1, 3))


def test_attention_backends_change_nothing_off_cuda():
    assert isinstance(attention_backends(torch.device("cpu")), contextlib.nullcontext)
