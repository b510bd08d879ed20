"""dpo/ppo/loop.py on the quickstart task, whose ground truth is known (dpo.quickstart.reward), from a tiny SFT
model trained here: PPO raises the reward of held-out samples while their KL to the reference stays near the
target; resume = uninterrupted (bit-exact); two DDP processes sample what one does and train alike; the value
model starts from the reward model or from the policy."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from dpo import checkpoint, distributed
from dpo.config import load_config
from dpo.interop.hf_checkpoint import load_pretrained
from dpo.interop.safetensors import load_file
from dpo.ppo.loop import build_value_model, train_ppo
from dpo.reward_model import RewardModel
from dpo.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "quickstart_ppo.yaml")


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
    assert lines[-1]["objective/scores"] > lines[0]["objective/scores"] + 0.1
    kl_coefs = [r["kl_coef"] for r in lines]  # the rollouts' KL stays under 3: the controller lowers the coefficient
    assert all(b < a for a, b in zip(kl_coefs, kl_coefs[1:])) and kl_coefs[0] == 0.05
    assert all(0 <= r["policy/clipfrac"] < 0.5 and r["val/error"] > 0 for r in lines)
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


class Killed(BaseException):
    """A kill -9 stand-in: nothing catches it."""


def test_resume_equals_an_uninterrupted_run(sft_model, tmp_path, monkeypatch, capsys):
    """Killed after the iteration-2 checkpoint and resumed: policy, value model, KL coefficient, optimizer,
    data position, sampling and minibatch order all continue, so the final weights are bit-equal."""
    settings = ("ppo.iterations=4", "ppo.rollout_prompts=16", "train.save_every=1", "ppo.kl_target=4",
                "ppo.kl_horizon=100")
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
    a, b = load_file(full / "final" / "model.safetensors"), load_file(killed / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resume is not bit-exact"
    last = "checkpoints/step-000004/value_model/model.safetensors"
    assert (full / last).read_bytes() == (killed / last).read_bytes()
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
