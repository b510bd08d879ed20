"""dpo/ppo/loop.py on the quickstart task, whose ground truth is known (dpo.quickstart.reward), from a tiny SFT
model trained here: PPO raises the reward of held-out samples while their KL to the reference stays near the
target; resume = uninterrupted (bit-exact, with and without LoRA); two DDP processes sample what one does and
train alike; the value model starts from the reward model or from the policy; LoRA trains only the adapters and
the critic's head, against the policy with its adapters off."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from dpo import checkpoint, distributed, lora
from dpo.config import load_config
from dpo.interop.hf_checkpoint import load_pretrained
from dpo.interop.safetensors import load_file
from dpo.logprobs import model_token_logps
from dpo.ppo import loop
from dpo.ppo.loop import build_value_model, train_ppo
from dpo.reward_model import RewardModel, load_reward_model
from dpo.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "quickstart_ppo.yaml")
LORA = ("lora.rank=4", "lora.alpha=8")


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory) -> Path:
    """The quickstart's SFT stage, shortened (3,200 examples, ~6 s): a 2-layer GPT that writes reviews whose
    samples score ~0.4-0.5."""
    out = tmp_path_factory.mktemp("sft")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (module fixtures run before conftest's one-thread fixture)
    assert train.main(["--config", str(ROOT / "configs" / "quickstart.yaml"), "next_config=", f"train.out_dir={out}",
                       "train.max_examples=3200", "data.eval_examples=16", "train.sample_reward=",
                       "train.device=cpu", "wandb.mode=disabled"]) == 0
    torch.set_num_threads(threads)
    return out / "final"


def overrides(sft_model: Path, out_dir: Path, *extra: str) -> list[str]:
    return [f"model.name={sft_model}", f"train.out_dir={out_dir}", "ppo.iterations=8", "ppo.rollout_prompts=32",
            "ppo.minibatch_size=8", "ppo.ppo_epochs=2", "ppo.max_new_tokens=20", "data.eval_examples=64",
            "train.lr=3e-4", "train.device=cpu", "wandb.mode=disabled", *extra]


def run(sft_model, out_dir, *extra) -> dict:
    return train_ppo(load_config(CONFIG, overrides(sft_model, out_dir, *extra)))


def metrics_lines(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_ppo_raises_the_ground_truth_reward_of_held_out_samples_near_the_target_kl(sft_model, tmp_path):
    final = run(sft_model, tmp_path / "run", "ppo.kl_target=3", "ppo.kl_horizon=200")
    # the same 64 held-out prompts and random draws for both: the SFT model scores ~0.45
    assert final["eval/scores_policy"] > final["eval/scores_reference"] + 0.15, final
    assert 0.1 < final["eval/kl"] < 2 * 3.0, final  # within a factor 2 of the target (it approaches from below)
    lines = [r for r in metrics_lines(tmp_path / "run") if "objective/kl" in r]
    assert [r["counters/iterations"] for r in lines] == list(range(1, 9))
    assert lines[0]["objective/kl"] == 0  # the first rollout's policy is the reference
    # the rollouts' scores rise too; each is a mean over 32 prompts, noisy (torch 2.6 and 2.13 part after the
    # third rollout), so the last two against the first two
    first, last = (sum(r["objective/scores"] for r in pair) / 2 for pair in (lines[:2], lines[-2:]))
    assert last > first + 0.03, [r["objective/scores"] for r in lines]
    kl_coefs = [r["kl_coef"] for r in lines]  # the rollouts' KL stays under 3: the controller lowers the coefficient
    assert all(b < a for a, b in zip(kl_coefs, kl_coefs[1:])) and kl_coefs[0] == 0.05
    assert all(0 <= r["policy/clipfrac"] < 0.5 and r["val/error"] > 0 for r in lines)
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


class Killed(BaseException):
    """A kill -9 stand-in: nothing catches it."""


@pytest.mark.parametrize("lora_settings", [(), LORA], ids=["full", "lora"])
def test_resume_equals_an_uninterrupted_run(sft_model, tmp_path, monkeypatch, capsys, lora_settings):
    """Killed after the iteration-2 checkpoint and resumed: policy, value model, KL coefficient, optimizer,
    data position, sampling and minibatch order all continue, so the final weights are bit-equal. With LoRA the
    checkpoints hold merged weights: the resume puts the saved adapters (and the critic's head) onto the bases."""
    settings = ("ppo.iterations=4", "ppo.rollout_prompts=16", "train.save_every=1", "ppo.kl_target=4",
                "ppo.kl_horizon=100", *lora_settings)
    run(sft_model, tmp_path / "full", *settings)
    real, calls = checkpoint.save_checkpoint, []

    def dying(*args, **kwargs):
        calls.append(1)
        real(*args, **kwargs)
        if len(calls) == 2:
            raise Killed()
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "save_checkpoint", dying)
        with pytest.raises(Killed):
            run(sft_model, tmp_path / "killed", *settings)
    run(sft_model, tmp_path / "killed", *settings, "train.resume=true")
    full, killed = tmp_path / "full", tmp_path / "killed"
    weights = (["adapter/adapter_model.safetensors"] if lora_settings else []) + ["model.safetensors"]
    for name in weights:
        a, b = load_file(full / "final" / name), load_file(killed / "final" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), f"resume is not bit-exact: final/{name}"
    last = "checkpoints/step-000004/value_model"
    assert sorted(str(f.relative_to(full / last)) for f in (full / last).rglob("*.safetensors")) == weights
    assert all((full / last / f).read_bytes() == (killed / last / f).read_bytes() for f in weights)
    state = [checkpoint.read_trainer_state(d / "checkpoints" / "step-000004") for d in (full, killed)]
    assert state[0]["kl_coef"] == state[1]["kl_coef"] != 0.05 and state[0]["updates"] == 4 * 2 * 2
    assert metrics_lines(full) == metrics_lines(killed)
    # a resume with other PPO settings would not continue this run: refused, naming the key
    assert train.main(["--config", CONFIG, *overrides(sft_model, killed, *settings, "train.resume=true",
                                                      "ppo.kl_target=9")]) == 1
    assert "train.resume: ppo.kl_target was 4.0 in" in capsys.readouterr().err


def test_two_ddp_processes_sample_what_one_does_and_train_alike(sft_model, tmp_path):
    """Each rank samples its half of every rollout with the rows' own random draws, so the first rollout (before
    any update) is the one-process rollout; later ones differ only through the minibatches (each rank shuffles
    its own half), so the runs agree in what they reach, not to the bit."""
    settings = ("ppo.iterations=6",)
    one = run(sft_model, tmp_path / "one", *settings)
    with socket.socket() as s:  # a free port (torchrun's --master_port=0 does not pick one for static rendezvous)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "train.py",
           "--config", CONFIG, *overrides(sft_model, tmp_path / "two", *settings, "train.parallel=ddp")]
    env = dict(os.environ, OMP_NUM_THREADS="1", DPO_NO_PROGRESS="1")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = [metrics_lines(tmp_path / d)[0] for d in ("one", "two")]
    for name in ("objective/scores", "objective/length", "objective/entropy", "objective/kl"):
        assert first[0][name] == pytest.approx(first[1][name], abs=1e-4), name
    two = metrics_lines(tmp_path / "two")[-1]
    assert two["eval/scores_reference"] == pytest.approx(one["eval/scores_reference"], abs=1e-6)
    for final in (one, two):
        assert final["eval/scores_policy"] > final["eval/scores_reference"] + 0.1, final
    assert abs(one["eval/scores_policy"] - two["eval/scores_policy"]) < 0.15


def test_the_value_model_starts_from_the_reward_model_or_from_the_policy(sft_model, tmp_path):
    config = load_config(CONFIG, overrides(sft_model, tmp_path / "run"))
    ctx, tokenizer = distributed.setup("cpu"), Tokenizer.from_pretrained(sft_model)
    critic = build_value_model(config, tokenizer, ctx, None)  # reward quickstart: the policy + a zero head
    policy = load_pretrained(sft_model)
    assert (critic.score.weight == 0).all()
    assert all(torch.equal(p, policy.state_dict()[k]) for k, p in critic.backbone.state_dict().items())

    reward_model = RewardModel(load_pretrained(sft_model), 1)
    torch.nn.init.normal_(reward_model.score.weight)
    reward_model.save_pretrained(tmp_path / "rm", tokenizer)
    config.ppo.reward = f"reward_model:{tmp_path / 'rm'}"
    critic = build_value_model(config, tokenizer, ctx, None)
    assert torch.equal(critic.score.weight, reward_model.score.weight)
    ids = torch.tensor([tokenizer.encode("the plot was really great")])
    values = critic(ids, every_position=True)  # [1, T, 1]: the head at every position
    assert values.shape == (1, ids.shape[1], 1)
    torch.testing.assert_close(values[:, -1, 0], reward_model(ids)[:, 0])  # the last one is the reward


def test_lora_trains_only_the_adapters_and_the_critic_head_against_the_base_with_adapters_off(sft_model, tmp_path,
                                                                                              monkeypatch):
    """LoRA: the optimizer holds the policy's and the critic's adapters and the critic's head, nothing else; after
    the run both bases are bit-identical to the SFT model and every adapter has moved; the reference is the policy
    itself with its adapters off, whose log-probs equal a frozen copy of the base's; the checkpoint's critic is
    the merged one (a plain reward model computing the trained critic's values)."""
    seen, real_optimizer, real_rollout = {}, loop.make_optimizer, loop.make_rollout

    def spy_optimizer(models, config):
        seen["models"], seen["optimizer"] = models, real_optimizer(models, config)
        return seen["optimizer"]

    def spy_rollout(policy, reference, *args):
        seen["reference"], (seen["rollout"], metrics) = reference, real_rollout(policy, reference, *args)
        return seen["rollout"], metrics
    monkeypatch.setattr(loop, "make_optimizer", spy_optimizer)
    monkeypatch.setattr(loop, "make_rollout", spy_rollout)
    run(sft_model, tmp_path / "run", *LORA, "ppo.iterations=3", "ppo.rollout_prompts=16")
    models, base = seen["models"], load_pretrained(sft_model)
    trained = {n for n, p in models.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in models.named_parameters() if ".lora_" in n} | {"value_model.score.weight"}
    in_optimizer = {id(p) for group in seen["optimizer"].param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for n, p in models.named_parameters() if n in trained}
    for prefix in ("policy.", "value_model.backbone."):
        frozen = {k.removeprefix(prefix): v for k, v in models.state_dict().items()
                  if k.startswith(prefix) and ".lora_" not in k}
        assert frozen and all(torch.equal(v, base.state_dict()[k]) for k, v in frozen.items()), prefix
    adapters = lora.lora_modules(models)
    assert {name.split(".")[0] for name, _ in adapters} == {"policy", "value_model"}
    assert all((m.lora_B != 0).any() for _, m in adapters)
    assert (models["value_model"].score.weight != 0).any()

    reference, rollout = seen["reference"], seen["rollout"]
    assert isinstance(reference, lora.WithoutAdapters) and reference.model is models["policy"]
    with torch.no_grad():
        reference_logps = model_token_logps(reference, rollout)[0]
        assert torch.equal(reference_logps, model_token_logps(base, rollout)[0])
        assert not torch.allclose(reference_logps, model_token_logps(models["policy"], rollout)[0])
    assert (tmp_path / "run" / "final" / "adapter" / "adapter_config.json").is_file()
    saved_critic_dir = checkpoint.latest_checkpoint(tmp_path / "run") / "value_model"
    # the critic's adapters name the model their trunk came from (here the SFT model, as ppo.value_model is unset)
    assert json.loads((saved_critic_dir / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == str(sft_model)
    saved_critic = load_reward_model(saved_critic_dir)  # merged
    with torch.no_grad():
        torch.testing.assert_close(saved_critic(rollout["input_ids"], rollout["attention_mask"], every_position=True),
                                   models["value_model"](rollout["input_ids"], rollout["attention_mask"],
                                                         every_position=True), atol=1e-5, rtol=1e-5)
