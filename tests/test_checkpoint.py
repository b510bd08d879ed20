"""dpo/checkpoint.py on a tiny GPT (CPU, one rank): a save/load round trip restores the optimizer and RNG
states; re-saving a step replaces it; a kill at any point of a re-save leaves a complete checkpoint (the old
one or the new one) that `latest_checkpoint` finds; a broken `latest` is recovered from what is on disk."""
import json
import os
import random
import shutil

import numpy as np
import pytest
import torch

from dpo import checkpoint
from dpo.distributed import Dist
from dpo.errors import UserError
from dpo.interop.hf_checkpoint import CheckpointError, load_pretrained
from dpo.model import GPT, GPTConfig

CTX = Dist(0, 1, 0, torch.device("cpu"))
STEP = 3


class Killed(Exception):
    """Stands for a kill -9 at that point of the save."""


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=32, n_layer=1, n_head=2, n_embd=16, max_seq_len=16))


def train_step(model, optimizer):
    """One AdamW update, so that the weights change and the optimizer holds state."""
    ids = torch.randint(0, 32, (2, 8))
    logits = model(ids)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def trained(seed=0):
    model = tiny_model(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_step(model, optimizer)
    return model, optimizer


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def save(out, model, optimizer, tag, step=STEP):
    return checkpoint.save_checkpoint(out, step, model, optimizer, {"step": step, "save": tag}, CTX)


def names(out):
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_round_trip_restores_optimizer_and_rng(tmp_path):
    model, optimizer = trained()
    path = save(tmp_path, model, optimizer, "a")
    assert path == tmp_path / "checkpoints" / "step-000003"
    assert checkpoint.latest_checkpoint(tmp_path) == path
    expected = (torch.rand(4), random.random(), np.random.rand())
    saved_state = {k: {n: t.clone() for n, t in s.items()} for k, s in optimizer.state_dict()["state"].items()}

    torch.manual_seed(123)  # move every generator on
    random.seed(123)
    np.random.seed(123)
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-2)
    assert not fresh.state_dict()["state"]
    assert checkpoint.load_training_state(path, model, fresh, CTX) == {"step": STEP, "save": "a"}
    restored = fresh.state_dict()["state"]
    assert restored.keys() == saved_state.keys()
    assert all(torch.equal(restored[k][n], saved_state[k][n]) for k in saved_state for n in saved_state[k])
    assert torch.equal(torch.rand(4), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]
    assert same(weights(load_pretrained(path)), weights(model))


def test_saving_a_step_twice_replaces_it(tmp_path):
    model, optimizer = trained()
    save(tmp_path, model, optimizer, "old")
    train_step(model, optimizer)
    path = save(tmp_path, model, optimizer, "new")
    assert checkpoint.latest_checkpoint(tmp_path) == path
    assert checkpoint.read_trainer_state(path)["save"] == "new"
    assert same(weights(load_pretrained(path)), weights(model))
    assert names(tmp_path) == ["latest", "step-000003"]  # no .tmp or .old left behind


def rmtree_half_way(path, *args, **kwargs):
    """What shutil.rmtree got done before a kill, in the worst order: every file but trainer_state.json."""
    for root, _, files in os.walk(path):
        for f in files:
            if f != checkpoint.TRAINER_STATE:
                os.unlink(os.path.join(root, f))


def kill_at(k, real, partial=None):
    """`real`, except that its k-th call (from 1) is a kill; `partial` does what the call got done first."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k:
            if partial is not None:
                partial(*args, **kwargs)
            raise Killed(f"{real.__name__} call {k}")
        return real(*args, **kwargs)
    wrapper.calls = calls
    return wrapper


# Where a save can be killed: every rename (checkpoint folders, `latest`, trainer_state.json and DCP's own),
# every folder deletion (before it starts, and half-way), the trainer_state / `latest` writes, the weights;
# with the fewest calls a re-save makes to each.
KILL_POINTS = {
    "os.replace": (os, "replace", None, 4),
    "shutil.rmtree": (shutil, "rmtree", None, 3),
    "shutil.rmtree half-way": (shutil, "rmtree", rmtree_half_way, 3),
    "atomic_write": (checkpoint, "atomic_write", None, 2),
    "save_hf": (checkpoint, "save_hf", None, 1),
}


def killed_save(out, model, optimizer, tag, point, k, monkeypatch) -> int:
    """Save STEP into `out` with the k-th call at the kill point killed (k=0: no kill). Returns the calls made."""
    module, attr, partial, _ = KILL_POINTS[point]
    wrapper = kill_at(k, getattr(module, attr), partial)
    with monkeypatch.context() as m:
        m.setattr(module, attr, wrapper)
        if k:
            with pytest.raises(Killed):
                save(out, model, optimizer, tag)
        else:
            save(out, model, optimizer, tag)
    return wrapper.calls["n"]


def setup_resave(out):
    """`out` after saves of step 1 and STEP (tag old), with incomplete leftovers of an older kill, and the model
    and optimizer one update later, about to save STEP again (tag new). Returns (model, optimizer, saves):
    saves maps each tag to its weights."""
    model, optimizer = trained()
    save(out, model, optimizer, "old", step=1)
    save(out, model, optimizer, "old")
    for leftover in ("step-000003.tmp", "step-000003.old"):
        (out / "checkpoints" / leftover / "optimizer").mkdir(parents=True)
        (out / "checkpoints" / leftover / "config.json").write_text("{}")
    saves = {"old": weights(model)}
    train_step(model, optimizer)
    saves["new"] = weights(model)
    return model, optimizer, saves


def resumable(out, saves: dict) -> str:
    """What a resumed run sees after a kill, never an error: a complete STEP checkpoint whose weights are those of
    the save its trainer state names (a key of `saves`). Returns that tag."""
    path = checkpoint.latest_checkpoint(out)
    assert path is not None and path.name.startswith("step-000003"), names(out)
    model = load_pretrained(path)
    tag = checkpoint.load_training_state(path, model, torch.optim.AdamW(model.parameters()), CTX)["save"]
    assert same(weights(model), saves[tag]), (tag, "weights and trainer state disagree", names(out))
    return tag


def calls_in_a_save(out, model, optimizer, point, monkeypatch, least=1) -> int:
    """How often a save into (a copy of) `out` calls the kill point's function (at least `least` times)."""
    copy = out.with_name(out.name + "-count")
    shutil.copytree(out, copy)
    n = killed_save(copy, model, optimizer, "count", point, 0, monkeypatch)
    assert n >= least, (point, n)  # the kill points are really there
    return n


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_anywhere_in_a_resave_leaves_a_complete_checkpoint(point, tmp_path, monkeypatch):
    model, optimizer, _ = setup_resave(tmp_path / "count")
    outcomes = set()
    n = calls_in_a_save(tmp_path / "count", model, optimizer, point, monkeypatch, least=KILL_POINTS[point][3])
    for k in range(1, n + 1):
        out = tmp_path / f"kill-{k}"
        model, optimizer, saves = setup_resave(out)
        killed_save(out, model, optimizer, "new", point, k, monkeypatch)
        outcomes.add(resumable(out, saves))
        # the resumed run saves the step again: it lands as step-N and nothing is left over
        train_step(model, optimizer)
        assert save(out, model, optimizer, "again") == checkpoint.latest_checkpoint(out)
        assert names(out) == ["latest", "step-000001", "step-000003"], (k, names(out))
    if point == "os.replace":  # kills before and after the new checkpoint is in place
        assert outcomes == {"old", "new"}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_second_kill_while_a_recovered_run_resaves(point, tmp_path, monkeypatch):
    """A first kill mid-rename leaves `latest` naming nothing and the run resumes from step-N.tmp or .old; it
    saves step N again and is killed anywhere in that save: still a complete checkpoint."""
    model, optimizer, _ = setup_resave(tmp_path / "count")
    recovered = 0
    for k1 in range(1, calls_in_a_save(tmp_path / "count", model, optimizer, "os.replace", monkeypatch) + 1):
        first = tmp_path / f"first-{k1}"
        model, optimizer, saves = setup_resave(first)
        killed_save(first, model, optimizer, "new", "os.replace", k1, monkeypatch)
        if (first / "checkpoints" / "step-000003").is_dir():
            continue  # `latest` still names a complete checkpoint
        recovered += 1
        resumable(first, saves)
        train_step(model, optimizer)
        saves["again"] = weights(model)
        for k2 in range(1, calls_in_a_save(first, model, optimizer, point, monkeypatch) + 1):
            out = tmp_path / f"second-{k1}-{k2}"
            shutil.copytree(first, out)
            killed_save(out, model, optimizer, "again", point, k2, monkeypatch)
            resumable(out, saves)
    assert recovered >= 1


def complete(out, name, tag):
    (out / "checkpoints" / name).mkdir(parents=True, exist_ok=True)
    (out / "checkpoints" / name / checkpoint.TRAINER_STATE).write_text(json.dumps({"save": tag}))


@pytest.mark.parametrize("latest", [None, "step-000009", "step-000004", "../../elsewhere", "\xff"])
def test_latest_naming_nothing_recovers_the_newest_complete_checkpoint(tmp_path, capsys, latest):
    out = tmp_path
    complete(out, "step-000001", "1")
    complete(out, "step-000002", "2")
    complete(out, "step-000003.old", "3 old")  # a kill between renaming step-3 aside and the new one in
    (out / "checkpoints" / "step-000003.tmp").mkdir()  # incomplete: no trainer_state.json
    (out / "checkpoints" / "step-000004").mkdir()      # incomplete too
    if latest is not None:
        (out / "checkpoints" / "latest").write_text(latest, encoding="latin-1")
    path = checkpoint.latest_checkpoint(out)
    assert path == out / "checkpoints" / "step-000003.old"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "latest" in err and str(path) in err

    complete(out, "step-000003.tmp", "3 new")  # the newer copy of the same step wins over the old one
    assert checkpoint.latest_checkpoint(out).name == "step-000003.tmp"
    complete(out, "step-000003", "3")
    assert checkpoint.latest_checkpoint(out).name == "step-000003"


def test_a_complete_latest_is_used_quietly(tmp_path, capsys):
    complete(tmp_path, "step-000001", "1")
    complete(tmp_path, "step-000002", "2")  # newer, but `latest` names a complete one: that is the one
    (tmp_path / "checkpoints" / "latest").write_text("step-000001\n")
    assert checkpoint.latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000001"
    assert capsys.readouterr().err == ""


def test_nothing_complete_is_none(tmp_path, capsys):
    assert checkpoint.latest_checkpoint(tmp_path) is None  # a new run: quiet
    (tmp_path / "checkpoints").mkdir()
    assert checkpoint.latest_checkpoint(tmp_path) is None
    assert capsys.readouterr().err == ""
    (tmp_path / "checkpoints" / "step-000002.tmp").mkdir()
    (tmp_path / "checkpoints" / "step-000002.tmp" / "config.json").write_text("{}")
    (tmp_path / "checkpoints" / "latest").write_text("step-000002")
    assert checkpoint.latest_checkpoint(tmp_path) is None
    assert "no complete checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b'{"step": 3', b"[1, 2]", b"\xff\xfe"])
def test_corrupt_trainer_state_is_a_checkpoint_error(tmp_path, content):
    model, optimizer = trained()
    path = save(tmp_path, model, optimizer, "a")
    state_file = path / checkpoint.TRAINER_STATE
    state_file.write_bytes(content)
    with pytest.raises(CheckpointError, match="trainer_state.json") as e:
        checkpoint.latest_checkpoint(tmp_path)
    assert isinstance(e.value, UserError) and str(state_file) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="trainer_state.json"):
        checkpoint.load_training_state(path, model, optimizer, CTX)
