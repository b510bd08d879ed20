"""Download a model's files from the Hugging Face hub into a local cache. Standard library only.

The hub serves every file of a repository at `{endpoint}/{repo_id}/resolve/{revision}/{filename}`.
We fetch what a causal LM needs (config.json, the weights, the tokenizer files) into

    {cache_dir}/hub/{repo_id with "/" -> "--"}/{revision}/

and write a `.complete.json` marker last. A folder with that marker is a complete copy: later calls
return it without touching the network, which is also all that offline mode (HF_HUB_OFFLINE=1 or
DPO_OFFLINE=1) allows. Each file goes through dpo.interop.download, which resumes a partial `.part` file.
`resolve_model_dir(name)` is the one rule for "where is this model": a local folder as it is, else a hub name.

    python -m dpo.interop.hub download HuggingFaceTB/SmolLM2-135M [--revision main] [--cache-dir DIR]
"""
import argparse
import json
import os
import sys
import urllib.parse
from pathlib import Path

from dpo.errors import UserError, entry_point
from dpo.files import atomic_write, check_writable
from dpo.interop.download import DownloadError, download

DEFAULT_ENDPOINT = "https://huggingface.co"
COMPLETE_MARKER = ".complete.json"
# Tried in this order; the first one the repository has wins (an index brings its shards).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "generation_config.json", "chat_template.jinja")


class HubError(UserError, RuntimeError):
    """A repository could not be fetched (missing file, no access, offline without a cached copy)."""


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "DPO_OFFLINE"))


def hub_cache_dir(repo_id: str, revision: str = "main", cache_dir=None) -> Path:
    """The folder that holds (or will hold) `repo_id` at `revision`."""
    root = Path(cache_dir or os.environ.get("DPO_CACHE_DIR") or "~/.cache/dpo").expanduser()
    return root / "hub" / repo_id.replace("/", "--") / revision.replace("/", "--")


def cached_snapshot(repo_id: str, revision: str = "main", cache_dir=None) -> Path | None:
    """The cached folder if it is complete (marker present and every file it lists on disk), else None."""
    folder = hub_cache_dir(repo_id, revision, cache_dir)
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return None
    try:
        files = json.loads(marker.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
    return folder if all((folder / name).is_file() for name in files) else None


def resolve_model_dir(name) -> Path:
    """The one rule for "where is this model": a local folder as it is; a hub name ("gpt2-large",
    "EleutherAI/pythia-2.8b") downloaded into the cache (or found there offline). Anything that looks
    like a path (./x, /x, ~/x, a/b/c) or names a file is an error rather than a hub request."""
    path = Path(name)
    if path.is_dir():
        return path
    if path.exists() or str(name).startswith((".", "/", "~")) or str(name).count("/") > 1:
        raise FileNotFoundError(f"{name}: no such checkpoint folder")
    return snapshot_download(str(name))


def snapshot_download(repo_id: str, revision: str = "main", cache_dir=None, endpoint=None,
                      token=None) -> Path:
    """Fetch config.json, the weights (single file or every shard of an index) and whichever tokenizer
    files exist; return the local folder. A complete cached copy is returned with no network access."""
    if not repo_id or repo_id.startswith("/") or ".." in repo_id.split("/"):
        raise HubError(f"invalid Hugging Face repo id {repo_id!r} (expected 'org/name' or 'name')")
    folder = hub_cache_dir(repo_id, revision, cache_dir)
    cached = cached_snapshot(repo_id, revision, cache_dir)
    if cached is not None:
        return cached
    if _offline():
        raise HubError(f"{repo_id} (revision {revision}) is not in the cache at {folder}, and offline mode "
                       "is on (HF_HUB_OFFLINE/DPO_OFFLINE); download it once with network access, or "
                       "pass a local checkpoint folder instead")

    endpoint = (endpoint or os.environ.get("DPO_HF_ENDPOINT") or os.environ.get("HF_ENDPOINT")
                or DEFAULT_ENDPOINT).rstrip("/")
    token = token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = f"{endpoint}/{repo_id}/resolve/{urllib.parse.quote(revision, safe='')}/"

    def fetch(filename: str, required: bool) -> bool:
        """Download one file; False if it does not exist (404) and is optional."""
        url = base + urllib.parse.quote(filename)
        try:
            download(url, folder / filename, headers=headers, desc=f"{repo_id}/{filename}")
            return True
        except DownloadError as e:
            status = getattr(e, "status", None)
            if status == 404 and not required:
                return False
            if status == 404:
                raise HubError(f"{repo_id} (revision {revision}) has no {filename} at {url} (HTTP 404); "
                               "check the repo id and revision") from None
            if status in (401, 403):
                raise HubError(f"{repo_id}: access to {filename} denied (HTTP {status}); the repository "
                               "may be private or gated: set HF_TOKEN to a token that can read it") from None
            if status is None:
                raise HubError(f"cannot download {repo_id} from {endpoint}: {e}. The machine may be "
                               f"offline; no complete cached copy at {folder}") from None
            raise HubError(f"cannot download {filename} of {repo_id}: {e}") from None

    fetch("config.json", required=True)
    files = ["config.json"]
    for weights in WEIGHT_FILES:
        if fetch(weights, required=False):
            files.append(weights)
            if weights.endswith(".index.json"):
                for shard in _index_shards(folder / weights):
                    fetch(shard, required=True)
                    files.append(shard)
            break
    else:
        raise HubError(f"{repo_id} (revision {revision}) has none of the weight files "
                       f"{', '.join(WEIGHT_FILES)} at {base}")
    files += [name for name in TOKENIZER_FILES if fetch(name, required=False)]

    atomic_write(folder / COMPLETE_MARKER, json.dumps({"repo_id": repo_id, "revision": revision,
                                                        "endpoint": endpoint, "files": files}, indent=1))
    return folder


def _index_shards(index_path: Path) -> list[str]:
    """The distinct shard file names in a *.index.json weight_map, in first-seen order."""
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        shards = list(dict.fromkeys(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise HubError(f"{index_path}: not a valid weight index (expected {{'weight_map': "
                       f"{{tensor: shard file}}}}): {e}") from None
    for shard in shards:
        if not isinstance(shard, str) or shard.startswith("/") or ".." in shard.split("/"):
            raise HubError(f"{index_path}: weight_map names an invalid shard file {shard!r}")
    return shards


@entry_point
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo.interop.hub", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", help="download a repository's model files and print the local folder")
    p.add_argument("repo_id")
    p.add_argument("--revision", default="main")
    p.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    if args.cache_dir and cached_snapshot(args.repo_id, args.revision, args.cache_dir) is None:
        check_writable(args.cache_dir, "--cache-dir", folder=True)  # a complete copy may sit in a read-only one
    print(snapshot_download(args.repo_id, revision=args.revision, cache_dir=args.cache_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
