"""dpo/evaluate/rewards.py: one score(prompts, completions) interface over our classifier and reward model, the
transformers adapter (label picked by name, clear error without transformers), and ROUGE-L."""
import itertools
import random
import sys

import pytest
import torch

from dpo.evaluate import rewards
from dpo import reward_model as rm
from dpo.model import GPT, GPTConfig
from helpers import byte_tokenizer

EOS = 256
PROMPTS = ["The film", "I watched it and", "Plot:", "The film"]
COMPLETIONS = [" was great.", " hated every minute of it", " meh", ""]


def saved_reward_model(path, n_outputs: int, seed: int = 0) -> rm.RewardModel:
    torch.manual_seed(seed)
    model = rm.RewardModel(GPT(GPTConfig(vocab_size=EOS + 1, n_layer=1, n_head=2, n_embd=16, max_seq_len=64,
                                         eos_id=EOS)), n_outputs)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    model.save_pretrained(path, tokenizer=byte_tokenizer())
    return model.eval()


def test_classifier_scorer_is_p_positive_of_prompt_plus_completion(tmp_path):
    model = saved_reward_model(tmp_path / "clf", 2)
    score = rewards.load_scorer(f"classifier:{tmp_path / 'clf'}")
    got = score(PROMPTS, COMPLETIONS)
    tok = byte_tokenizer()
    with torch.no_grad():
        expected = [model(torch.tensor([tok.encode(p + c)])).softmax(-1)[0, 1].item()
                    for p, c in zip(PROMPTS, COMPLETIONS)]
    assert got.dtype == torch.float32 and got.shape == (4,)
    assert got.tolist() == pytest.approx(expected, abs=1e-5)
    assert got[0] != got[3]  # same prompt, other completion
    with pytest.raises(rewards.RewardError, match="is a classifier model, not a bradley_terry"):
        rewards.load_scorer(f"reward_model:{tmp_path / 'clf'}")


def test_reward_model_scorer_tokenizes_prompt_and_completion_apart(tmp_path):
    model = saved_reward_model(tmp_path / "rm", 1)
    score = rewards.reward_model_scorer(tmp_path / "rm", batch_size=3)
    tok = byte_tokenizer()
    with torch.no_grad():
        expected = [model(torch.tensor([tok.encode(p) + tok.encode(c)]))[0, 0].item()
                    for p, c in zip(PROMPTS, COMPLETIONS)]
    assert score(PROMPTS, COMPLETIONS).tolist() == pytest.approx(expected, abs=1e-5)
    # one at a time = in a batch
    assert [score([p], [c]).item() for p, c in zip(PROMPTS, COMPLETIONS)] == pytest.approx(expected, abs=1e-5)


def test_load_scorer_errors(tmp_path):
    with pytest.raises(rewards.RewardError, match="unknown reward 'sentiment:x'"):
        rewards.load_scorer("sentiment:x")
    with pytest.raises(rewards.RewardError, match="is not a folder"):
        rewards.load_scorer(f"classifier:{tmp_path / 'missing'}")
    with pytest.raises(rewards.RewardError, match="needs a path or name"):
        rewards.load_scorer("hf:")
    assert rewards.load_scorer("quickstart")(["x"], [" was great, superb and dull."]).tolist() == \
        pytest.approx([2 / 3])


# ------------------------------------------------------------------------------- transformers adapter

@pytest.fixture(scope="module")
def hf_classifier(tmp_path_factory):
    """A tiny transformers GPT-2 classifier whose label 0 is POSITIVE (the opposite of the usual order)."""
    transformers = pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("hf") / "clf"
    byte_tokenizer().save_pretrained(path)
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"),
                                                  eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    hf_tok.save_pretrained(path)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=EOS + 1, n_layer=1, n_head=2, n_embd=16, n_positions=64,
                                     num_labels=2, id2label={0: "POSITIVE", 1: "NEGATIVE"},
                                     label2id={"POSITIVE": 0, "NEGATIVE": 1}, pad_token_id=EOS,
                                     bos_token_id=EOS, eos_token_id=EOS)
    model = transformers.GPT2ForSequenceClassification(config).eval()
    with torch.no_grad():
        model.score.weight.normal_(0, 2.0)
    model.save_pretrained(path)
    return path, model, hf_tok


def test_hf_adapter_picks_the_label_by_name(hf_classifier):
    path, model, tok = hf_classifier
    with torch.no_grad():
        probs = torch.cat([model(**tok(p + c, return_tensors="pt")).logits.softmax(-1)
                           for p, c in zip(PROMPTS[:3], COMPLETIONS[:3])])
    assert (probs[:, 0] - probs[:, 1]).abs().min() > 1e-3  # the two labels tell apart
    positive = rewards.load_scorer(f"hf:{path}")(PROMPTS[:3], COMPLETIONS[:3])
    assert positive.tolist() == pytest.approx(probs[:, 0].tolist(), abs=1e-5)
    negative = rewards.load_scorer(f"hf:{path}@negative")(PROMPTS[:3], COMPLETIONS[:3])
    assert negative.tolist() == pytest.approx(probs[:, 1].tolist(), abs=1e-5)
    with pytest.raises(rewards.RewardError, match=r"no single label named 'neutral'.*POSITIVE"):
        rewards.load_scorer(f"hf:{path}@neutral")


def test_hf_adapter_without_transformers_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(rewards.RewardError, match=r"needs the transformers package \(pip install transformers\)"):
        rewards.load_scorer("hf:siebert/sentiment-roberta-large-english")


def test_vader_judge_scores_prompt_and_completion_and_needs_its_package(monkeypatch):
    pytest.importorskip("vaderSentiment")
    judge = rewards.load_scorer("vader")
    scores = judge(["the film was", "the film was", "the film was", "a"],
                   [" a moving , wonderful masterpiece .", " dull , awful and a waste of time .",
                    " released in 1998 and runs 104 minutes .", " great"])
    assert scores.dtype == torch.float32 and scores.shape == (4,)
    assert scores[0] > 0.5 and scores[1] < -0.5 and scores[2] == 0  # sentiment words move it; facts do not
    assert judge([""], ["a great"])[0] == scores[3]  # the judge reads prompt + completion as one text
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    with pytest.raises(rewards.RewardError, match=r"needs the vaderSentiment package \(pip install vaderSentiment"):
        rewards.load_scorer("vader")


def test_our_classifier_also_picks_positive_by_name(tmp_path):
    """A classifier folder whose id2label puts POSITIVE first: rewards use that output, not index 1."""
    import json
    model = saved_reward_model(tmp_path, 2)
    config = json.loads((tmp_path / "config.json").read_text())
    config["id2label"] = {"0": "POSITIVE", "1": "NEGATIVE"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = rm.load_reward_model(tmp_path)
    ids = torch.tensor([[72, 105]])
    assert loaded.rewards(ids).item() == pytest.approx(model(ids).softmax(-1)[0, 0].item(), abs=1e-6)


# ------------------------------------------------------------------------------- ROUGE-L

def brute_force_lcs(a, b) -> int:
    for k in range(min(len(a), len(b)), 0, -1):
        subsequences = set(itertools.combinations(b, k))
        if any(c in subsequences for c in itertools.combinations(a, k)):
            return k
    return 0


def test_lcs_against_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        b = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        assert rewards.lcs_length(a, b) == brute_force_lcs(a, b)


def test_rouge_l_by_hand():
    # LCS "the cat on the mat" = 5 of 6 words on each side: P = R = F = 5/6
    assert rewards.rouge_l("The cat sat on the mat.", "the cat lay on the mat") == pytest.approx(5 / 6)
    # candidate 3 words, reference 6, LCS 3: P = 1, R = 1/2, F = 2/3
    assert rewards.rouge_l("cat the mat", "the cat sat on the mat") == pytest.approx(2 / 3)
    assert rewards.rouge_l("", "anything") == 0.0 and rewards.rouge_l("Same, words!", "same words") == 1.0
    score = rewards.rouge_l_scorer({"p": "the cat sat"})
    assert score(["p", "p"], ["the cat sat", "dog"]).tolist() == [1.0, 0.0]
    with pytest.raises(rewards.RewardError, match="no reference for prompt 'q'"):
        score(["q"], ["x"])
