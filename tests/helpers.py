"""Small helpers shared by several test modules (fixtures live in conftest.py)."""
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


def byte_tokenizer(eos_id: int = 256):
    """A real dpo Tokenizer (byte-level BPE, no merges): one id per UTF-8 byte, "<|endoftext|>" = eos_id."""
    from dpo.interop.bpe import bytes_to_unicode
    from dpo.tokenizer import Tokenizer
    b2u = bytes_to_unicode()
    return Tokenizer.from_bpe({b2u[i]: i for i in range(256)}, [], "gpt2", {"<|endoftext|>": eos_id},
                              eos_token="<|endoftext|>")
