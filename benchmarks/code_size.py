"""Figures of the codebase's shape: code lines per file, the DPO step's files, long functions, import
cycles, and citations of documents outside the repository.

    python benchmarks/code_size.py            # static figures
    python benchmarks/code_size.py --trace    # also: the files and functions one DPO step runs through

A code line is a non-blank line that is not only a comment and not part of a docstring. "The step path"
is the files one DPO step runs through: train.py and dpo/training.py, the model, log-probs, losses, batching and
data.
"""
import ast
import contextlib
import io
import os
import re
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEP_PATH = ["train.py", "dpo/training.py", "dpo/model.py", "dpo/logprobs.py", "dpo/losses.py", "dpo/batching.py",
             "dpo/data.py"]
RUNTIME_EXCLUDE = ("dpo/experiments/",)
COMPREHENSIONS = ("<listcomp>", "<genexpr>", "<dictcomp>", "<setcomp>")  # not functions a reader opens
SKIP_TOKENS = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
               tokenize.ENCODING, tokenize.ENDMARKER}


def docstring_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def code_lines(source: str) -> int:
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in SKIP_TOKENS:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines - docstring_lines(ast.parse(source)))


def functions(tree: ast.AST):
    """(qualified name, length in lines) of every function, methods included."""
    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield prefix + child.name, child.end_lineno - child.lineno + 1
                yield from walk(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, prefix + child.name + ".")
    return list(walk(tree, ""))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """Project modules this module imports, at the top or inside functions."""
    found = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))
    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def trace_one_step(out_dir: str) -> list[tuple[str, str]]:
    """(file, function) of every project function called during the second optimizer step of a tiny DPO run
    (a new 2-layer GPT on the built-in quickstart pairs, one micro-batch per step): from fetching the step's
    micro-batches to the optimizer's update, both included."""
    sys.path.insert(0, str(ROOT))
    import train
    from dpo.config import load_config
    config = load_config(None, [f"train.out_dir={out_dir}", "data.format=quickstart_preference",
                                "data.max_length=48", "data.max_prompt_length=16", "data.eval_examples=8",
                                "model.tokenizer_vocab_size=300", "model.n_layer=2", "model.n_embd=32",
                                "model.max_seq_len=64", "train.batch_size=8", "train.micro_batch_size=8",
                                "train.max_examples=24", "train.device=cpu", "wandb.mode=disabled"])
    seen, state = [], {"nexts": 0, "on": False}

    def profile(frame, event, arg):
        if event != "call":
            return
        path = frame.f_code.co_filename
        if frame.f_code.co_name == "__next__" and path.endswith("batching.py"):
            state["nexts"] += 1
            state["on"] = state["nexts"] == 2
        elif state["on"] and "torch/optim" in path and frame.f_code.co_name == "step":
            state["on"] = False  # the update itself is torch's
            seen.append(("torch/optim", "step"))
        name = frame.f_code.co_qualname
        if state["on"] and path.startswith(str(ROOT)) and ".venv" not in path and not name.endswith(COMPREHENSIONS):
            seen.append((str(Path(path).relative_to(ROOT)), name))
    sys.setprofile(profile)
    try:
        train.train(config)
    finally:
        sys.setprofile(None)
    return sorted(set(seen) - {("torch/optim", "step")})


def main() -> int:
    files = sorted([ROOT / "train.py", ROOT / "sample.py", *(ROOT / "dpo").rglob("*.py")])
    modules = {module_name(p): p for p in files}
    sizes, trees = {}, {}
    for path in files:
        source = path.read_text()
        rel = str(path.relative_to(ROOT))
        sizes[rel], trees[rel] = code_lines(source), ast.parse(source)

    print("code lines per file (non-blank, not comments, not docstrings):")
    for rel, n in sorted(sizes.items(), key=lambda kv: -kv[1]):
        print(f"  {n:6d}  {rel}")
    runtime = sum(n for rel, n in sizes.items() if not rel.startswith(RUNTIME_EXCLUDE))
    experiments = sum(n for rel, n in sizes.items() if rel.startswith(RUNTIME_EXCLUDE))
    step = sum(sizes[rel] for rel in STEP_PATH)
    print(f"runtime (train.py, sample.py, dpo/ without experiments): {runtime}; experiments: {experiments}")
    print(f"the step path ({' + '.join(STEP_PATH)}): {step} (limit 1600)")

    long = [(rel, fn, n) for rel in STEP_PATH for fn, n in functions(trees[rel]) if n > 100]
    print("functions over 100 lines on the step path: "
          + (", ".join(f"{rel}:{fn} ({n})" for rel, fn, n in long) if long else "none"))

    graph = {name: imports(trees[str(p.relative_to(ROOT))], name, p.name == "__init__.py", set(modules))
             for name, p in modules.items()}
    found = cycles(graph)
    print("import cycles: " + ("; ".join(" <-> ".join(c) for c in found) if found else "none"))

    shipped = [*sizes, *(str(p.relative_to(ROOT)) for pattern in ("configs/**/*.yaml", "notebooks/*.ipynb")
                          for p in sorted(ROOT.glob(pattern)))]
    citations = [f"{rel}:{i}" for rel in shipped for i, line in enumerate((ROOT / rel).read_text().splitlines(), 1)
                 if re.search(r"\bSPEC\b|SPEC\.md|\.\./shared", line)]
    print("citations of documents outside the repository (runtime, experiments, configs, notebooks): " + (", ".join(citations) if citations else "none"))
    if "--trace" in sys.argv:
        import tempfile
        os.environ.setdefault("DPO_NO_PROGRESS", "1")
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            called = trace_one_step(tmp)
        by_file = {}
        for rel, fn in called:
            by_file.setdefault(rel, []).append(fn)
        print(f"one DPO step, from its micro-batches to optimizer.step(): {len(by_file)} files, "
              f"{len(called)} functions")
        for rel, fns in sorted(by_file.items()):
            print(f"  {rel} ({len(fns)}): {', '.join(fns)}")
    return 1 if step > 1600 or long or found or citations else 0


if __name__ == "__main__":
    sys.exit(main())
