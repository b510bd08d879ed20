"""Our safetensors reader/writer against the reference `safetensors` package (test-only dependency)."""
import pytest
import torch

from dpo.interop.safetensors import SafetensorsError, load_file, save_file

st = pytest.importorskip("safetensors.torch")


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "w.f32": torch.randn(3, 5, generator=g),
        "w.bf16": torch.randn(4, 2, generator=g).to(torch.bfloat16),
        "w.f16": torch.randn(7, generator=g).to(torch.float16),
        "ids.i64": torch.arange(6).reshape(2, 3),
        "mask.bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


def test_we_write_what_safetensors_reads(tmp_path):
    tensors = _tensors()
    save_file(tensors, tmp_path / "m.safetensors", metadata={"format": "pt"})
    theirs = st.load_file(str(tmp_path / "m.safetensors"))
    assert theirs.keys() == tensors.keys()
    for k, t in tensors.items():
        assert theirs[k].dtype == t.dtype and theirs[k].shape == t.shape and torch.equal(theirs[k], t), k
    with st.safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]  # no temporary file left


def test_we_read_what_safetensors_writes(tmp_path):
    tensors = _tensors()
    st.save_file(tensors, str(tmp_path / "m.safetensors"))
    ours = load_file(tmp_path / "m.safetensors")
    for k, t in tensors.items():
        assert ours[k].dtype == t.dtype and torch.equal(ours[k], t), k
    only = load_file(tmp_path / "m.safetensors", dtype=torch.bfloat16, names=["w.f32", "ids.i64"])
    assert set(only) == {"w.f32", "ids.i64"}
    assert only["w.f32"].dtype == torch.bfloat16 and only["ids.i64"].dtype == torch.int64


def test_truncated_file_is_a_clear_error(tmp_path):
    save_file({"w": torch.randn(64, 64)}, tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    with pytest.raises(SafetensorsError, match=r"cut.safetensors: tensor 'w' ends past the end"):
        load_file(tmp_path / "cut.safetensors")


def test_a_failed_save_keeps_the_old_file(tmp_path):
    save_file({"w": torch.ones(3)}, tmp_path / "m.safetensors")
    with pytest.raises(NotImplementedError):  # a meta tensor has no data to write: fails mid-file
        save_file({"a": torch.zeros(2), "w": torch.empty(3, device="meta")}, tmp_path / "m.safetensors")
    assert torch.equal(load_file(tmp_path / "m.safetensors")["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # and no temporary file
