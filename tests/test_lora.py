"""dpo/lora.py: LoRA layers, the reference as adapters off, merging, and PEFT's adapter files, checked
against peft and transformers themselves."""
import copy
import json
import math

import pytest
import torch
import torch.nn as nn

from dpo import lora
from dpo.interop import safetensors
from dpo.interop.hf_checkpoint import model_type_of, save_pretrained
from dpo.model import GPT, GPTConfig
from helpers import randomize_

V = 64
COMMON = dict(vocab_size=V, n_layer=2, n_head=4, n_embd=32, max_seq_len=32, bos_id=0, eos_id=1)
ROTARY = dict(position="rotary", rotary_dim=4, tie_embeddings=False)
FAMILIES = {  # tiny configs that save_pretrained writes as each Hugging Face model_type
    "gpt2": dict(),
    "gpt_neox": dict(**ROTARY, parallel_residual=True, mlp_hidden=64, activation="gelu"),
    "gptj": dict(**ROTARY, rotary_interleaved=True, parallel_residual=True, shared_norm=True, qkv_bias=False,
                 attn_out_bias=False, lm_head_bias=True),
    "llama": dict(position="rotary", tie_embeddings=False, n_kv_head=2, mlp_hidden=48, norm="rmsnorm",
                  activation="silu", gated_mlp=True, qkv_bias=False, attn_out_bias=False, mlp_bias=False),
}
FAMILIES["qwen3"] = dict(FAMILIES["llama"], qk_norm=True, head_dim=16)
FAMILIES["smollm3"] = dict(FAMILIES["llama"], nope_layers=[1])
INPUT = torch.randint(2, V, (2, 11), generator=torch.Generator().manual_seed(0))
LINEARS = ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"]


def base_model(family) -> GPT:
    model = randomize_(GPT(GPTConfig(**COMMON, **FAMILIES[family])), seed=1)
    assert model_type_of(model.config) == family
    return model


def lora_model(family, targets=("all-linear",), rank=4, alpha=8.0, trained=True):
    """(base, the base with adapters; with `trained`, A and B random as after some training)."""
    base = base_model(family)
    model = copy.deepcopy(base)
    lora.add_lora(model, rank, alpha, 0.0, list(targets))
    if trained:
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for _, m in lora.lora_modules(model):
                m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=g) * 0.05)
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)
    return base, model.eval()


def logits(model):
    with torch.no_grad():
        return model(INPUT)


def test_lora_linear_equals_peft():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Linear(16, 24), nn.Tanh())
    ours = lora.LoRALinear(copy.deepcopy(tiny[0]), rank=4, alpha=8.0)
    theirs = peft.get_peft_model(copy.deepcopy(tiny), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0"]))
    layer = theirs.base_model.model[0]
    # the same init: A kaiming-uniform (a = √5: within ±1/√in), B zero
    bound = 1 / math.sqrt(16)
    for A, B in ((ours.lora_A, ours.lora_B), (layer.lora_A["default"].weight, layer.lora_B["default"].weight)):
        assert A.abs().max() <= bound and A.abs().max() > bound / 2 and not B.any()
    with torch.no_grad():
        ours.lora_A.normal_()
        ours.lora_B.normal_()
        layer.lora_A["default"].weight.copy_(ours.lora_A)
        layer.lora_B["default"].weight.copy_(ours.lora_B)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(ours(x), layer(x), atol=1e-6, rtol=0)
    merged = lora.merged_weight(ours.weight, ours.lora_A, ours.lora_B, ours.scale)
    torch.testing.assert_close(merged, theirs.merge_and_unload()[0].weight, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_add_lora_starts_at_the_base_and_trains_only_the_adapters(family):
    base, model = lora_model(family, trained=False)
    names = [n for n, _ in lora.lora_modules(model)]
    assert names == [f"blocks.{i}.{x}" for i in range(2) for x in LINEARS]
    assert torch.equal(logits(model), logits(base))  # B = 0: exactly the base model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{x}" for n in names for x in "AB"}
    # the state dict keeps every base key and adds the adapters'
    assert set(model.state_dict()) == set(base.state_dict()) | trainable
    # standard LoRA: at init A's gradient is zero (B = 0), B's is not; after one step both learn
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    for step in range(2):
        optimizer.zero_grad()
        model.train()(INPUT).logsumexp(-1).mean().backward()
        grads = {x: [getattr(m, f"lora_{x}").grad.abs().sum().item() for _, m in lora.lora_modules(model)]
                 for x in "AB"}
        assert all(g > 0 for g in grads["B"])
        assert all((g > 0) == (step == 1) for g in grads["A"]), (step, grads["A"])
        assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
        optimizer.step()


def test_targets_by_suffix_and_full_name():
    _, model = lora_model("llama", targets=["attn.qkv", "blocks.1.mlp.proj"], trained=False)
    assert [n for n, _ in lora.lora_modules(model)] == ["blocks.0.attn.qkv", "blocks.1.attn.qkv", "blocks.1.mlp.proj"]


def test_adapters_disabled_is_the_base_model_and_dpo_starts_at_ln2():
    base, model = lora_model("llama")
    on = logits(model)
    assert not torch.allclose(on, logits(base))
    with lora.adapters_disabled(model):
        assert torch.equal(logits(model), logits(base))
    assert torch.equal(logits(model), on)
    # DPO with fresh adapters: the policy equals the reference (its adapters off), so the loss is ln 2
    from dpo.logprobs import model_token_logps, response_mask, sequence_logps
    from dpo.losses import preference_loss
    _, model = lora_model("llama", trained=False)
    labels = INPUT.clone().repeat(2, 1)  # chosen rows, then rejected rows
    labels[:, :4] = -100
    batch = {"input_ids": INPUT.repeat(2, 1), "attention_mask": torch.ones_like(labels), "labels": labels}
    policy = sequence_logps(model_token_logps(model, batch)[0], response_mask(labels))[0]
    with lora.adapters_disabled(model), torch.no_grad():
        reference = sequence_logps(model_token_logps(model, batch)[0], response_mask(labels))[0]
    loss = preference_loss(*policy.chunk(2), *reference.chunk(2), loss_type="sigmoid", beta=0.1)
    torch.testing.assert_close(loss, torch.full_like(loss, math.log(2)), atol=1e-7, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_lora(family):
    base, model = lora_model(family)
    merged_state = lora.merged_state_dict(model)
    assert set(merged_state) == set(base.state_dict())
    merged = lora.merge_lora(copy.deepcopy(model))
    assert not lora.lora_modules(merged) and all(type(merged.get_submodule(f"blocks.0.{x}")) is nn.Linear
                                                 for x in LINEARS)
    # fp32 rounding of logits up to ±6 allows a little more than 1e-5; in fp64 the fold is exact
    torch.testing.assert_close(logits(merged), logits(model), atol=1e-5, rtol=1e-5)
    merged64 = lora.merge_lora(copy.deepcopy(model).double())
    torch.testing.assert_close(logits(merged64), logits(model.double()), atol=1e-12, rtol=0)
    for k, v in merged.state_dict().items():
        torch.testing.assert_close(v, merged_state[k], atol=0, rtol=0)


@pytest.mark.parametrize("family,targets", [(f, ["all-linear"]) for f in FAMILIES]
                         + [("llama", ["attn.qkv", "blocks.1.mlp.fc"])])
def test_adapter_files_load_in_peft(family, targets, tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    base, model = lora_model(family, targets)
    save_pretrained(model, tmp_path / "base")  # a wrapped model writes its base weights, unchanged
    save_pretrained(model, tmp_path / "merged", state_dict=lora.merged_state_dict(model))
    lora.save_adapter(model, tmp_path / "adapter", str(tmp_path / "base"))
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json",
                                                                       "adapter_model.safetensors"]
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["fan_in_fan_out"]) == (
        "LORA", 4, 8.0, family == "gpt2")
    if family == "llama" and targets == ["all-linear"]:
        assert config["target_modules"] == [f"{p}.{x}_proj" for p, xs in (("mlp", ["down", "gate", "up"]),
                                            ("self_attn", "koqv")) for x in xs]
    if family == "llama" and targets != ["all-linear"]:
        assert config["target_modules"] == ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj",
                                            "self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"]

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(INPUT).logits, logits(base), atol=1e-4, rtol=0)
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(INPUT).logits, logits(model), atol=1e-4, rtol=0)
        with theirs.disable_adapter(), lora.adapters_disabled(model):
            torch.testing.assert_close(theirs(INPUT).logits, logits(model), atol=1e-4, rtol=0)
        merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        torch.testing.assert_close(merged(INPUT).logits, logits(model), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_load_adapter_round_trip(family, tmp_path):
    base, model = lora_model(family, targets=["attn.qkv", "mlp.fc", "blocks.0.attn.proj"])
    lora.save_adapter(model, tmp_path, "base")
    fresh = copy.deepcopy(base)
    assert lora.load_adapter(fresh, tmp_path) == [n for n, _ in lora.lora_modules(model)]
    torch.testing.assert_close(fresh.state_dict(), model.state_dict(), atol=0, rtol=0)
    # into a model that already has the same adapters (resuming), and the state dict round trip
    again = copy.deepcopy(base)
    lora.add_lora(again, 4, 8.0, 0.0, ["attn.qkv", "mlp.fc", "blocks.0.attn.proj"])
    lora.load_adapter(again, tmp_path)
    torch.testing.assert_close(logits(again), logits(model), atol=0, rtol=0)
    again.load_state_dict(model.state_dict())


def one_line_error(fn, *named):
    with pytest.raises(lora.LoRAError) as e:
        fn()
    message = str(e.value)
    assert "\n" not in message and all(n in message for n in named), message
    return message


def test_bad_input_is_one_clear_line(tmp_path):
    base = base_model("llama")
    message = one_line_error(lambda: lora.add_lora(copy.deepcopy(base), 4, 8, 0.0, ["attn.qkv", "q_proj", "lm_head"]),
                             "'q_proj'", "'lm_head'", *LINEARS, "blocks.1", "lm_head is not a target")
    assert "'attn.qkv'," not in message and "ours is attn.qkv" in message
    one_line_error(lambda: lora.add_lora(copy.deepcopy(base), 0, 8, 0.0, ["attn.qkv"]), "rank")
    _, model = lora_model("llama")
    one_line_error(lambda: lora.add_lora(model, 4, 8, 0.0, ["attn.qkv"]), "already")
    one_line_error(lambda: lora.save_adapter(base, tmp_path, "b"), "no LoRA adapters")
    one_line_error(lambda: lora.save_adapter(model, tmp_path, "b", hf_model_type="gpt2"), "gpt2", "llama")
    lora.save_adapter(model, tmp_path / "qwen", "b", hf_model_type="qwen2")  # same module names: fine
    # a peft adapter on q_proj and v_proj alone cannot live in our fused attn.qkv
    lora.save_adapter(model, tmp_path, "b")
    weights = tmp_path / "adapter_model.safetensors"
    tensors = {k: v for k, v in safetensors.load_file(weights).items() if "k_proj" not in k}
    safetensors.save_file(tensors, weights)
    one_line_error(lambda: lora.load_adapter(copy.deepcopy(base), tmp_path), "q_proj", "blocks.0.attn.qkv", "fused")
    config = tmp_path / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "use_dora": True}))
    one_line_error(lambda: lora.load_adapter(copy.deepcopy(base), tmp_path), "use_dora", str(config))
    one_line_error(lambda: lora.load_adapter(copy.deepcopy(base), tmp_path / "none"), "adapter_config.json")
