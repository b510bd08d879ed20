"""dpo/files.py: a file or folder is replaced whole or not at all, and a failed write leaves the old one and
no temporary behind."""
import pytest

from dpo.files import atomic_dir, atomic_path, atomic_write


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
