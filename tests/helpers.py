"""Small helpers shared by several test modules (fixtures live in conftest.py)."""
import os
from pathlib import Path

import torch


def randomize_(model, seed=0):
    """Make every tensor random, in place (HF init leaves biases 0 and norm gains 1, which would hide
    weight-mapping errors); norm gains stay near 1. Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            is_norm_gain = name.endswith("weight") and ("norm" in name or ".ln" in name)
            p.copy_(1 + noise if is_norm_gain else noise * (3 if p.dim() == 2 else 1))
    return model.eval()


def tokenized_pair(prompt: list[int], chosen: list[int], rejected: list[int], index: int) -> dict:
    """A tokenized preference pair as batching.tokenize_dataset gives it (the prompt's labels -100), ready for
    collate_preference / collate_shared."""
    return {"prompt_input_ids": prompt, "chosen_input_ids": prompt + chosen, "rejected_input_ids": prompt + rejected,
            "chosen_labels": [-100] * len(prompt) + chosen, "rejected_labels": [-100] * len(prompt) + rejected,
            "index": index}


class ByteTokenizer:
    """Stand-in for dpo.tokenizer.Tokenizer: ids are UTF-8 bytes, "<|endoftext|>" is the EOS id 256."""
    eos_id = bos_id = 256
    pad_id = None
    vocab_size = 257

    def encode(self, text):
        parts = [list(p.encode()) for p in text.split("<|endoftext|>")]
        return [i for k, p in enumerate(parts) for i in ([256] if k else []) + p]

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", "replace")

    def pad_id_or_eos(self):
        return self.eos_id


# Tiny models of every family, as transformers builds them (tests/test_model.py, tests/test_generation.py).
V, EOS, PAD = 128, 1, 0
FAMILIES = ["gpt2", "neox", "neox_sequential", "gptj", "llama", "llama3_tied", "qwen3", "smollm3"]


def hf_config(family: str):
    """Tiny random configs that exercise each family's peculiarities (partial / interleaved rotary,
    parallel residual, GQA, llama3 rope scaling, tied and untied heads, Qwen3's q/k norms with a head_dim
    other than hidden_size / heads, SmolLM3's NoPE layer: the 4th by transformers' default)."""
    import transformers as T
    ids = dict(vocab_size=V, bos_token_id=2, eos_token_id=EOS, pad_token_id=PAD)
    if family == "gpt2":
        return T.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, resid_pdrop=0, embd_pdrop=0,
                            attn_pdrop=0, **ids)
    if family == "neox":
        return T.GPTNeoXConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64,
                               rotary_pct=0.5, use_parallel_residual=True, max_position_embeddings=64, **ids)
    if family == "neox_sequential":
        return T.GPTNeoXConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64,
                               rotary_pct=0.25, use_parallel_residual=False, rotary_emb_base=500.0,
                               max_position_embeddings=64, **ids)
    if family == "gptj":
        return T.GPTJConfig(n_layer=2, n_head=4, n_embd=64, rotary_dim=8, n_positions=64, **ids)
    if family == "llama":
        return T.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                             intermediate_size=48, max_position_embeddings=64, **ids)
    if family == "llama3_tied":
        return T.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, hidden_size=32,
                             intermediate_size=48, max_position_embeddings=64, tie_word_embeddings=True,
                             attention_bias=True, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 16, "rope_theta": 10000.0}, **ids)
    if family == "qwen3":
        return T.Qwen3Config(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                             head_dim=16, intermediate_size=48, max_position_embeddings=64, **ids)
    if family == "smollm3":
        return T.SmolLM3Config(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                               intermediate_size=48, max_position_embeddings=64,
                               rope_parameters={"rope_type": "default", "rope_theta": 100.0}, **ids)
    raise KeyError(family)


def byte_tokenizer(eos_id: int = 256):
    """A real dpo Tokenizer (byte-level BPE, no merges): one id per UTF-8 byte, "<|endoftext|>" = eos_id."""
    from dpo.interop.bpe import bytes_to_unicode
    from dpo.tokenizer import Tokenizer
    b2u = bytes_to_unicode()
    return Tokenizer.from_bpe({b2u[i]: i for i in range(256)}, [], "gpt2", {"<|endoftext|>": eos_id},
                              eos_token="<|endoftext|>")


def chatml_tokenizer():
    """A real dpo Tokenizer: byte-level ids plus ChatML's special tokens (<|im_start|> 257, <|im_end|> 258,
    the EOS), without a chat template of its own."""
    from dpo.interop.bpe import bytes_to_unicode
    from dpo.tokenizer import Tokenizer
    b2u = bytes_to_unicode()
    return Tokenizer.from_bpe({b2u[i]: i for i in range(256)}, [], "gpt2",
                              {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}, eos_token="<|im_end|>")


# ----- bad output paths (tests of every command that writes) -------------------------------------------

OUTPUT_CASES = ("a folder", "a file", "under a file", "read-only")


def bad_output_path(root: Path, case: str, monkeypatch) -> Path:
    """An output path under `root` that no command may write: an existing folder where a file goes, a file
    where a folder goes, a path under a file, one in a folder this process may not write in (mode 555, and
    os.access says so even to root)."""
    if case == "a folder":
        (root / "folder").mkdir(parents=True)
        return root / "folder"
    if case in ("a file", "under a file"):
        (root / "file").write_text("x")
        return root / "file" if case == "a file" else root / "file" / "out"
    folder = root / "read-only"
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: access(p, mode, **kw) and not (
        Path(p) == folder and mode & os.W_OK))
    return folder / "out"


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def refused(main, argv: list, capsys, root: Path, *named) -> str:
    """Run a command's main(argv) on a bad input: exit status 1, exactly one line on stderr, `error: ...`,
    no traceback, naming each of `named`, and nothing under `root` written, changed or removed (no .tmp,
    .part or half a result). Returns the line."""
    capsys.readouterr()
    before = _tree(root)
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert all(str(name) in err for name in named), (named, err)
    assert _tree(root) == before
    return err.strip()


def write_toy_reward_model_config(path: Path, max_length: int) -> Path:
    """A train.py config of a tiny Bradley–Terry reward model on CPU (the experiment drivers' smoke tests)."""
    path.write_text(f"""
data: {{format: preference_jsonl, eval_examples: 8, max_length: {max_length}}}
loss: {{name: reward_model}}
train: {{epochs: 1, max_examples: 16, batch_size: 8, micro_batch_size: 8, optimizer: adamw, lr: 1.0e-3,
        warmup_steps: 0, log_every: 100, device: cpu}}
wandb: {{mode: disabled}}
""")
    return path
