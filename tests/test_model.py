"""dpo/model.py against Hugging Face transformers (an independent implementation of each family)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from dpo.model import GPT, GPTConfig, KVCache, sample_token  # noqa: E402
from helpers import randomize_  # noqa: E402

V = 128
EOS, PAD = 1, 0


def hf_config(family: str):
    """Tiny random configs that exercise each family's peculiarities (partial / interleaved rotary,
    parallel residual, GQA, llama3 rope scaling, tied and untied heads)."""
    ids = dict(vocab_size=V, bos_token_id=2, eos_token_id=EOS, pad_token_id=PAD)
    T = transformers
    if family == "gpt2":
        return T.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, resid_pdrop=0, embd_pdrop=0,
                            attn_pdrop=0, **ids)
    if family == "neox":
        return T.GPTNeoXConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64,
                               rotary_pct=0.5, use_parallel_residual=True, max_position_embeddings=64, **ids)
    if family == "neox_sequential":
        return T.GPTNeoXConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64,
                               rotary_pct=0.25, use_parallel_residual=False, rotary_emb_base=500.0,
                               max_position_embeddings=64, **ids)
    if family == "gptj":
        return T.GPTJConfig(n_layer=2, n_head=4, n_embd=64, rotary_dim=8, n_positions=64, **ids)
    if family == "llama":
        return T.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                             intermediate_size=48, max_position_embeddings=64, **ids)
    if family == "llama3_tied":
        return T.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, hidden_size=32,
                             intermediate_size=48, max_position_embeddings=64, tie_word_embeddings=True,
                             attention_bias=True, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 16, "rope_theta": 10000.0}, **ids)
    raise KeyError(family)


FAMILIES = ["gpt2", "neox", "neox_sequential", "gptj", "llama", "llama3_tied"]


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    """(family, transformers model, our model loaded from the transformers checkpoint)."""
    torch.manual_seed(0)
    hf = randomize_(transformers.AutoModelForCausalLM.from_config(hf_config(request.param)))
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)  # model.safetensors + config.json
    return request.param, hf, GPT.from_pretrained(path).eval()


def batch(left: bool, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    for row, n_pad in ((0, 4), (2, 1)):
        if left:
            mask[row, :n_pad] = 0
        else:
            mask[row, -n_pad:] = 0
    return ids.masked_fill(mask == 0, PAD), mask


@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
def test_logits_match_transformers(pair, left):
    _, hf, ours = pair
    ids, mask = batch(left)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what HF generate uses for padded prompts
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, mask)
    real = mask.bool()
    assert got.shape == expected.shape
    assert torch.isfinite(got).all()  # pad rows included
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=0)
    # no mask, no padding: plain causal path
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers(pair):
    _, hf, ours = pair
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, V, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # prompts of 9 and 4 tokens, left-padded
    ids = ids.masked_fill(mask == 0, PAD)
    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                           eos_token_id=EOS, pad_token_id=PAD)
    got = ours.generate(ids, mask, max_new_tokens=20, temperature=0, eos_id=EOS, pad_id=PAD)
    assert got.tolist() == expected.tolist()
    assert got.shape[1] > 9


def test_kv_cache_decoding_equals_full_recompute(pair):
    _, _, ours = pair
    ids, mask = batch(left=True, seed=3)
    new = torch.randint(3, V, (3, 5), generator=torch.Generator().manual_seed(4))
    full_ids = torch.cat([ids, new], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
    with torch.no_grad():
        full = ours(full_ids, full_mask)
        cache = KVCache.empty(ours.config, 3, full_ids.shape[1])
        steps = [ours(ids, mask, kv_cache=cache)]
        for t in range(new.shape[1]):
            s = ids.shape[1] + t + 1
            steps.append(ours(new[:, t:t + 1], full_mask[:, :s], kv_cache=cache))
    incremental = torch.cat(steps, dim=1)
    torch.testing.assert_close(incremental[full_mask.bool()], full[full_mask.bool()], atol=1e-5, rtol=0)
    assert cache.length == full_ids.shape[1]


def test_return_hidden_then_lm_head_is_logits(pair):
    _, _, ours = pair
    ids, mask = batch(left=False)
    with torch.no_grad():
        hidden = ours(ids, mask, return_hidden=True)
        logits = ours(ids, mask)
    assert hidden.shape == (*ids.shape, ours.config.n_embd)
    assert torch.equal(ours.lm_head(hidden), logits)


def small_model(**kw):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=V, n_layer=2, n_head=4, n_embd=32, max_seq_len=64, tie_embeddings=False, **kw)
    return randomize_(GPT(cfg))


def test_eos_stops_each_row_and_fills_pad():
    model = small_model()
    ids = torch.randint(3, V, (2, 6), generator=torch.Generator().manual_seed(5))
    free = model.generate(ids, max_new_tokens=12, temperature=0, eos_id=[])
    new0, new1 = free[0, 6:].tolist(), free[1, 6:].tolist()
    # an EOS that row 0 emits at some step k > 0 and row 1 never emits
    k, eos = next((k, t) for k, t in enumerate(new0) if k > 0 and t not in new0[:k] and t not in new1)
    out = model.generate(ids, max_new_tokens=12, temperature=0, eos_id=eos, pad_id=PAD)
    assert out.shape == free.shape  # row 1 never ends: all 12 steps run
    assert out[0, 6:].tolist() == new0[:k + 1] + [PAD] * (11 - k)
    assert out[1].tolist() == free[1].tolist()
    # every row ends at its first token: the loop stops after one step
    first = model.generate(ids, max_new_tokens=12, temperature=0, eos_id=free[:, 6].tolist())
    assert first.tolist() == free[:, :7].tolist()


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
    ids = torch.randint(3, V, (2, 5), generator=torch.Generator().manual_seed(8))
    a = model.generate(ids, max_new_tokens=8, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(1))
    b = model.generate(ids, max_new_tokens=8, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (2, 13)


def test_generate_restores_training_mode_and_checks_length():
    model = small_model(dropout=0.1).train()
    ids = torch.randint(3, V, (1, 4))
    model.generate(ids, max_new_tokens=3)
    assert model.training
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generate(ids, max_new_tokens=61)


def test_param_count_matches_transformers_and_flops():
    hf = transformers.GPT2LMHeadModel(hf_config("gpt2"))
    cfg = GPTConfig(vocab_size=V, n_layer=2, n_head=4, n_embd=32, max_seq_len=64)
    model = GPT(cfg)
    assert model.num_params(exclude_embeddings=False) == sum(p.numel() for p in hf.parameters())
    n = model.num_params(exclude_embeddings=True)
    assert n == model.num_params(exclude_embeddings=False) - 64 * 32  # wpe only: wte is the tied lm_head
    assert model.flops_per_token(64) == 6 * n + 12 * 2 * 4 * 8 * 64
    assert model.flops_per_token(64, backward=False) * 3 == model.flops_per_token(64)


def test_from_scratch_init_is_gpt2_style():
    model = GPT(GPTConfig(vocab_size=1000, n_layer=8, n_head=4, n_embd=128, max_seq_len=64))
    assert model.lm_head.weight is model.wte.weight
    assert abs(model.wte.weight.std().item() - 0.02) < 0.002
    assert abs(model.blocks[0].attn.proj.weight.std().item() - 0.02 / 4) < 0.001  # 0.02 / sqrt(2 * 8)
    assert model.blocks[0].norm1.weight.eq(1).all() and model.blocks[0].norm1.bias.eq(0).all()
    assert model.blocks[0].attn.qkv.bias.eq(0).all()


def test_meta_init_then_reset_buffers():
    cfg = GPTConfig(vocab_size=V, n_layer=2, n_head=4, n_embd=32, max_seq_len=64, position="rotary", rotary_dim=4)
    torch.manual_seed(0)
    reference = GPT(cfg).eval()
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.inv_freq.is_meta and "inv_freq" not in model.state_dict()  # non-persistent
    model.to_empty(device="cpu")
    model.reset_buffers()
    assert model.lm_head.weight is model.wte.weight  # to_empty untied them; reset_buffers re-ties
    model.init_weights()
    assert abs(model.wte.weight.std().item() - 0.02) < 0.005
    model.load_state_dict(reference.state_dict())
    ids = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids), reference(ids))


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig(n_head=4, n_kv_head=3, n_embd=32)
    with pytest.raises(ValueError, match="rope_scaling type 'yarn'"):
        GPTConfig(n_head=4, n_embd=32, position="rotary", rope_scaling={"rope_type": "yarn", "factor": 2})
    with pytest.raises(ValueError, match="attention_mask shape"):
        small_model()(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 4))
