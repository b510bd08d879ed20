"""dpo/interop/download.py against a local HTTP server: plain, resumed after a dropped connection, and offline."""
import socket

import pytest

from dpo.interop.download import DownloadError, download


def test_download_and_resume_after_dropped_connection(http_server, tmp_path):
    payload = bytes(range(256)) * 4000  # ~1 MB
    (http_server.root / "f.bin").write_bytes(payload)
    http_server.fail_after["/f.bin"] = 300_000  # first response stops after 300 kB
    dest = download(f"{http_server.url}/f.bin", tmp_path / "out" / "f.bin", expected_size=len(payload))
    assert dest.read_bytes() == payload
    ranges = [r for path, r, _ in http_server.requests if path == "/f.bin"]
    assert ranges == [None, "bytes=300000-"]
    assert not (tmp_path / "out" / "f.bin.part").exists()
    # A complete file is trusted: no new request.
    download(f"{http_server.url}/f.bin", dest, expected_size=len(payload))
    assert len(http_server.requests) == 2


def test_existing_partial_file_is_resumed(http_server, tmp_path):
    payload = b"abcdefghij" * 1000
    (http_server.root / "g.bin").write_bytes(payload)
    (tmp_path / "g.bin.part").write_bytes(payload[:1234])
    download(f"{http_server.url}/g.bin", tmp_path / "g.bin")
    assert (tmp_path / "g.bin").read_bytes() == payload
    assert http_server.requests[0][1] == "bytes=1234-"


def test_404_and_offline_are_clear_errors(http_server, tmp_path):
    with pytest.raises(DownloadError, match=r"/missing.bin: HTTP 404") as e:
        download(f"{http_server.url}/missing.bin", tmp_path / "m.bin")
    assert e.value.status == 404
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot connect.*offline") as e:
        download(f"http://127.0.0.1:{port}/x.bin", tmp_path / "x.bin")
    assert e.value.status is None
    assert not (tmp_path / "x.bin").exists()


def test_wrong_size_is_rejected(http_server, tmp_path):
    (http_server.root / "h.bin").write_bytes(b"x" * 100)
    with pytest.raises(DownloadError, match="server reports 100 bytes, expected 99"):
        download(f"{http_server.url}/h.bin", tmp_path / "h.bin", expected_size=99)
    assert not (tmp_path / "h.bin").exists()
