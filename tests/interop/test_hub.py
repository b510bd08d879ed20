"""dpo/interop/hub.py against a local server that serves files in the Hugging Face hub's URL layout."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dpo.interop.hub import HubError, hub_cache_dir, main, snapshot_download
from helpers import OUTPUT_CASES, bad_output_path, refused

REPO = "tiny-org/tiny-model"


@pytest.fixture(autouse=True)
def _online(monkeypatch):
    # conftest turns offline mode on for every test; these tests talk to a local server.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("DPO_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("DPO_NO_PROGRESS", "1")


def serve(server, files: dict[str, bytes], repo=REPO, revision="main") -> None:
    folder = server.root / repo / "resolve" / revision
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def fetched(server) -> list[str]:
    """File names requested (in order), without the repo prefix."""
    return [path.rsplit("/", 1)[1] for path, _, _ in server.requests]


CONFIG = json.dumps({"model_type": "llama", "hidden_size": 8}).encode()
WEIGHTS = bytes(range(256)) * 40  # 10 KiB of distinct-looking bytes


def test_single_file_safetensors(http_server, tmp_path):
    serve(http_server, {"config.json": CONFIG, "model.safetensors": WEIGHTS, "tokenizer.json": b"{}",
                        "vocab.json": b'{"a": 0}', "merges.txt": b"#version: 0.2\n"})
    folder = snapshot_download(REPO, endpoint=http_server.url)
    assert folder == Path(os.environ["DPO_CACHE_DIR"]) / "hub" / "tiny-org--tiny-model" / "main"
    assert (folder / "config.json").read_bytes() == CONFIG
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        assert (folder / name).is_file()
    # Missing optional tokenizer files were asked for, got 404, and are simply absent.
    assert "tokenizer.model" in fetched(http_server) and not (folder / "tokenizer.model").exists()
    # With a single weights file the index and .bin fallbacks are never requested.
    assert not {"model.safetensors.index.json", "pytorch_model.bin"} & set(fetched(http_server))
    assert not list(folder.glob("*.part"))
    marker = json.loads((folder / ".complete.json").read_text())
    assert marker["files"] == ["config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"]


def test_sharded_index_fetches_every_shard(http_server):
    index = {"metadata": {"total_size": 30},
             "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
                            "c": "model-00001-of-00002.safetensors"}}
    serve(http_server, {"config.json": CONFIG, "model.safetensors.index.json": json.dumps(index).encode(),
                        "model-00001-of-00002.safetensors": b"first shard",
                        "model-00002-of-00002.safetensors": b"second shard"})
    folder = snapshot_download(REPO, endpoint=http_server.url)
    assert (folder / "model-00001-of-00002.safetensors").read_bytes() == b"first shard"
    assert (folder / "model-00002-of-00002.safetensors").read_bytes() == b"second shard"
    assert fetched(http_server).count("model-00001-of-00002.safetensors") == 1


def test_pytorch_bin_fallback_and_revision(http_server):
    serve(http_server, {"config.json": CONFIG, "pytorch_model.bin": WEIGHTS}, revision="v1.0")
    folder = snapshot_download(REPO, revision="v1.0", endpoint=http_server.url)
    assert folder.name == "v1.0" and (folder / "pytorch_model.bin").read_bytes() == WEIGHTS
    assert fetched(http_server)[:4] == ["config.json", "model.safetensors", "model.safetensors.index.json",
                                        "pytorch_model.bin"]


def test_missing_config_is_a_clear_error(http_server):
    serve(http_server, {"model.safetensors": WEIGHTS})
    with pytest.raises(HubError, match=r"tiny-org/tiny-model .*no config\.json.*404"):
        snapshot_download(REPO, endpoint=http_server.url)


def test_missing_weights_is_a_clear_error(http_server):
    serve(http_server, {"config.json": CONFIG, "tokenizer.json": b"{}"})
    with pytest.raises(HubError, match=r"tiny-org/tiny-model .*none of the weight files model\.safetensors"):
        snapshot_download(REPO, endpoint=http_server.url)
    assert hub_cache_dir(REPO) / ".complete.json" not in list(hub_cache_dir(REPO).iterdir())


def test_missing_shard_is_a_clear_error(http_server):
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    serve(http_server, {"config.json": CONFIG, "model.safetensors.index.json": json.dumps(index).encode(),
                        "model-00001-of-00002.safetensors": b"first shard"})
    with pytest.raises(HubError, match=r"no model-00002-of-00002\.safetensors"):
        snapshot_download(REPO, endpoint=http_server.url)


def test_partial_file_is_resumed_with_a_range_request(http_server):
    serve(http_server, {"config.json": CONFIG, "model.safetensors": WEIGHTS})
    url_path = f"/{REPO}/resolve/main/model.safetensors"
    http_server.fail_after[url_path] = 3000  # the first GET of the weights dies after 3000 bytes
    folder = snapshot_download(REPO, endpoint=http_server.url)
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    weight_requests = [rng for path, rng, _ in http_server.requests if path == url_path]
    assert weight_requests == [None, "bytes=3000-"]


def test_leftover_part_file_from_an_interrupted_run_is_resumed(http_server):
    serve(http_server, {"config.json": CONFIG, "model.safetensors": WEIGHTS})
    folder = hub_cache_dir(REPO)
    folder.mkdir(parents=True)
    (folder / "model.safetensors.part").write_bytes(WEIGHTS[:1234])
    snapshot_download(REPO, endpoint=http_server.url)
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert ("/" + REPO + "/resolve/main/model.safetensors", "bytes=1234-", None) in http_server.requests


def test_second_call_uses_the_cache_without_requests(http_server, monkeypatch):
    serve(http_server, {"config.json": CONFIG, "model.safetensors": WEIGHTS})
    first = snapshot_download(REPO, endpoint=http_server.url)
    http_server.requests.clear()
    assert snapshot_download(REPO, endpoint=http_server.url) == first
    assert http_server.requests == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline mode is fine once cached
    assert snapshot_download(REPO, endpoint=http_server.url) == first
    assert http_server.requests == []


def test_incomplete_cache_is_completed(http_server):
    serve(http_server, {"config.json": CONFIG, "model.safetensors": WEIGHTS})
    folder = snapshot_download(REPO, endpoint=http_server.url)
    (folder / "model.safetensors").unlink()
    http_server.requests.clear()
    snapshot_download(REPO, endpoint=http_server.url)
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert "config.json" not in fetched(http_server)  # files already there are not fetched again


def test_offline_mode_without_cache_names_repo_and_path(http_server, monkeypatch):
    monkeypatch.setenv("DPO_OFFLINE", "1")
    with pytest.raises(HubError, match=r"tiny-org/tiny-model.*not in the cache at .*tiny-org--tiny-model"):
        snapshot_download(REPO, endpoint=http_server.url)
    assert http_server.requests == []


def test_unreachable_endpoint_says_machine_may_be_offline():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HubError, match=r"tiny-org/tiny-model.*may be offline"):
        snapshot_download(REPO, endpoint=f"http://127.0.0.1:{port}")


def test_token_and_endpoint_from_environment(http_server, monkeypatch):
    serve(http_server, {"config.json": CONFIG, "model.safetensors": WEIGHTS})
    monkeypatch.setenv("DPO_HF_ENDPOINT", http_server.url)
    monkeypatch.setenv("HF_TOKEN", "secret")
    snapshot_download(REPO)
    assert {auth for _, _, auth in http_server.requests} == {"Bearer secret"}


def test_cli_prints_the_local_folder(http_server, tmp_path, capsys):
    serve(http_server, {"config.json": CONFIG, "model.safetensors": WEIGHTS})
    os.environ["DPO_HF_ENDPOINT"] = http_server.url
    try:
        assert main(["download", REPO, "--cache-dir", str(tmp_path / "c")]) == 0
    finally:
        del os.environ["DPO_HF_ENDPOINT"]
    out = capsys.readouterr().out.strip()
    assert out == str(tmp_path / "c" / "hub" / "tiny-org--tiny-model" / "main")
    assert main(["download", "other/repo", "--cache-dir", str(tmp_path / "c")]) == 1
    assert "other/repo" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["a file", "under a file", "read-only", "invalid repo id", "missing repo",
                                  "unreachable endpoint"])
def test_cli_bad_input_is_one_line_and_writes_nothing(request, tmp_path, monkeypatch, capsys, case):
    """--cache-dir is checked before anything is fetched (from a dead endpoint: trying would be another
    error); a bad repo id or endpoint is one line naming it."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("DPO_HF_ENDPOINT", dead)
    repo, cache = REPO, tmp_path / "cache-dir"
    named = [repo, dead, "may be offline"]
    if case in OUTPUT_CASES:
        cache = bad_output_path(tmp_path, case, monkeypatch)
        named = [f"error: --cache-dir {cache}: "]  # refused by the check before any work, not by a failed write
    elif case == "invalid repo id":
        named = ["invalid Hugging Face repo id 'org/../x'"]
        repo = "org/../x"
    elif case == "missing repo":
        server = request.getfixturevalue("http_server")
        serve(server, {"config.json": CONFIG, "model.safetensors": WEIGHTS})
        monkeypatch.setenv("DPO_HF_ENDPOINT", server.url)
        repo = named[0] = "tiny-org/absent"
        named[1:] = ["has no config.json"]
    refused(main, ["download", repo, "--cache-dir", cache], capsys, tmp_path, *named)


def test_cli_module_entry_point(tmp_path):
    env = dict(os.environ, DPO_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "dpo.interop.hub", "download", "org/absent", "--cache-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 1 and "org/absent" in proc.stderr and "Traceback" not in proc.stderr


def test_load_pretrained_by_name_downloads_through_the_hub(http_server, monkeypatch, tmp_path):
    """load_pretrained("org/name") fetches the checkpoint from the (local) hub and loads the same weights."""
    torch = pytest.importorskip("torch")
    from dpo.interop.hf_checkpoint import load_pretrained, save_pretrained
    from dpo.model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, max_seq_len=32)).eval()
    save_pretrained(model, http_server.root / REPO / "resolve" / "main")
    monkeypatch.setenv("DPO_HF_ENDPOINT", http_server.url)
    loaded = load_pretrained(REPO).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    assert (hub_cache_dir(REPO) / "model.safetensors").is_file()
