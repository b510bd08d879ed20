"""train.py invariants on a tiny GPT (CPU, fp32): step-0 DPO loss = ln 2; k micro-batches = one batch k
times larger; 2-process DDP and FSDP2 = 1 process; resume = uninterrupted (bit-exact); the checkpoint
loads in transformers; bad configs and a non-finite loss stop the run with a clear message."""
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from dpo import checkpoint, losses, quickstart
from dpo.config import fsdp2_on_cpu, load_config
from dpo.interop.hf_checkpoint import load_pretrained, save_pretrained
from dpo.interop.safetensors import load_file
from dpo.model import GPT, GPTConfig
from dpo.tokenizer import Tokenizer, train_sentencepiece

ROOT = Path(__file__).resolve().parents[1]
NEEDS_CPU_FSDP2 = pytest.mark.skipif(not fsdp2_on_cpu(), reason="FSDP2 on CPU needs torch >= 2.9")


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A tiny random GPT-2-family checkpoint with a SentencePiece tokenizer trained on the quickstart task."""
    root = tmp_path_factory.mktemp("base")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(ex["prompt"] + ex["completion"] for ex in quickstart.sft_examples(2000, 0)))
    train_sentencepiece([corpus], root / "sp", 320)
    tokenizer = Tokenizer.from_pretrained(root / "sp.model")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32, max_seq_len=64,
                          eos_id=tokenizer.eos_id, bos_id=tokenizer.bos_id))
    out = root / "model"
    save_pretrained(model, out)
    tokenizer.save_pretrained(out)
    return out


def overrides(base_model: Path, out_dir: Path, *extra: str) -> list[str]:
    return [f"model.name={base_model}", f"train.out_dir={out_dir}", "data.format=quickstart_preference",
            "data.max_length=48", "data.max_prompt_length=16", "data.eval_examples=16", "loss.name=sigmoid",
            "loss.beta=0.1", "train.batch_size=8", "train.micro_batch_size=8", "train.max_examples=24",
            "train.optimizer=sgd", "train.lr=0.5", "train.warmup_steps=0", "train.log_every=1",
            "train.device=cpu", "wandb.mode=disabled", *extra]


def run(base_model, out_dir, *extra) -> dict:
    return train.train(load_config(None, overrides(base_model, out_dir, *extra)))


def metrics_lines(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def final_weights(out_dir: Path) -> dict:
    return load_file(out_dir / "final" / "model.safetensors")


def assert_weights_close(a: dict, b: dict, atol: float):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"max weight difference {worst} > {atol}"


def test_step0_dpo_loss_is_ln2_and_rewards_are_zero(base_model, tmp_path):
    run(base_model, tmp_path / "run", "train.max_examples=8")
    first = metrics_lines(tmp_path / "run")[0]
    assert first["counters/examples"] == 8
    assert abs(first["loss/train"] - math.log(2)) < 1e-6
    assert first["rewards_train/chosen"] == 0 and first["rewards_train/margins"] == 0
    assert first["rewards_train/accuracies"] == 0  # strict >: ties are not correct
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_micro_batches_equal_one_big_batch(base_model, tmp_path):
    # SGD, whose update is linear in the gradient: RMSprop/Adam's first step is ~ lr * sign(g), which
    # turns float rounding in a near-zero gradient into a full-size difference.
    run(base_model, tmp_path / "big", "train.max_examples=8")
    run(base_model, tmp_path / "small", "train.max_examples=8", "train.micro_batch_size=2")
    assert_weights_close(final_weights(tmp_path / "big"), final_weights(tmp_path / "small"), 1e-6)
    big, small = metrics_lines(tmp_path / "big")[0], metrics_lines(tmp_path / "small")[0]
    assert abs(big["loss/train"] - small["loss/train"]) < 1e-6
    # and the update did change the weights (a test of nothing would pass the line above too)
    before = load_file(base_model / "model.safetensors")
    after = final_weights(tmp_path / "big")
    assert max((before[k] - after[k]).abs().max().item() for k in before) > 1e-4


def test_resume_equals_uninterrupted_run(base_model, tmp_path):
    full = tmp_path / "full"
    # AdamW + warmup: the optimizer moments and the schedule position must be restored, not just weights
    resumable = ("train.max_examples=32", "train.save_every=2", "train.optimizer=adamw", "train.lr=1e-3",
                 "train.warmup_steps=3")
    run(base_model, full, *resumable)
    # An interrupted run: the same run killed after its step-2 checkpoint (later files never written).
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "final")
    for step_dir in (cut / "checkpoints").glob("step-*"):
        if step_dir.name != "step-000002":
            shutil.rmtree(step_dir)
    (cut / "checkpoints" / "latest").write_text("step-000002")
    with open(cut / "metrics.jsonl", "a") as f:  # killed in the middle of writing a metrics line
        f.write('{"counters/examples": 32, "loss/tr')
    run(base_model, cut, *resumable, "train.resume=true")
    a, b = final_weights(full), final_weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume is not bit-exact"
    timing = ("examples_per_second", "tokens_per_second", "peak_memory_gb", "tflops_per_second")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(metrics_lines(full)) == strip(metrics_lines(cut))


def test_checkpoint_loads_in_transformers(base_model, tmp_path):
    transformers = pytest.importorskip("transformers")
    run(base_model, tmp_path / "run", "train.max_examples=8")
    final = tmp_path / "run" / "final"
    theirs = transformers.AutoModelForCausalLM.from_pretrained(final).eval()
    ours = load_pretrained(final).eval()
    ids = torch.tensor([Tokenizer.from_pretrained(final).encode("the acting was very moving and clever.")])
    with torch.no_grad():
        assert torch.allclose(ours(ids), theirs(ids).logits, atol=1e-4)
    # the step checkpoint is a Hugging Face folder too, and carries its tokenizer
    step = tmp_path / "run" / "checkpoints" / "step-000001"
    assert (step / "config.json").is_file() and (step / "tokenizer.model").is_file()


def test_sft_accumulation_and_eval(base_model, tmp_path):
    final = run(base_model, tmp_path / "sft", "data.format=quickstart_sft", "loss.name=sft", "train.max_examples=16",
                "train.micro_batch_size=4")
    assert set(final) == {"loss/eval", "logps_eval/chosen", "lengths_eval/chosen"}
    assert final["loss/eval"] == pytest.approx(-final["logps_eval/chosen"])


def test_non_finite_loss_stops_and_keeps_last_checkpoint(base_model, tmp_path, monkeypatch, capsys):
    real = losses.preference_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] > 2 else out  # steps 1 and 2 fine, step 3 NaN

    monkeypatch.setattr(losses, "preference_loss", poisoned)
    out = tmp_path / "run"
    code = train.main(["train.save_every=1", *overrides(base_model, out, "train.max_examples=32")])
    assert code == 1
    assert "non-finite loss (nan)" in capsys.readouterr().err
    assert (out / "checkpoints" / "latest").read_text() == "step-000002"
    assert not (out / "final").exists()


def test_bad_config_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_sise: 8\n")
    proc = subprocess.run([sys.executable, "train.py", "--config", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad}: unknown key 'train.batch_sise'; valid keys: " + proc.stderr.split("valid keys: ")[1].strip()]
    assert "train.batch_size" in proc.stderr
    proc = subprocess.run([sys.executable, "train.py", "train.lr=fast"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "key 'train.lr' expects float, got str 'fast'" in proc.stderr


def torchrun(out_dir: Path, base_model: Path, *extra: str):
    with socket.socket() as s:  # a free port (torchrun's --master_port=0 does not pick one for static rendezvous)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "train.py", *overrides(base_model, out_dir, *extra)]
    env = dict(os.environ, OMP_NUM_THREADS="1", DPO_NO_PROGRESS="1")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("mode", ["ddp", pytest.param("fsdp", marks=NEEDS_CPU_FSDP2)])
def test_two_processes_equal_one(base_model, tmp_path, mode):
    """Same global batch (8 pairs: 1 process x 2 micro-batches of 4 vs 2 ranks x 1 of 4), 3 steps."""
    run(base_model, tmp_path / "one", "train.micro_batch_size=4")
    # sampling mid-run must neither hang nor change training, also when a rank has no prompt (1 prompt:
    # rank 1 has none, but under FSDP2 it must still join the parameter gathering)
    torchrun(tmp_path / mode, base_model, "train.micro_batch_size=4", f"train.parallel={mode}",
             "train.sample_every=2", "train.sample_prompts=1", "train.sample_max_new_tokens=8")
    assert_weights_close(final_weights(tmp_path / "one"), final_weights(tmp_path / mode), 1e-5)
    one, two = metrics_lines(tmp_path / "one"), metrics_lines(tmp_path / mode)
    assert [r["counters/examples"] for r in one] == [r["counters/examples"] for r in two]
    assert abs(one[-1]["loss/eval"] - two[-1]["loss/eval"]) < 1e-5
    samples = [json.loads(line) for line in (tmp_path / mode / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in samples] == [2, 3]  # step 2, and the end of the run
    assert all("policy" in r and "reference" in r for r in samples)


@pytest.mark.parametrize("ld_alpha", [1.0, 0.5])
def test_reference_cache_gives_the_same_run(base_model, tmp_path, capsys, monkeypatch, ld_alpha):
    """The cached log-probs come from the same functions as the live reference's (LD-DPO's α included)."""
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache"))
    run(base_model, tmp_path / "live", "train.max_examples=16", f"loss.ld_alpha={ld_alpha}")
    run(base_model, tmp_path / "cached", "train.max_examples=16", "train.reference_cache=true",
        f"loss.ld_alpha={ld_alpha}")
    assert "reference log-probs of" in capsys.readouterr().out  # computed and written once
    assert_weights_close(final_weights(tmp_path / "live"), final_weights(tmp_path / "cached"), 1e-6)
    run(base_model, tmp_path / "again", "train.max_examples=16", "train.reference_cache=true",
        f"loss.ld_alpha={ld_alpha}")
    assert "reference log-probs of" not in capsys.readouterr().out  # the second run reads the cache
    assert_weights_close(final_weights(tmp_path / "live"), final_weights(tmp_path / "again"), 1e-6)
    live, cached = metrics_lines(tmp_path / "live")[-1], metrics_lines(tmp_path / "cached")[-1]
    assert abs(live["rewards_eval/margins"] - cached["rewards_eval/margins"]) < 1e-5


def test_reward_model_and_classifier_training(base_model, tmp_path):
    from dpo.reward_model import load_reward_model
    # Bradley–Terry on pairs: the head starts at 0, so the first loss is ln 2; a few steps learn the task.
    final = run(base_model, tmp_path / "rm", "loss.name=reward_model", "train.max_examples=96",
                "train.optimizer=adamw", "train.lr=3e-3")
    first = metrics_lines(tmp_path / "rm")[0]
    assert abs(first["loss/train"] - math.log(2)) < 1e-6 and first["rewards_train/accuracies"] == 0
    assert final["rewards_eval/accuracies"] > 0.6
    rm = load_reward_model(tmp_path / "rm" / "final")
    assert rm.kind == "bradley_terry"
    # A sentiment classifier on labelled reviews in the aclImdb layout.
    imdb = tmp_path / "aclImdb"
    for split in ("train", "test"):
        for label, words in (("pos", quickstart.POSITIVE), ("neg", quickstart.NEGATIVE)):
            (imdb / split / label).mkdir(parents=True)
            for i in range(12):
                review = f"the film was {words[i % len(words)]} and {words[(i + 3) % len(words)]}."
                (imdb / split / label / f"{i}_{8 if label == 'pos' else 2}.txt").write_text(review)
    final = run(base_model, tmp_path / "clf", "loss.name=classifier", "data.format=imdb_sentiment",
                f"data.path={imdb}", "train.max_examples=96", "train.optimizer=adamw", "train.lr=3e-3")
    assert set(final) == {"loss/eval", "accuracy/eval", "p_positive/eval"}
    assert final["accuracy/eval"] > 0.6
    clf = load_reward_model(tmp_path / "clf" / "final")
    assert clf.kind == "classifier" and clf.labels[clf.positive_index] == "POSITIVE"


@pytest.mark.parametrize("name", sorted(set(losses.LOSSES) - {"sft", "sft_mean"}) + ["sigmoid+wpo"])
def test_every_preference_loss_trains(base_model, tmp_path, name, monkeypatch):
    """Each loss of the family runs through train.py on pairs (options it needs come from loss.options), and a
    reference model is loaded exactly when the loss reads one (a new run's reference would be written to
    out_dir/reference; a run from model.name loads it with load_model)."""
    options = {"bco_pair": "loss.options={bco_delta: 0.0}", "unlikelihood": "loss.options={unlikelihood_alpha: 0.5}",
               "sigmoid+wpo": "loss.wpo=true"}
    extra = [options[name]] if name in options else []
    loaded, real_load_model = [], train.load_model

    def spy(path, config, ctx, trainable, meta=False):
        loaded.append(trainable)
        return real_load_model(path, config, ctx, trainable, meta)
    monkeypatch.setattr(train, "load_model", spy)
    final = run(base_model, tmp_path / name, f"loss.name={name.removesuffix('+wpo')}", "train.max_examples=8",
                *extra)
    first = metrics_lines(tmp_path / name)[0]
    assert math.isfinite(first["loss/train"]) and math.isfinite(final["loss/eval"])
    assert first["grad_norm"] > 0
    # the policy (trainable), then the reference if the loss reads it
    assert loaded == ([True, False] if losses.uses_reference(name.removesuffix("+wpo")) else [True])


# ----- bad input: one clear line, exit status 1, nothing half-written --------------------------------------

def broken_copy(base_model: Path, tmp_path: Path, how: str) -> Path:
    """A copy of the base checkpoint, broken in one way."""
    folder = tmp_path / f"model-{how}"
    shutil.copytree(base_model, folder)
    if how == "truncated_weights":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "unknown_model_type":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))
    elif how == "no_config":
        (folder / "config.json").unlink()
    elif how == "no_tokenizer":
        for path in folder.iterdir():
            if "token" in path.name or path.suffix == ".model":
                path.unlink()
    return folder


BAD_INPUTS = {  # name: (overrides or a function of (base_model, tmp_path) giving them, what the line must name)
    "dtype": (["model.dtype=float16x"], "model.dtype"),
    "loss name": (["loss.name=dpo"], "loss.name"),
    "parallel": (["train.parallel=zero"], "train.parallel"),
    "wandb off": (["wandb.mode=off"], "wandb.mode"),
    "negative lr": (["train.lr=-1"], "train.lr"),
    "negative beta": (["loss.beta=-0.1"], "loss.beta"),
    "schedule typo": (["train.schedule=cosinee"], "train.schedule"),
    "fp16 on bf16 weights": (["train.mixed_precision=fp16", "model.dtype=bfloat16"], "train.mixed_precision"),
    "loss option typo": (["loss.options={lable_smoothing: 0.1}"], "lable_smoothing"),
    "micro batch": (["train.micro_batch_size=3"], "train.micro_batch_size"),
    "max_length above the context": (["data.max_length=100"], "data.max_length"),
    "resume without checkpoint": (["train.resume=true"], "train.resume"),
    "model path missing": (lambda base, tmp: [f"model.name={tmp / 'nope'}"], "nope"),
    "model path-like name": (lambda base, tmp: ["model.name=./runs/missing/final"], "runs/missing/final"),
    "tokenizer folder missing": (lambda base, tmp: [f"model.tokenizer={tmp / 'nope'}"], "model.tokenizer"),
    "data file missing": (lambda base, tmp: ["data.format=preference_jsonl", f"data.path={tmp / 'nope.jsonl'}"],
                          "data.path"),
    "out_dir is a file": (lambda base, tmp: [f"train.out_dir={tmp / 'afile'}"], "afile"),
    "truncated weights": (lambda base, tmp: [f"model.name={broken_copy(base, tmp, 'truncated_weights')}"],
                          "model.safetensors"),
    "unknown model_type": (lambda base, tmp: [f"model.name={broken_copy(base, tmp, 'unknown_model_type')}"],
                           "mamba"),
    "checkpoint without config.json": (lambda base, tmp: [f"model.name={broken_copy(base, tmp, 'no_config')}"],
                                       "config.json"),
    "tokenizer files missing": (lambda base, tmp: [f"model.name={broken_copy(base, tmp, 'no_tokenizer')}"],
                                "model-no_tokenizer"),
    "empty dataset": (lambda base, tmp: ["data.format=preference_jsonl", f"data.path={tmp / 'empty.jsonl'}"],
                      "empty.jsonl"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_line(base_model, tmp_path, capsys, case):
    extra, named = BAD_INPUTS[case]
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "empty.jsonl").write_text("")
    out = tmp_path / "run"
    code = train.main(overrides(base_model, out, *(extra(base_model, tmp_path) if callable(extra) else extra)))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert not (out / "checkpoints").exists() and not (out / "final").exists()
    assert not list(tmp_path.rglob("*.tmp*")), "a half-written file was left"


def test_every_problem_is_listed_at_once(base_model, tmp_path, capsys):
    code = train.main(overrides(base_model, tmp_path / "run", "train.lr=-1", "loss.beta=0", "wandb.mode=off"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert [line.split(":")[1].strip() for line in err] == ["wandb.mode", "loss.beta", "train.lr"]
    assert not (tmp_path / "run").exists()


def test_resume_refuses_a_changed_model_unless_told(base_model, tmp_path, capsys):
    out = tmp_path / "run"
    run(base_model, out, "train.max_examples=8")
    other = tmp_path / "other-model"
    shutil.copytree(base_model, other)
    config_before = (out / "config.yaml").read_text()
    code = train.main(overrides(other, out, "train.max_examples=16", "train.resume=true"))
    err = capsys.readouterr().err
    assert code == 1 and f"model.name was '{base_model}'" in err and "train.resume_changed=true" in err
    assert (out / "config.yaml").read_text() == config_before  # the run's record is untouched
    assert train.main(overrides(other, out, "train.max_examples=16", "train.resume=true",
                                "train.resume_changed=true")) == 0


def test_resume_refuses_changed_lora_settings(base_model, tmp_path, capsys):
    """The adapters come from the checkpoint: resuming with another rank, or with LoRA on a full fine-tuning
    run's checkpoint, would silently train something other than the config says."""
    run(base_model, tmp_path / "lora", "lora.rank=4", "train.max_examples=8", "train.save_every=1")
    run(base_model, tmp_path / "full", "train.max_examples=8", "train.save_every=1")
    for out, setting, named in ((tmp_path / "lora", "lora.rank=8", "lora.rank was 4"),
                                (tmp_path / "full", "lora.rank=4", "lora.rank was 0")):
        code = train.main(overrides(base_model, out, setting, "train.max_examples=16", "train.resume=true"))
        assert code == 1 and named in capsys.readouterr().err


FAIL_ON_RANK_1 = """
import os, sys
sys.path.insert(0, {root!r})
import train
from dpo.data import DataError

if os.environ["RANK"] == "1":
    if sys.argv[1] == "start":  # a file only rank 1 cannot read, at start-up
        def load_data(*args, **kwargs):
            raise DataError("data.jsonl:3: a record only rank 1 reads is broken")
        train.load_data = load_data
    else:  # a bad micro-batch on rank 1 at the second step, while rank 0 waits in the gradient all-reduce
        real, calls = train.preference_step, []
        def preference_step(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise DataError("data.jsonl:7: a record only rank 1 reads is broken")
            return real(*args, **kwargs)
        train.STEPS["preference"] = preference_step
sys.exit(train.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("when", ["start", "step"])
def test_one_failing_rank_prints_one_line_and_nobody_hangs(base_model, tmp_path, when):
    script = tmp_path / "fail_on_rank_1.py"
    script.write_text(FAIL_ON_RANK_1.format(root=str(ROOT)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           f"--log-dir={logs}", "--redirects=3", str(script), when,
           *overrides(base_model, tmp_path / "run", "train.micro_batch_size=4", "train.parallel=ddp")]
    env = dict(os.environ, OMP_NUM_THREADS="1", DPO_NO_PROGRESS="1")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    err = {path.parent.name: path.read_text() for path in logs.rglob("stderr.log")}
    assert sorted(err) == ["0", "1"], err
    assert [line for line in err["1"].splitlines() if "error:" in line] == [
        f"rank 1: error: data.jsonl:{3 if when == 'start' else 7}: a record only rank 1 reads is broken"]
    assert "Traceback" not in err["0"] + err["1"] and "error:" not in err["0"], err["0"]
    stopped = [line for line in err["0"].splitlines() if line.startswith("rank 0:")]
    if when == "start":
        assert stopped == ["rank 0: stopped: rank 1 failed"], err["0"]
    else:  # rank 0 sees the all-reduce break, unless torchrun's SIGTERM (sent once rank 1 exits) comes first
        assert stopped in (["rank 0: stopped: a collective failed: another rank stopped (its error is above)"],
                           ["rank 0: stopped: terminated (SIGTERM): torchrun stops every rank once one fails "
                            "(its error is above), or the job was cancelled"]), err["0"]


class Killed(BaseException):
    """A kill -9 stand-in: nothing catches it, so the run stops where it is and leaves its files as they are."""


KILL_POINTS = {  # name: (object, attribute, which call dies, die before (True) or after (False) the call)
    "after the step-2 checkpoint": (lambda: checkpoint, "save_checkpoint", 2, False),
    "during the step-3 save": (lambda: checkpoint, "rng_state", 3, True),  # weights and optimizer written
    "during an evaluation": (lambda: train, "evaluate", 1, True),
    "after the last checkpoint": (lambda: train, "evaluate", 2, True),
    "during the final samples": (lambda: train, "write_samples", 3, True),
    "while writing a metrics line": (lambda: train.RunLog, "log", 5, None),
}


def kill(monkeypatch, point):
    owner, name, nth, before = KILL_POINTS[point]
    owner = owner()
    real, calls = getattr(owner, name), []
    if point == "while writing a metrics line":
        def half_line(self, metrics, examples):
            calls.append(1)
            if len(calls) == nth:
                with open(self.path, "a") as f:
                    f.write('{"counters/examples": ' + str(examples))
                raise Killed()
            return real(self, metrics, examples)
        monkeypatch.setattr(owner, name, half_line)
        return

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == nth and before:
            raise Killed()
        out = real(*args, **kwargs)
        if len(calls) == nth:
            raise Killed()
        return out
    monkeypatch.setattr(owner, name, dying)


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_and_resume_equals_an_uninterrupted_run(base_model, tmp_path, monkeypatch, point):
    """Weights, the last checkpoint, metrics.jsonl (timing fields aside) and samples.jsonl all come out as an
    uninterrupted run's, wherever the run was killed."""
    settings = ("train.max_examples=32", "train.save_every=1", "train.eval_every=2", "train.sample_every=2",
                "train.sample_prompts=2", "train.sample_max_new_tokens=6", "train.sample_reward=quickstart",
                "train.optimizer=adamw", "train.lr=1e-3", "train.warmup_steps=3")
    run(base_model, tmp_path / "full", *settings)
    killed = tmp_path / "killed"
    with monkeypatch.context() as m:
        kill(m, point)
        with pytest.raises(Killed):
            run(base_model, killed, *settings)
    run(base_model, killed, *settings, "train.resume=true")
    full, resumed = final_weights(tmp_path / "full"), final_weights(killed)
    assert all(torch.equal(full[k], resumed[k]) for k in full), "final weights differ"
    last = [(d / "checkpoints" / "step-000004" / "model.safetensors").read_bytes() for d in (tmp_path / "full", killed)]
    assert last[0] == last[1]
    timing = ("examples_per_second", "tokens_per_second", "peak_memory_gb", "tflops_per_second")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(metrics_lines(tmp_path / "full")) == strip(metrics_lines(killed))
    assert (tmp_path / "full" / "samples.jsonl").read_bytes() == (killed / "samples.jsonl").read_bytes()


def test_early_stopping_keeps_the_best_and_resumes_the_count(base_model, tmp_path, monkeypatch):
    """loss/eval falls at every step here, so watching it with mode=max sees one improvement (the first
    evaluation) and then none: with patience 2 the run stops after step 3 of 8, best/ holds step 1's policy,
    final/ step 3's; a run killed after step 2 and resumed stops at the same place with the same weights."""
    settings = ("train.max_examples=64", "train.eval_every=1", "train.save_every=1", "train.early_stopping_patience=2",
                "train.early_stopping_mode=max")
    run(base_model, tmp_path / "full", *settings)
    full = tmp_path / "full"
    assert [r["counters/updates"] for r in metrics_lines(full) if "counters/updates" in r] == [1, 2, 3]
    step_1 = load_file(full / "checkpoints" / "step-000001" / "model.safetensors")
    assert_weights_close(load_file(full / "best" / "model.safetensors"), step_1, 0.0)
    assert_weights_close(final_weights(full), load_file(full / "checkpoints" / "step-000003" / "model.safetensors"),
                         0.0)
    killed = tmp_path / "killed"
    with monkeypatch.context() as m:
        kill(m, "after the step-2 checkpoint")
        with pytest.raises(Killed):
            run(base_model, killed, *settings)
    run(base_model, killed, *settings, "train.resume=true")
    assert_weights_close(final_weights(full), final_weights(killed), 0.0)
    run(base_model, killed, *settings, "train.resume=true")  # a stopped run stays stopped
    assert [r["counters/updates"] for r in metrics_lines(killed) if "counters/updates" in r] == [1, 2, 3]
    assert train.main(overrides(base_model, tmp_path / "x", "train.early_stopping_patience=2")) == 1  # no eval_every


def test_fp16_loss_scaling_skips_overflowing_steps(base_model, tmp_path, monkeypatch):
    """A scale so large that the fp16 gradients overflow: each step is skipped (weights untouched) and the
    scale halves; the run neither stops nor updates."""
    monkeypatch.setattr(train, "grad_scaler", lambda config, ctx, mode: torch.amp.GradScaler("cpu", init_scale=2.0**60))
    run(base_model, tmp_path / "run", "train.mixed_precision=fp16", "train.max_examples=16")
    assert [r["loss_scale"] for r in metrics_lines(tmp_path / "run") if "loss_scale" in r] == [2.0**59, 2.0**58]
    assert_weights_close(final_weights(tmp_path / "run"), load_file(base_model / "model.safetensors"), 0.0)


def test_fp16_trains_and_resumes_exactly(base_model, tmp_path, monkeypatch):
    settings = ("train.mixed_precision=fp16", "train.max_examples=32", "train.save_every=1")
    first = run(base_model, tmp_path / "full", *settings)
    lines = metrics_lines(tmp_path / "full")
    assert math.isfinite(first["loss/eval"]) and [r["loss_scale"] for r in lines if "loss_scale" in r] == [65536.0] * 4
    assert lines[-1]["loss/eval"] < math.log(2)  # it learns (step 0 is ln 2)
    with monkeypatch.context() as m:
        kill(m, "after the step-2 checkpoint")
        with pytest.raises(Killed):
            run(base_model, tmp_path / "killed", *settings)
    run(base_model, tmp_path / "killed", *settings, "train.resume=true")
    assert_weights_close(final_weights(tmp_path / "full"), final_weights(tmp_path / "killed"), 0.0)


@NEEDS_CPU_FSDP2
def test_fp16_under_fsdp2_runs_with_a_sharded_scaler(base_model, tmp_path):
    torchrun(tmp_path / "fsdp", base_model, "train.micro_batch_size=4", "train.parallel=fsdp",
             "train.mixed_precision=fp16")
    lines = metrics_lines(tmp_path / "fsdp")
    assert [r["loss_scale"] for r in lines if "loss_scale" in r] == [65536.0] * 3
    assert all(math.isfinite(r["loss/train"]) for r in lines if "loss/train" in r)


def test_lora_dpo_starts_at_ln2_without_a_second_model_and_resumes_exactly(base_model, tmp_path, monkeypatch):
    """LoRA: the reference is the policy with its adapters off (load_model runs once), so step 0's DPO loss
    is ln 2; only the adapters move; final/ is the merged model (transformers loads it) with the adapters in
    PEFT's layout in final/adapter/; a killed run resumes to the same weights; the reference cache agrees."""
    settings = ("lora.rank=4", "lora.alpha=8", "train.optimizer=adamw", "train.lr=1e-2", "train.max_examples=32",
                "train.save_every=1")
    loaded, real_load_model = [], train.load_model

    def spy(path, config, ctx, trainable, meta=False):
        loaded.append(trainable)
        return real_load_model(path, config, ctx, trainable, meta)
    with monkeypatch.context() as m:
        m.setattr(train, "load_model", spy)
        run(base_model, tmp_path / "full", *settings)
    assert loaded == [True]
    first = metrics_lines(tmp_path / "full")[0]
    assert abs(first["loss/train"] - math.log(2)) < 1e-6
    final, base = final_weights(tmp_path / "full"), load_file(base_model / "model.safetensors")
    moved = [k for k in final if not torch.equal(final[k], base[k])]
    assert moved and all(any(p in k for p in ("c_attn", "c_proj", "c_fc")) for k in moved)  # only adapted layers
    assert (tmp_path / "full" / "final" / "adapter" / "adapter_config.json").is_file()
    with monkeypatch.context() as m:
        kill(m, "after the step-2 checkpoint")
        with pytest.raises(Killed):
            run(base_model, tmp_path / "killed", *settings)
    run(base_model, tmp_path / "killed", *settings, "train.resume=true")
    assert_weights_close(final, final_weights(tmp_path / "killed"), 0.0)
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache"))
    run(base_model, tmp_path / "cached", *settings, "train.reference_cache=true")
    assert_weights_close(final, final_weights(tmp_path / "cached"), 1e-6)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    """A tiny random GPT with a byte-level tokenizer that has ChatML's special tokens and a ChatML template."""
    from helpers import chatml_tokenizer
    root, tokenizer = tmp_path_factory.mktemp("chat") / "model", chatml_tokenizer()
    torch.manual_seed(0)
    save_pretrained(GPT(GPTConfig(vocab_size=259, n_layer=2, n_head=2, n_embd=32, max_seq_len=128, eos_id=258)), root)
    tokenizer.save_pretrained(root)
    return root


def test_dpo_on_conversations_with_lora(chat_model, tmp_path):
    """TRL-style conversational pairs (one with an implicit prompt) rendered as ChatML: DPO + LoRA starts at
    ln 2, trains, and its samples are completions of the rendered chat prompt."""
    pairs = tmp_path / "pairs.jsonl"
    rows = []
    for i in range(16):
        prompt = [{"role": "user", "content": f"Say something nice about film {i}."}]
        chosen, rejected = [{"role": "assistant", "content": "It is great."}], [{"role": "assistant", "content": "Bad."}]
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected} if i % 2 else
                    {"chosen": prompt + chosen, "rejected": prompt + rejected})
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    final = train.train(load_config(None, [
        f"model.name={chat_model}", f"train.out_dir={tmp_path / 'run'}", "data.format=preference_jsonl",
        f"data.path={pairs}", "data.eval_examples=4", "data.max_length=96", "data.max_prompt_length=64",
        "data.chat_template=chatml", "lora.rank=4", "train.batch_size=8", "train.micro_batch_size=4",
        "train.max_examples=16", "train.optimizer=adamw", "train.lr=1e-2", "train.warmup_steps=0",
        "train.sample_every=1", "train.sample_prompts=2", "train.sample_max_new_tokens=4", "train.device=cpu",
        "wandb.mode=disabled"]))
    first = metrics_lines(tmp_path / "run")[0]
    assert abs(first["loss/train"] - math.log(2)) < 1e-6 and math.isfinite(final["loss/eval"])
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["prompt"].startswith("<|im_start|>user\nSay something nice about film")
    assert samples[0]["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("mode", ["ddp", pytest.param("fsdp", marks=NEEDS_CPU_FSDP2)])
def test_lora_with_two_processes_equals_one(base_model, tmp_path, mode):
    """LoRA under DDP / FSDP2 (adapters sharded with their layers; the reference = adapters off on every rank)
    trains the same weights as one process."""
    lora = ("lora.rank=4", "train.optimizer=adamw", "train.lr=1e-2")
    run(base_model, tmp_path / "one", "train.micro_batch_size=4", *lora)
    torchrun(tmp_path / mode, base_model, "train.micro_batch_size=4", f"train.parallel={mode}", *lora)
    assert_weights_close(final_weights(tmp_path / "one"), final_weights(tmp_path / mode), 1e-5)


def test_sharing_the_prompt_trains_like_separate_rows(base_model, tmp_path):
    run(base_model, tmp_path / "shared", "data.share_prompt=true")
    run(base_model, tmp_path / "apart", "data.share_prompt=false")
    assert_weights_close(final_weights(tmp_path / "shared"), final_weights(tmp_path / "apart"), 1e-5)
    shared, apart = metrics_lines(tmp_path / "shared")[-1], metrics_lines(tmp_path / "apart")[-1]
    assert abs(shared["loss/eval"] - apart["loss/eval"]) < 1e-5
