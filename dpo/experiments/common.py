"""Pieces every experiment driver shares: JSON lines and CSV files, held-out prompts, train.py runs,
checkpoints, sweeps.

An experiment is a folder of files, each written by one stage and read by the next, so that any stage
can run alone, a killed stage resumes, and a finished stage is skipped:

    experiment config (a dataclass filled from YAML + key=value overrides by dpo.config.load_config, as
                       train.py's config; saved with dpo.config.save_config)
    train.py runs      launched as subprocesses (optionally under torchrun), resumed from their latest
                       checkpoint, skipped when out_dir/final exists
    sample files       JSON lines appended a batch at a time (append_jsonl); read back with
                       dpo.data.read_jsonl(resumable=True), which drops a line cut by a kill
    results            one row per (run, step) in results.jsonl, rewritten as results.csv for the notebooks
    figure             the plot stage's notebook writes out_dir/figures/ (run_figure); only --publish copies
                       it to the config's `figure` (e.g. the committed notebooks/figures/)
Whole files are written atomically (dpo.files.atomic_write).
"""
import argparse
import csv
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dpo import data
from dpo.config import load_config
from dpo.errors import UserError, entry_point
from dpo.files import atomic_write, check_writable

TRAIN_PY = Path(__file__).resolve().parents[2] / "train.py"


class ExperimentError(UserError, RuntimeError):
    """A stage cannot run: missing input, bad config, a failed training run. The message says which."""


# ---------------------------------------------------------------------------------------------------
# Files

def write_jsonl(path, rows) -> None:
    """Write all rows at once, atomically."""
    atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows))


def append_jsonl(path, rows) -> None:
    """Append complete lines with one write (resumable files: a kill loses at most the batch in flight)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())


def write_csv(path, rows: list[dict], columns: list[str]) -> None:
    """Rows as CSV with exactly `columns` (missing values empty), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue())


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
    """{method: {"config": train.py config, "overrides": [k=v, ...], "param": dotted key, "values": [...]}} ->
    one run per value (or one run when "param" is absent): {"name", "method", "config", "param", "value",
    "overrides"}. "config" ("" = the experiment's train_config) lets a method run another trainer (PPO).

    The run name is method + "-" + the param's last component + value, e.g. dpo-beta0.1."""
    runs = []
    if not isinstance(methods, dict) or not methods:
        raise ExperimentError(f"{where}: expected a mapping method -> {{config, overrides, param, values}}")
    for method, spec in methods.items():
        spec = spec or {}
        unknown = set(spec) - {"config", "overrides", "param", "values"}
        if unknown:
            raise ExperimentError(f"{where}.{method}: unknown key(s) {', '.join(sorted(unknown))}; "
                                  f"valid: config, overrides, param, values")
        config = spec.get("config", "")
        if not isinstance(config, str):
            raise ExperimentError(f"{where}.{method}.config: expected the path of a train.py config")
        overrides = spec.get("overrides", [])
        if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
            raise ExperimentError(f"{where}.{method}.overrides: expected a list of key=value strings")
        param, values = spec.get("param"), spec.get("values")
        if (param is None) != (values is None):
            raise ExperimentError(f"{where}.{method}: 'param' and 'values' go together")
        if param is None:
            runs.append({"name": method, "method": method, "config": config, "param": "", "value": None,
                         "overrides": overrides})
            continue
        if not isinstance(values, list) or not values:
            raise ExperimentError(f"{where}.{method}.values: expected a non-empty list")
        short = param.rsplit(".", 1)[-1].removeprefix("unlikelihood_")
        for value in values:
            runs.append({"name": f"{method}-{short}{value}", "method": method, "config": config, "param": param,
                         "value": value, "overrides": overrides + [f"{param}={value}"]})
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        raise ExperimentError(f"{where}: two runs share a name ({', '.join(sorted(names))})")
    return runs


def fill_in(overrides: list, values: dict) -> list[str]:
    """key=value strings with each {name} of `values` replaced, e.g. {out_dir} -> runs/imdb."""
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise ExperimentError(f"overrides must be a list of key=value strings, got {overrides!r}")
    for name, value in values.items():
        overrides = [o.replace("{" + name + "}", str(value)) for o in overrides]
    return overrides


def uses_reward_model(run: dict) -> bool:
    """Whether a run's overrides name {reward_model}: the driver's Bradley–Terry reward model (PPO's reward)."""
    return any("{reward_model}" in o for o in run["overrides"])


def check_reward_model_runs(runs: list[dict], reward_model_config: str) -> None:
    """A run that uses the driver's reward model needs reward_model_config, the recipe that trains it."""
    needs = [r["name"] for r in runs if uses_reward_model(r)]
    if needs and not reward_model_config:
        raise ExperimentError(f"methods: run {needs[0]} uses {{reward_model}}, which needs reward_model_config")


def hold_out(rows: list[dict], n: int, seed: int) -> None:
    """Mark a seeded random subset of n rows (dpo.data.seeded_subset) split "eval" and the others "train",
    in place: the prompts whose pairs become train.py's evaluation set. A random subset, not the last n:
    the rows are in file order (IMDB's split is sorted by polarity)."""
    held = set(data.seeded_subset(len(rows), n, seed)) if n > 0 else set()
    for i, row in enumerate(rows):
        row["split"] = "eval" if i in held else "train"


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


def execute_notebook(notebook: Path, env_vars: dict, results: Path, x, *, figure_var: str, publish: bool,
                     report: Path | None = None) -> None:
    """The plot stage of experiment x: run a notebook headless with env_vars set and `figure_var` naming the
    figure to write, run_figure(x) in the run's own folder; it reads the results file and writes the figure,
    and the results CSV and a Markdown table beside it. A driver's `report` (IMDB's results.md: tables,
    paired differences, samples) is copied beside them as <figure name>_results.md. The configured x.figure
    (often a committed file) is written only with publish (the drivers' --publish): then those files are
    copied there."""
    figure = run_figure(x)
    run_notebook(notebook, {**env_vars, figure_var: str(figure.resolve())}, results)
    if report is not None:
        atomic_write(figure_files(figure, report=True)[-1], report.read_bytes())
    print(f"figure: {figure}", flush=True)
    if publish:
        publish_figure(figure, x.figure, report=report is not None)


def run_figure(x) -> Path:
    """Where the plot stage of experiment x writes its figure: out_dir/figures/<file name of x.figure>."""
    return Path(x.out_dir) / "figures" / Path(x.figure).name


def figure_files(figure, report: bool = False) -> list[Path]:
    """A figure and the files written beside it: the PNG, the results CSV, the Markdown table, and with
    `report` the driver's report (<figure name>_results.md)."""
    figure = Path(figure)
    return [figure, figure.with_suffix(".csv"), figure.with_suffix(".md")] + \
        [figure.with_name(figure.stem + "_results.md")] * report


def publish_figure(made: Path, figure, report: bool = False) -> None:
    """Copy the plot stage's files (figure_files of `made`) over those of `figure`, each atomically; all are
    read first, so a missing one leaves every target untouched."""
    contents = [require(source, "plot").read_bytes() for source in figure_files(made, report)]
    for target, content in zip(figure_files(figure, report), contents):
        atomic_write(target, content)
        print(f"published: {target}", flush=True)


def run_notebook(notebook: Path, env_vars: dict, results: Path) -> None:
    """Execute a notebook headless (jupyter-execute, from nbclient) with env_vars set, in its own folder."""
    beside = Path(sys.executable).with_name("jupyter-execute")  # the venv's, else one on PATH
    runner = str(beside) if beside.is_file() else shutil.which("jupyter-execute")
    if runner is None:
        raise ExperimentError("plot: jupyter-execute not found (pip install -r requirements-dev.txt installs "
                              "nbclient, ipykernel and matplotlib); results are in " + str(results))
    print("$ " + " ".join(f"{k}={v}" for k, v in env_vars.items()) + f" {runner} {notebook}", flush=True)
    if subprocess.run([runner, str(notebook)], env={**os.environ, **env_vars}, cwd=notebook.parent).returncode:
        raise ExperimentError(f"plot: executing {notebook} failed")


def run_actions(x, actions: dict, stages: list[str]) -> None:
    """Run the chosen stages of experiment x in order (actions: stage name -> function of x), timing each.
    x.threads > 0 caps the threads of this process and of every train.py / sample.py it starts."""
    if x.threads > 0:
        import torch
        os.environ["OMP_NUM_THREADS"] = str(x.threads)
        torch.set_num_threads(x.threads)
    for stage in stages:
        start = time.perf_counter()
        print(f"=== stage {stage}", flush=True)
        actions[stage](x)
        print(f"=== stage {stage} done in {time.perf_counter() - start:.0f}s", flush=True)


def driver_main(argv, *, module_doc: str, prog: str, cls, stages: tuple, run_stages, config_help: str,
                runs_help: str) -> int:
    """The command line every driver shares: --config, --stage, --runs, --publish (passed on to
    run_stages(x, stages, runs, publish)) and key=value overrides; a user error (dpo.errors.entry_point) is
    one line on stderr and exit status 1, a bug keeps its traceback."""
    parser = argparse.ArgumentParser(prog=prog, description=module_doc.split("\n\n")[0], epilog=module_doc.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("--stage", default="all", help=f"all, or a comma-separated list of {', '.join(stages)}")
    parser.add_argument("--runs", default="", help=runs_help)
    parser.add_argument("--publish", action="store_true",
                        help="the plot stage also copies its figure (and the CSV and table beside it) from "
                             "out_dir/figures/ to the config's `figure`, e.g. the committed notebooks/figures/")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the experiment config")

    @entry_point
    def main(argv) -> int:
        args = parser.parse_args(argv)
        chosen = parse_stages(args.stage, stages)
        if args.publish and "plot" not in chosen:
            raise ExperimentError("--publish copies the plot stage's figure; add plot to --stage")
        x = load_config(args.config, args.overrides, cls=cls)
        check_writable(x.out_dir, "out_dir", folder=True)
        if args.publish:
            check_writable(x.figure, "figure")
        run_stages(x, chosen, [r for r in args.runs.split(",") if r] or None, args.publish)
        return 0
    return main(argv)
