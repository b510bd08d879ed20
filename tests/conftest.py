"""Shared test fixtures: the ../shared/data folder (skips when absent) and a local HTTP file server."""
import http.server
import os
import threading
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data: real text for tests. Present in CI, absent in a user's clone (then: skip)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


class _RangeFileHandler(http.server.BaseHTTPRequestHandler):
    """Serves files under `server.root` with HTTP Range support (resumed downloads need it).

    `server.fail_after`: {url path: n} sends only the first n bytes of that file and then drops the
    connection, once, to simulate a broken download. `server.requests` records (path, Range header)."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head: bool):
        srv = self.server
        url_path = self.path.split("?", 1)[0]
        srv.requests.append((url_path, self.headers.get("Range"), self.headers.get("Authorization")))
        path = srv.root / url_path.lstrip("/")
        if not path.is_file():
            self.send_error(404, "not found")
            return
        data = path.read_bytes()
        start = 0
        status = 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[len("bytes="):].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if head:
            return
        cut = srv.fail_after.pop(url_path, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            # Shut the socket so the client sees a short read, not a hang.
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture
def http_server(tmp_path):
    """A file server on 127.0.0.1. Yields an object with .url, .root (a folder to put files in),
    .fail_after (dict path -> bytes to send before dropping the connection) and .requests."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeFileHandler)
    server.root = root
    server.fail_after = {}
    server.requests = []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _no_internet_env(monkeypatch, tmp_path):
    """Tests never reach the internet and never write into the user's caches."""
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    os.environ.pop("HF_ENDPOINT", None)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread, and do not fight other processes for the 2 cores."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
