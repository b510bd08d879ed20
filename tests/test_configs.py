"""Every shipped training config loads (no unknown key, every value of the right type) and names a real
data format and loss, so a config cannot rot when a key is renamed. Experiment-driver configs (their own
schema, e.g. configs/imdb/mini.yaml) are checked by tests/test_experiments_*.py."""
import dataclasses
from pathlib import Path

import pytest
import yaml

import dpo.config
from dpo import formats, losses
from dpo.config import Config, load_config, validate

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
TRAIN_KEYS = {f.name for f in dataclasses.fields(Config)}
TRAIN_CONFIGS = [p for p in CONFIGS if set(yaml.safe_load(p.read_text()) or {}) <= TRAIN_KEYS]


def test_the_training_configs_are_found():
    names = {str(p.relative_to(CONFIG_DIR)) for p in TRAIN_CONFIGS}
    assert {"quickstart.yaml", "quickstart_dpo.yaml", "tldr/dpo.yaml", "hh/sft.yaml", "hh/dpo.yaml"} <= names


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_shipped_config_is_valid(path, monkeypatch):
    # (the TL;DR and HH configs shard with FSDP2 on GPUs: whether this torch runs FSDP2 on CPU is not theirs)
    monkeypatch.setattr(dpo.config, "fsdp2_on_cpu", lambda: True)
    config = load_config(str(path))
    validate(config)  # every choice, range and loss option, as train.py checks before any work
    assert config.data.format in formats.FORMATS
    assert config.loss.name in losses.LOSSES or config.loss.name in ("classifier", "reward_model", "ppo")
