"""dpo/reward_model.py: the head reads the last real token (any padding side), losses by hand, step 0 at
ln 2, save/load round trip, and parity with transformers' *ForSequenceClassification both ways."""
import json
import math

import pytest
import torch

from dpo import reward_model as rm
from dpo.model import GPT, GPTConfig
from dpo.tokenizer import Tokenizer
from helpers import ByteTokenizer, byte_tokenizer

EOS = 256


def backbone(family: str = "gpt2", seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    if family == "gpt2":
        cfg = GPTConfig(vocab_size=EOS + 1, n_layer=2, n_head=2, n_embd=16, max_seq_len=64, eos_id=EOS)
    else:  # llama: RMSNorm, rotary, GQA, untied head (dropped by the reward model)
        cfg = GPTConfig(vocab_size=EOS + 1, n_layer=2, n_head=4, n_kv_head=2, n_embd=16, max_seq_len=64,
                        position="rotary", norm="rmsnorm", activation="silu", gated_mlp=True, qkv_bias=False,
                        attn_out_bias=False, mlp_bias=False, tie_embeddings=False, eos_id=EOS)
    return GPT(cfg)


def random_model(family="gpt2", n_outputs=2, seed=0) -> rm.RewardModel:
    model = rm.RewardModel(backbone(family, seed), n_outputs, pad_id=EOS)
    with torch.no_grad():
        for p in model.parameters():  # biases and norms random too: a mapping error cannot hide
            p.add_(torch.randn_like(p) * 0.1)
        model.score.weight.normal_(0, 1.0)
    return model.eval()


SEQS = [[72, 101, 108, 108, 111], [84, 104], [65, 32, 108, 111, 110, 103, 101, 114, 32, 111, 110, 101]]


def padded(seqs, left: bool):
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), EOS)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        sl = slice(T - len(s), T) if left else slice(0, len(s))
        ids[i, sl], mask[i, sl] = torch.tensor(s), 1
    return ids, mask


def test_last_token_index():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 0, 0]])
    assert rm.last_token_index(mask).tolist() == [1, 3, 3, 1]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_scores_do_not_depend_on_padding(family):
    model = random_model(family)
    alone = torch.cat([model(torch.tensor([s])) for s in SEQS])
    for left in (False, True):
        assert torch.allclose(model(*padded(SEQS, left)), alone, atol=1e-5)


def test_step0_losses_are_ln2_and_losses_match_hand_formulas():
    model = rm.RewardModel(backbone(), n_outputs=1)
    ids, mask = padded(SEQS, left=False)
    r = model(ids, mask)[:, 0]
    assert torch.equal(r, torch.zeros(3))
    assert torch.allclose(rm.bradley_terry_loss(r, r.flip(0)), torch.full((3,), math.log(2)))
    clf = rm.RewardModel(backbone(), n_outputs=2)
    assert torch.allclose(clf.rewards(ids, mask), torch.full((3,), 0.5))
    chosen, rejected = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 0.5])
    expected = [math.log(1 + math.exp(-(c - r))) for c, r in zip(chosen.tolist(), rejected.tolist())]
    assert rm.bradley_terry_loss(chosen, rejected).tolist() == pytest.approx(expected, abs=1e-6)
    logits, labels = torch.tensor([[2.0, -1.0], [0.3, 0.4]]), torch.tensor([1, 1])
    expected = [math.log(math.exp(2) + math.exp(-1)) + 1, math.log(math.exp(0.3) + math.exp(0.4)) - 0.4]
    assert rm.classification_loss(logits, labels).tolist() == pytest.approx(expected, abs=1e-6)
    metrics = rm.bradley_terry_metrics(chosen, rejected)
    assert metrics["rewards/accuracies"].tolist() == [1, 0, 0]  # strict >


def test_a_few_steps_separate_the_pairs():
    """Gradients reach the backbone and the head: the Bradley–Terry loss falls below ln 2."""
    tok = byte_tokenizer()
    pairs = [{"prompt": "Review:", "chosen": " good good", "rejected": " bad bad"},
             {"prompt": "Film:", "chosen": " great", "rejected": " awful"}]
    batch = rm.collate_reward_pairs(pairs, tok, max_length=32)
    model = rm.RewardModel(backbone(), n_outputs=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(10):
        chosen, rejected = model(batch["input_ids"], batch["attention_mask"])[:, 0].chunk(2)
        loss = rm.bradley_terry_loss(chosen, rejected).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3


def test_collation_has_no_eos_and_keeps_the_response():
    tok = byte_tokenizer()
    batch = rm.collate_classification([{"text": "great film", "label": 1}, {"text": "meh", "label": 0}], tok, 5)
    assert batch["input_ids"].tolist() == [tok.encode("great"), tok.encode("meh") + [EOS, EOS]]
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]] and batch["labels"].tolist() == [1, 0]
    pairs = rm.collate_reward_pairs([{"prompt": "abcdef", "chosen": "XY", "rejected": "Z"}], tok, max_length=5)
    assert [tok.decode(r[m.bool()]) for r, m in zip(pairs["input_ids"], pairs["attention_mask"])] == ["defXY", "abcdefZ"[-5:]]
    assert rm.pair_ids([1, 2], [3, 4, 5, 6], 3) == [3, 4, 5]


def test_collation_pads_with_the_tokenizers_pad_token_when_it_has_one():
    """The pad rule everywhere (tokenizer.pad_id_or_eos): the pad token, else EOS. Only the mask matters."""
    class PaddedByteTokenizer(ByteTokenizer):
        pad_id = EOS + 1

        def pad_id_or_eos(self):
            return self.pad_id

    tok = PaddedByteTokenizer()
    batch = rm.collate_classification([{"text": "great film", "label": 1}, {"text": "meh", "label": 0}], tok, 5)
    assert batch["input_ids"].tolist() == [tok.encode("great"), tok.encode("meh") + [EOS + 1] * 2]
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    pairs = rm.collate_reward_pairs([{"prompt": "ab", "chosen": "XYZ", "rejected": "W"}], tok, max_length=8)
    assert pairs["input_ids"].tolist() == [tok.encode("abXYZ"), tok.encode("abW") + [EOS + 1] * 2]
    assert pairs["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    # a batch scores each sequence as if it were alone, whatever sits in the padding
    model = random_model()
    alone = torch.cat([model(torch.tensor([tok.encode(t)])) for t in ("abXYZ", "abW")])
    ids = pairs["input_ids"].masked_fill(pairs["attention_mask"] == 0, 3)  # any in-vocabulary id
    assert torch.allclose(model(ids, pairs["attention_mask"]), alone, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_save_load_round_trip(family, tmp_path):
    model = random_model(family, n_outputs=1)
    model.save_pretrained(tmp_path / "rm", tokenizer=byte_tokenizer())
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config["num_labels"] == 1 and config["dpo_reward_kind"] == "bradley_terry"
    assert config["architectures"][0].endswith("ForSequenceClassification") and config["pad_token_id"] == EOS
    from dpo.interop.safetensors import read_header
    names = set(read_header(tmp_path / "rm" / "model.safetensors")[0]) - {"__metadata__"}
    assert "score.weight" in names and not any(n.startswith("lm_head") for n in names)
    loaded = rm.load_reward_model(tmp_path / "rm")
    assert loaded.kind == rm.BRADLEY_TERRY and rm.is_reward_model_dir(tmp_path / "rm")
    ids, mask = padded(SEQS, left=False)
    assert torch.equal(loaded(ids, mask), model(ids, mask))
    assert Tokenizer.from_pretrained(tmp_path / "rm").eos_id == EOS


def test_load_errors(tmp_path):
    with pytest.raises(rm.RewardModelError, match="config.json: not found"):
        rm.load_reward_model(tmp_path)
    random_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_labels": 3, "id2label": None}))
    with pytest.raises(rm.RewardModelError, match="num_labels must be 1 .* or 2 .*got 3"):
        rm.load_reward_model(tmp_path)


# ------------------------------------------------------------------------------- transformers parity

@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_transformers_loads_our_classifier_with_the_same_scores(family, tmp_path):
    transformers = pytest.importorskip("transformers")
    model = random_model(family, n_outputs=2)
    model.save_pretrained(tmp_path)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert hf.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"}
    with torch.no_grad():
        for s in SEQS:  # unpadded single sequences
            assert torch.allclose(hf(torch.tensor([s])).logits, model(torch.tensor([s])), atol=1e-4)
        # a right-padded batch: transformers reads the last token that is not pad_token_id (= EOS here);
        # our inputs hold no EOS, so it reads the same token as we do (see the module docstring)
        ids, mask = padded(SEQS, left=False)
        assert torch.allclose(hf(input_ids=ids, attention_mask=mask).logits, model(ids, mask), atol=1e-4)


def test_we_load_a_transformers_classifier_with_the_same_scores(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=EOS + 1, n_layer=2, n_head=2, n_embd=16, n_positions=64,
                                     num_labels=2, pad_token_id=EOS, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    hf = transformers.GPT2ForSequenceClassification(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)
    ours = rm.load_reward_model(tmp_path)
    assert ours.kind == rm.CLASSIFIER
    ids, mask = padded(SEQS, left=False)
    with torch.no_grad():
        assert torch.allclose(ours(ids, mask), hf(input_ids=ids, attention_mask=mask).logits, atol=1e-4)
