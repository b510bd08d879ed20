"""Config loading: YAML + dotted overrides, type checks, unknown keys rejected with the valid ones."""
import pytest
import torch

from dpo.config import Config, ConfigError, check_paths, load_config, save_config, validate


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  name: ipo\n  beta: 0.5\ntrain:\n  lr: 1e-6\n  batch_size: 32\n")
    config = load_config(str(path), ["loss.beta=0.25", "train.out_dir=2024", "loss.options={k: 1}"])
    assert config.loss.name == "ipo" and config.loss.beta == 0.25
    assert config.train.lr == 1e-6 and isinstance(config.train.lr, float)  # "1e-6" is a str to PyYAML
    assert config.train.batch_size == 32 and config.train.out_dir == "2024"
    assert config.loss.options == {"k": 1}
    assert config.model == Config().model


def test_unknown_key_lists_valid_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  betta: 0.5\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'loss.betta'; valid keys: loss.name, loss.beta"):
        load_config(str(path))
    with pytest.raises(ConfigError, match=r"command line: unknown key 'trian'; valid keys: model, reference"):
        load_config(None, ["trian.lr=1"])


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ConfigError, match=r"command line: key 'train.batch_size' expects int, got str 'big'"):
        load_config(None, ["train.batch_size=big"])
    with pytest.raises(ConfigError, match=r"key 'train.resume' expects bool, got int 1"):
        load_config(None, ["train.resume=1"])
    with pytest.raises(ConfigError, match=r"key 'loss' expects a mapping"):
        load_config(None, ["loss=3"])
    with pytest.raises(ConfigError, match=r"not of the form key=value"):
        load_config(None, ["loss.beta"])


def test_saved_config_loads_back_identically(tmp_path):
    config = load_config(None, ["loss.beta=0.3", "model.n_layer=2"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(str(tmp_path / "config.yaml")) == config


@pytest.mark.parametrize("override, line", [
    ("ppo.clip_range=-1", "ppo.clip_range: expected > 0, got -1.0"),
    ("ppo.minibatch_size=5", "ppo.minibatch_size: expected a divisor of ppo.rollout_prompts (64), got 5"),
    ("ppo.lam=1.5", "ppo.lam: expected in [0, 1], got 1.5"),
    ("ppo.kl_target=-2", "ppo.kl_target: expected >= 0 (0 = a fixed ppo.kl_coef), got -2.0"),
    ("ppo.reward=rouge", "ppo.reward: unknown reward 'rouge'; expected one of classifier:DIR, reward_model:DIR, "
                         "hf:NAME_OR_DIR[@LABEL], quickstart, vader"),
    ("train.parallel=fsdp", "train.parallel: expected auto | none | ddp with loss.name=ppo (no FSDP2 in the PPO "
                            "loop), got 'fsdp'"),
    ("model.name=", "model.name: expected the trained policy PPO starts from (loss.name=ppo), got ''"),
    ("model.dropout=0.1", "model.dropout: expected 0 with loss.name=ppo (π/π_old needs one network), got 0.1"),
    ("lora.dropout=0.05", "lora.dropout: expected 0 with loss.name=ppo (π/π_old needs one network), got 0.05"),
    ("train.reference_cache=true", "train.reference_cache: expected false with loss.name=ppo (rollouts are new "
                                   "samples), got True"),
])
def test_a_bad_ppo_value_is_one_line_naming_the_key(override, line):
    config = load_config(None, ["loss.name=ppo", "model.name=runs/sft/final", override])
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert str(error.value) == line


@pytest.mark.parametrize("version, valid", [("2.6.0+cu124", False), ("2.8.0", False), ("2.9.0", True),
                                            ("2.13.0+cpu", True), ("2.10.0.dev20251001", True)])
def test_fsdp_on_cpu_needs_a_torch_whose_fsdp2_averages_over_gloo(monkeypatch, version, valid):
    """torch 2.6's FSDP2 fails on CPU in its first all-gather; 2.7's and 2.8's sum the gradients where they average
    (world_size times too large, no error). validate refuses them, naming the key."""
    monkeypatch.setattr(torch, "__version__", version)
    config = load_config(None, ["train.parallel=fsdp", "train.device=cpu"])
    if valid:
        validate(config)
        return
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert str(error.value) == (f"train.parallel: FSDP2 on CPU needs torch >= 2.9 (2.6 fails in its first "
                                f"all-gather; 2.7 and 2.8 sum the gradients over gloo where they average), this is "
                                f"torch {version}; use ddp, or a GPU")


def test_ppo_takes_lora():
    validate(load_config(None, ["loss.name=ppo", "model.name=runs/sft/final", "lora.rank=8"]))


def test_ppo_settings_are_not_checked_for_other_losses():
    validate(load_config(None, ["ppo.clip_range=-1", "ppo.reward=rouge"]))


def test_the_ppo_reward_folder_is_checked_with_the_paths(tmp_path):
    """validate checks the reward spec's form (a shipped config names a folder a driver creates later);
    check_paths, before any work, that the folder exists."""
    config = load_config(None, ["loss.name=ppo", "model.name=runs/sft/final", f"train.out_dir={tmp_path / 'out'}",
                                f"ppo.reward=reward_model:{tmp_path / 'rm'}"])
    validate(config)
    config.model.name = ""  # (check_paths would look the name up on the hub)
    with pytest.raises(ConfigError) as error:
        check_paths(config)
    assert str(error.value) == f"ppo.reward: reward 'reward_model:{tmp_path / 'rm'}': {tmp_path / 'rm'} is not a folder"
    (tmp_path / "rm").mkdir()
    check_paths(config)
