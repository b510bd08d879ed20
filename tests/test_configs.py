"""Every shipped config loads (no unknown key, every value of the right type) and names a real data format
and loss, so a config cannot rot when a key is renamed."""
from pathlib import Path

import pytest

from dpo import data, losses
from dpo.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_shipped_config_is_valid(path):
    config = load_config(str(path))
    assert config.data.format in data.FORMATS
    assert config.loss.name in losses.LOSSES or config.loss.name in ("classifier", "reward_model")
