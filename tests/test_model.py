"""dpo/model.py against Hugging Face transformers (an independent implementation of each family): logits
with either padding side, KV-cached decoding, parameter count, init. Generation: tests/test_generation.py."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from dpo.interop.hf_checkpoint import load_pretrained  # noqa: E402
from dpo.model import GPT, GPTConfig, KVCache  # noqa: E402
from helpers import FAMILIES, PAD, V, hf_config, randomize_  # noqa: E402


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    """(family, transformers model, our model loaded from the transformers checkpoint)."""
    torch.manual_seed(0)
    hf = randomize_(transformers.AutoModelForCausalLM.from_config(hf_config(request.param)))
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)  # model.safetensors + config.json
    return request.param, hf, load_pretrained(path).eval()


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


def test_qwen3_and_smollm3_switches(pair):
    """The switches the two families load into: q/k norms (Qwen3), NoPE on layer 3 of 4 (SmolLM3)."""
    family, _, ours = pair
    cfg = ours.config
    assert cfg.qk_norm == (family == "qwen3")
    assert cfg.nope_layers == ([3] if family == "smollm3" else None)
    if family == "qwen3":
        assert cfg.head_dim == 16 != cfg.n_embd // cfg.n_head and not cfg.qkv_bias
        assert ours.blocks[0].attn.q_norm.weight.shape == (16,)


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


def test_param_count_matches_transformers():
    hf = transformers.GPT2LMHeadModel(hf_config("gpt2"))
    cfg = GPTConfig(vocab_size=V, n_layer=2, n_head=4, n_embd=32, max_seq_len=64)
    model = GPT(cfg)
    assert model.num_params(exclude_embeddings=False) == sum(p.numel() for p in hf.parameters())
    n = model.num_params(exclude_embeddings=True)
    assert n == model.num_params(exclude_embeddings=False) - 64 * 32  # wpe only: wte is the tied lm_head


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
    with pytest.raises(ValueError, match=r"nope_layers must be layer indices in \[0, n_layer=2\)"):
        GPTConfig(n_layer=2, n_head=4, n_embd=32, position="rotary", nope_layers=[2])
    with pytest.raises(ValueError, match="attention_mask shape"):
        small_model()(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 4))
