"""Where a run's numbers go: metrics.jsonl in the run directory (always), wandb (online, offline or off),
and one line per log on the console. Only rank 0 logs.

wandb mode "auto" is online when an API key is configured (WANDB_API_KEY or a `wandb login`), else
offline (the run can be uploaded later with `wandb sync`). As in the authors' reference code, the wandb
step is the number of training examples seen, so runs with different batch sizes line up.
"""
import json
import os
from pathlib import Path


def _wandb_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
    return "online" if has_key else "offline"


class RunLog:
    """Appends one JSON object per call to out_dir/metrics.jsonl and mirrors it to wandb."""

    def __init__(self, out_dir, config_dict: dict, wandb_config, enabled: bool, resume: bool):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.wandb = None
        if not enabled:
            return
        if not resume and self.path.exists():
            self.path.unlink()
        mode = _wandb_mode(wandb_config.mode)
        if mode != "disabled":
            import wandb
            self.wandb = wandb.init(project=wandb_config.project, name=wandb_config.name or Path(out_dir).name,
                                    config=config_dict, dir=str(out_dir), mode=mode,
                                    resume="allow" if resume else None)

    def log(self, metrics: dict, examples: int) -> None:
        if not self.enabled:
            return
        record = {"counters/examples": examples, **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=examples)

    def table(self, name: str, columns: list[str], rows: list[list], examples: int) -> None:
        if self.enabled and self.wandb is not None:
            import wandb
            self.wandb.log({name: wandb.Table(columns=columns, data=rows)}, step=examples)

    def truncate_after(self, examples: int) -> None:
        """On resume: drop records written after the checkpoint, so metrics.jsonl equals an uninterrupted run's."""
        if not (self.enabled and self.path.exists()):
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line and json.loads(line)["counters/examples"] <= examples]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
