"""dpo/files.py: a file or folder is replaced whole or not at all, and a failed write leaves the old one and
no temporary behind; an output path is checked before any work (every command's own test of that uses
helpers.bad_output_path and helpers.refused)."""
from pathlib import Path

import pytest

from dpo.errors import UserError
from dpo.files import atomic_dir, atomic_path, atomic_write, check_writable
from helpers import OUTPUT_CASES, bad_output_path

def test_atomic_write_replaces_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_write(path, "old")
    atomic_write(path, b"new")
    assert path.read_text() == "new" and sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_dir_replaces_a_folder_whole(tmp_path):
    out = tmp_path / "final"
    with atomic_dir(out) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "y").write_text("2")
            raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in out.iterdir()) == ["x"]  # the old folder, untouched
    with atomic_dir(out) as tmp:  # the next call clears the leftover .tmp and replaces the folder
        (tmp / "z").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["z"] and not (tmp_path / "final.tmp").exists()


@pytest.mark.parametrize("case", OUTPUT_CASES)
@pytest.mark.parametrize("folder", [False, True], ids=["file", "folder"])
def test_check_writable_refuses_before_writing(tmp_path, monkeypatch, case, folder):
    path = bad_output_path(tmp_path, case, monkeypatch)
    expected = {"a folder": "is a folder; expected a file path", "a file": "is a file; expected a folder",
                "under a file": f"{tmp_path / 'file'} is a file, not a folder",
                "read-only": f"cannot write in folder {tmp_path / 'read-only'}"}[case]
    if (case, folder) in (("a folder", True), ("a file", False)):  # what is expected there
        assert check_writable(path, "--out", folder=folder) == path
        return
    with pytest.raises(UserError) as e:
        check_writable(path, "--out", folder=folder)
    assert str(e.value).startswith(f"--out {path}: ") and expected in str(e.value)


def test_check_writable_accepts_new_paths_and_creates_nothing(tmp_path):
    assert check_writable(tmp_path / "a" / "b" / "c.json", "--out") == tmp_path / "a" / "b" / "c.json"
    assert check_writable(str(tmp_path / "new"), "--out", folder=True) == tmp_path / "new"
    assert check_writable("relative.json", "--out") == Path("relative.json")
    assert list(tmp_path.iterdir()) == []
