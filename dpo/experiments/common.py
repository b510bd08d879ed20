"""Pieces every experiment driver shares: its config, JSON lines files, train.py runs, checkpoints, results.

An experiment is a folder of files, each written by one stage and read by the next, so that any stage
can run alone, a killed stage resumes, and a finished stage is skipped:

    experiment config (a dataclass filled from YAML + key=value overrides, as train.py's config)
    train.py runs      launched as subprocesses (optionally under torchrun), resumed from their latest
                       checkpoint, skipped when out_dir/final exists
    sample files       JSON lines appended a batch at a time (a line cut by a kill is dropped on read)
    results            one row per (run, step) in results.jsonl, rewritten as results.csv for the notebooks
"""
import csv
import dataclasses
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from dpo.config import _fill, _set_dotted

TRAIN_PY = Path(__file__).resolve().parents[2] / "train.py"


class ExperimentError(RuntimeError):
    """A stage cannot run: missing input, bad config, a failed training run. The message says which."""


# ---------------------------------------------------------------------------------------------------
# Config: a dataclass per experiment, filled like dpo.config (unknown keys and wrong types are errors).

def load_experiment(cls, path=None, overrides=()):
    """An instance of the dataclass `cls`: defaults <- YAML file <- `key=value` overrides."""
    config = cls()
    if path:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ExperimentError(f"{path}: cannot read experiment config ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ExperimentError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
        _fill(config, values, "", str(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ExperimentError(f"command line: override '{item}' is not of the form key=value")
        nested = {}
        _set_dotted(nested, key.lstrip("-"), yaml.safe_load(raw) if raw != "" else "")
        _fill(config, nested, "", "command line")
    return config


def save_experiment(config, path) -> None:
    write_text(path, yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))


# ---------------------------------------------------------------------------------------------------
# Files

def write_text(path, text: str) -> None:
    """Atomic: a temp file in the same folder, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_jsonl(path, rows) -> None:
    """Write all rows at once, atomically."""
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def append_jsonl(path, rows) -> None:
    """Append complete lines with one write (resumable files: a kill loses at most the batch in flight)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path, *, resumable: bool = False) -> list[dict]:
    """Rows of a JSON lines file. resumable: a last line without its newline (a write cut by a kill) is
    dropped with a message on stderr and the file is truncated to its last complete line, so the next
    append starts clean; anywhere else a bad line is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        return [] if resumable else _missing(path)
    text = path.read_text()
    lines = text.split("\n")
    if lines[-1]:  # no final newline
        if not resumable:
            lines.append("")
        else:
            print(f"{path}: dropping an incomplete last line ({len(lines[-1])} chars, cut by an interrupted "
                  f"write); it will be redone", file=sys.stderr)
            with open(path, "r+") as f:
                f.truncate(len(text.encode()) - len(lines[-1].encode()))
            lines[-1] = ""
    rows = []
    for lineno, line in enumerate(lines[:-1], 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ExperimentError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise ExperimentError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _missing(path):
    raise ExperimentError(f"{path}: no such file (run the stage that writes it first)")


def write_csv(path, rows: list[dict], columns: list[str]) -> None:
    """Rows as CSV with exactly `columns` (missing values empty), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------------
# train.py runs and their checkpoints

def train_done(run_dir) -> bool:
    """A train.py run is complete when it wrote out_dir/final (its last act before the final samples)."""
    return (Path(run_dir) / "final" / "config.json").is_file()


def train_command(config_path, overrides=(), launcher: str = "") -> list[str]:
    """argv of one train.py run. launcher: "" = this Python; e.g. "torchrun --nproc_per_node=8"."""
    head = shlex.split(launcher) if launcher else [sys.executable]
    return [*head, str(TRAIN_PY), "--config", str(config_path), *[str(o) for o in overrides]]


def run_train(config_path, overrides=(), *, run_dir, launcher: str = "", env: dict | None = None,
              while_running=None, poll_seconds: float = 30.0) -> bool:
    """Run train.py unless `run_dir` already holds a finished run; resume from its latest checkpoint if a
    previous attempt was cut off. `overrides` must set train.out_dir=run_dir. Returns True if it ran.
    while_running: called every poll_seconds while train.py runs (e.g. to evaluate new checkpoints)."""
    run_dir = Path(run_dir)
    if train_done(run_dir):
        print(f"skip: {run_dir} is complete ({run_dir / 'final'})", flush=True)
        return False
    overrides = list(overrides)
    if (run_dir / "checkpoints" / "latest").is_file():
        overrides.append("train.resume=true")
    argv = train_command(config_path, overrides, launcher)
    print("$ " + " ".join(shlex.quote(a) for a in argv), flush=True)
    proc = subprocess.Popen(argv, env={**os.environ, **(env or {})})
    try:
        while proc.poll() is None:
            if while_running is not None:
                while_running()
            try:
                proc.wait(timeout=poll_seconds)
            except subprocess.TimeoutExpired:
                pass
    except BaseException:
        proc.terminate()  # do not leave a training run behind when the driver stops
        proc.wait()
        raise
    if proc.returncode != 0:
        raise ExperimentError(f"train.py exited with status {proc.returncode} for {run_dir} "
                              f"(command above; rerun the stage to resume from its last checkpoint)")
    if not train_done(run_dir):
        raise ExperimentError(f"train.py finished but {run_dir / 'final'} is missing")
    return True


def list_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint of a train.py run (out_dir/checkpoints/step-N with its
    trainer_state.json; `.tmp` folders of a save in progress are not complete), by step."""
    root = Path(run_dir) / "checkpoints"
    found = []
    for folder in root.glob("step-*") if root.is_dir() else []:
        step = folder.name.removeprefix("step-")
        if step.isdigit() and (folder / "trainer_state.json").is_file():
            found.append((int(step), folder))
    return sorted(found)


# ---------------------------------------------------------------------------------------------------
# Sweeps

def expand_sweep(methods: dict, where: str = "methods") -> list[dict]:
    """{method: {"overrides": [k=v, ...], "param": dotted key, "values": [...]}} -> one run per value
    (or one run when "param" is absent): {"name", "method", "param", "value", "overrides"}.

    The run name is method + "-" + the param's last component + value, e.g. dpo-beta0.1."""
    runs = []
    if not isinstance(methods, dict) or not methods:
        raise ExperimentError(f"{where}: expected a mapping method -> {{overrides, param, values}}")
    for method, spec in methods.items():
        spec = spec or {}
        unknown = set(spec) - {"overrides", "param", "values"}
        if unknown:
            raise ExperimentError(f"{where}.{method}: unknown key(s) {', '.join(sorted(unknown))}; "
                                  f"valid: overrides, param, values")
        overrides = spec.get("overrides", [])
        if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
            raise ExperimentError(f"{where}.{method}.overrides: expected a list of key=value strings")
        param, values = spec.get("param"), spec.get("values")
        if (param is None) != (values is None):
            raise ExperimentError(f"{where}.{method}: 'param' and 'values' go together")
        if param is None:
            runs.append({"name": method, "method": method, "param": "", "value": None, "overrides": overrides})
            continue
        if not isinstance(values, list) or not values:
            raise ExperimentError(f"{where}.{method}.values: expected a non-empty list")
        short = param.rsplit(".", 1)[-1].removeprefix("unlikelihood_")
        for value in values:
            runs.append({"name": f"{method}-{short}{value}", "method": method, "param": param, "value": value,
                         "overrides": overrides + [f"{param}={value}"]})
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        raise ExperimentError(f"{where}: two runs share a name ({', '.join(sorted(names))})")
    return runs


def require(path: Path, stage: str) -> Path:
    """`path`, which an earlier stage writes; a clear error naming that stage when it is missing."""
    if not path.exists():
        raise ExperimentError(f"{path}: missing; run the {stage} stage first")
    return path


def parse_stages(text: str, stages: tuple) -> list[str]:
    """--stage: "all" or a comma-separated list of `stages` -> the list, in the order given."""
    if text == "all":
        return list(stages)
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in chosen if s not in stages]
    if bad or not chosen:
        raise ExperimentError(f"--stage: unknown stage(s) {', '.join(bad) or '(none)'}; expected all or a "
                              f"comma-separated list of {', '.join(stages)}")
    return chosen


def jupyter_execute() -> str | None:
    """The jupyter-execute command beside this Python (the venv's), else on PATH; None when absent."""
    beside = Path(sys.executable).with_name("jupyter-execute")
    return str(beside) if beside.is_file() else shutil.which("jupyter-execute")
