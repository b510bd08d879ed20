"""dpo/interop/hf_checkpoint.py: Hugging Face layout in and out, checked against transformers itself."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
st = pytest.importorskip("safetensors.torch")

from dpo.interop import hub  # noqa: E402
from dpo.interop.hf_checkpoint import (CheckpointError, config_from_hf, config_to_hf, load_pretrained,  # noqa: E402
                                       save_pretrained)
from dpo.model import GPT, GPTConfig  # noqa: E402
from helpers import randomize_  # noqa: E402

V = 96
IDS = dict(vocab_size=V, bos_token_id=0, eos_token_id=1)
HF_CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=32, **IDS),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64, rotary_pct=0.5,
        max_position_embeddings=32, **IDS),
    "gptj": lambda: transformers.GPTJConfig(n_layer=2, n_head=4, n_embd=32, rotary_dim=4, n_positions=32, **IDS),
    "llama": lambda: transformers.LlamaConfig(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32, intermediate_size=48,
        max_position_embeddings=32, **IDS),
    "qwen2": lambda: transformers.Qwen2Config(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32, intermediate_size=48,
        max_position_embeddings=32, tie_word_embeddings=True, **IDS),
    "mistral": lambda: transformers.MistralConfig(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, hidden_size=32, intermediate_size=48,
        max_position_embeddings=64, sliding_window=32, **IDS),
    "llama3_scaled": lambda: transformers.LlamaConfig(
        num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=48, max_position_embeddings=32,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8, "rope_theta": 500.0}, **IDS),
    # the variants tests/test_model.py does not cover: biases on q, k, v and o, a tied head, head_dim 12
    "qwen3": lambda: transformers.Qwen3Config(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, hidden_size=32, head_dim=12,
        intermediate_size=48, max_position_embeddings=32, attention_bias=True, tie_word_embeddings=True, **IDS),
    # NoPE on the first layer (no_rope_layers: 1 = rotary), all biases, an untied head
    "smollm3": lambda: transformers.SmolLM3Config(
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, hidden_size=32, intermediate_size=48,
        max_position_embeddings=32, no_rope_layers=[0, 1, 1], attention_bias=True, mlp_bias=True,
        tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 100.0}, pad_token_id=None,
        **IDS),
}
# what our save_pretrained writes: Mistral without a sliding window is a Llama
SAVED_AS = {"gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM", "gptj": "GPTJForCausalLM",
            "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "LlamaForCausalLM",
            "llama3_scaled": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "smollm3": "SmolLM3ForCausalLM"}


def hf_model(family):
    return randomize_(transformers.AutoModelForCausalLM.from_config(HF_CONFIGS[family]()))


INPUT = torch.randint(2, V, (2, 11), generator=torch.Generator().manual_seed(0))


def assert_same_logits(ours, hf, atol=1e-4):
    with torch.no_grad():
        torch.testing.assert_close(ours(INPUT).float(), hf(INPUT).logits.float(), atol=atol, rtol=0)


@pytest.mark.parametrize("family", list(HF_CONFIGS))
def test_our_checkpoint_loads_into_transformers(family, tmp_path):
    # our model, with a config read from the family's HF config and random weights of our own
    cfg = config_from_hf(HF_CONFIGS[family]().to_dict())
    ours = randomize_(GPT(cfg), seed=1)
    save_pretrained(ours, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == SAVED_AS[family]
    assert_same_logits(ours, hf)
    # and back: the file we wrote is read by our loader into the same model
    again = load_pretrained(tmp_path)
    assert again.config == ours.config
    assert_same_logits(again, hf)


@pytest.mark.parametrize("family", list(HF_CONFIGS))
def test_config_round_trip(family):
    cfg = config_from_hf(HF_CONFIGS[family]().to_dict())
    assert config_from_hf(config_to_hf(cfg)) == cfg


@pytest.mark.parametrize("family", ["qwen2", "mistral", "llama3_scaled", "qwen3", "smollm3"])
def test_transformers_checkpoint_loads_into_ours(family, tmp_path):
    """The other direction for the families tests/test_model.py does not cover."""
    hf = hf_model(family)
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    if family == "mistral":  # within its sliding window Mistral is plain causal attention
        assert ours.config.max_seq_len == 32
    assert_same_logits(ours, hf)


def test_qwen3_and_smollm3_config_mapping():
    """Qwen3: qk_norm, attention_bias on q, k, v and o. SmolLM3: nope_layers are the 0 entries of
    no_rope_layers (1 = the layer uses rotary), or every no_rope_layer_interval-th layer when the list is absent."""
    qwen3 = config_from_hf(HF_CONFIGS["qwen3"]().to_dict())
    assert qwen3.qk_norm and qwen3.qkv_bias and qwen3.attn_out_bias and not qwen3.mlp_bias and qwen3.nope_layers is None
    assert (qwen3.head_dim, qwen3.n_kv_head, qwen3.tie_embeddings) == (12, 1, True)
    smol = config_from_hf(HF_CONFIGS["smollm3"]().to_dict())
    assert smol.nope_layers == [0] and not smol.qk_norm and smol.mlp_bias
    assert config_to_hf(smol)["no_rope_layers"] == [0, 1, 1]
    hf = transformers.SmolLM3Config(num_hidden_layers=8, no_rope_layer_interval=3)
    expected = [i for i, use_rope in enumerate(hf.no_rope_layers) if not use_rope]
    assert expected == [2, 5]
    d = hf.to_dict()
    assert config_from_hf(d).nope_layers == expected
    del d["no_rope_layers"]  # a hand-written config.json: transformers' rule, every 3rd layer
    assert config_from_hf(d).nope_layers == expected
    del d["no_rope_layer_interval"], d["rope_parameters"]
    assert config_from_hf(d).nope_layers == [3, 7] and config_from_hf(d).rope_theta == 2000000.0  # its defaults
    d["no_rope_layers"] = [1] * 8  # no NoPE layer left: a plain Llama, saved as one
    assert config_from_hf(d).nope_layers is None and config_to_hf(config_from_hf(d))["model_type"] == "llama"


def test_configs_of_no_hugging_face_family_are_refused_on_save(tmp_path):
    llama = config_from_hf(HF_CONFIGS["llama"]().to_dict())
    with pytest.raises(CheckpointError, match="not both"):
        save_pretrained(GPT(GPTConfig(**{**vars(llama), "qk_norm": True, "nope_layers": [1]})), tmp_path)
    with pytest.raises(CheckpointError, match="qwen3 needs half-split rotary and rmsnorm"):
        config_to_hf(GPTConfig(n_layer=2, n_head=4, n_embd=32, qk_norm=True))  # GPT-2 with q/k norms
    with pytest.raises(CheckpointError, match="smollm3 needs q, k, v and o biases all or none"):
        config_to_hf(GPTConfig(**{**vars(llama), "nope_layers": [0], "qkv_bias": True}))


def test_sharded_safetensors(tmp_path):
    hf = hf_model("llama")
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    assert_same_logits(load_pretrained(tmp_path), hf)


def test_pytorch_model_bin_single_and_sharded(tmp_path):
    hf = hf_model("gpt_neox")
    hf.config.save_pretrained(tmp_path / "single")
    torch.save(hf.state_dict(), tmp_path / "single" / "pytorch_model.bin")
    assert_same_logits(load_pretrained(tmp_path / "single"), hf)
    # sharded .bin with an index, as older transformers wrote them
    d = tmp_path / "sharded"
    hf.config.save_pretrained(d)
    names = list(hf.state_dict())
    weight_map = {}
    for k, chunk in enumerate([names[: len(names) // 2], names[len(names) // 2:]]):
        shard = f"pytorch_model-0000{k + 1}-of-00002.bin"
        torch.save({n: hf.state_dict()[n] for n in chunk}, d / shard)
        weight_map.update(dict.fromkeys(chunk, shard))
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert_same_logits(load_pretrained(d), hf)


def test_hub_style_gpt2_without_prefix_and_with_mask_buffers(tmp_path):
    """The original gpt2 files: no "transformer." prefix, causal-mask buffers, a tied lm_head copy."""
    hf = hf_model("gpt2")
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items()}
    state["lm_head.weight"] = state["wte.weight"].clone()
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    st.save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    hf.config.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    assert ours.lm_head.weight is ours.wte.weight
    assert_same_logits(ours, hf)


def test_old_style_pythia_config_keys():
    """Pythia's config.json (transformers 4 era): rotary_pct / rotary_emb_base at the top level."""
    hf = {"model_type": "gpt_neox", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
          "intermediate_size": 256, "vocab_size": 100, "max_position_embeddings": 128, "rotary_pct": 0.25,
          "rotary_emb_base": 10000, "use_parallel_residual": True, "hidden_act": "gelu",
          "layer_norm_eps": 1e-5, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0}
    cfg = config_from_hf(hf)
    assert (cfg.rotary_dim, cfg.rope_theta, cfg.activation, cfg.parallel_residual) == (4, 10000, "gelu", True)
    assert not cfg.tie_embeddings and not cfg.rotary_interleaved and cfg.qkv_bias


def test_bf16_load_gives_bf16_params(tmp_path):
    hf = hf_model("gptj")
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    assert ours.inv_freq.dtype == torch.float32  # rotary frequencies stay exact
    assert_same_logits(ours, hf, atol=0.1)
    save_pretrained(ours, tmp_path / "out")
    header = json.loads((tmp_path / "out" / "config.json").read_text())
    assert header["torch_dtype"] == "bfloat16"
    assert {t.dtype for t in st.load_file(str(tmp_path / "out" / "model.safetensors")).values()} == {torch.bfloat16}


def test_save_with_dtype_and_tied_weights(tmp_path):
    ours = GPT(GPTConfig(vocab_size=V, n_layer=1, n_head=2, n_embd=16, max_seq_len=32))
    save_pretrained(ours, tmp_path, dtype=torch.float16)
    tensors = st.load_file(str(tmp_path / "model.safetensors"))
    assert "lm_head.weight" not in tensors and "transformer.wte.weight" in tensors  # tied: written once
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]  # no temporary file left


def test_unsupported_model_type_names_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(CheckpointError, match=r"config\.json: model_type 'bert' is not supported.*gpt2"):
        load_pretrained(tmp_path)


def test_clear_errors_for_broken_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="config.json: not found"):
        load_pretrained(tmp_path)
    hf = hf_model("gpt2")
    hf.config.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no weights found"):
        load_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()
             if k not in ("transformer.h.1.ln_2.bias", "lm_head.weight")}
    st.save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'transformer\.h\.1\.ln_2\.bias' is missing"):
        load_pretrained(tmp_path)
    state["transformer.h.1.ln_2.bias"] = torch.zeros(32)
    state["transformer.h.1.extra.weight"] = torch.zeros(3)
    st.save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"do not fit.*extra"):
        load_pretrained(tmp_path)
    del state["transformer.h.1.extra.weight"]
    state["transformer.h.1.ln_2.bias"] = torch.zeros(31)
    st.save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="shape"):
        load_pretrained(tmp_path)


def test_unsupported_rope_scaling_is_refused():
    hf = HF_CONFIGS["llama"]().to_dict()
    hf["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    with pytest.raises(CheckpointError, match="yarn"):
        config_from_hf(hf)


def test_load_pretrained_downloads_names_that_are_not_folders(tmp_path, monkeypatch):
    hf = hf_model("gpt2")
    hf.save_pretrained(tmp_path / "snapshot")
    calls = []

    def snapshot_download(repo_id, revision="main", cache_dir=None, endpoint=None):
        calls.append(repo_id)
        return tmp_path / "snapshot"
    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    ours = load_pretrained("someone/tiny-gpt2")
    assert calls == ["someone/tiny-gpt2"]
    assert_same_logits(ours, hf)
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        load_pretrained(tmp_path / "absent")  # a path is never sent to the hub
    assert calls == ["someone/tiny-gpt2"]
