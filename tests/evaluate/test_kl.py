"""dpo/evaluate/kl.py: KL of a model with itself is 0; both estimates equal a hand computation with explicit
softmax loops; padding, batching and the order of samples change nothing."""
import math

import pytest
import torch

from dpo.evaluate.kl import sequence_kl
from dpo.generation import generate
from dpo.model import GPT, GPTConfig

V = 11


def tiny(seed: int) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=V, n_layer=1, n_head=2, n_embd=8, max_seq_len=32, eos_id=V - 1))
    with torch.no_grad():
        model.wte.weight.normal_(0, 1.0)
    return model.eval()


PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [2, 2]]
COMPLETIONS = [[3, 4, V - 1], [7, 7, 1, 0, 2, 5], [6], []]


def by_hand(policy, reference, prompt, completion):
    """Σ_t Σ_v p_v (log p_v − log q_v) and Σ_t log p[y_t] − log q[y_t], softmax written out in Python."""
    seq = torch.tensor([prompt + completion])
    with torch.no_grad():
        zp, zq = policy(seq)[0].tolist(), reference(seq)[0].tolist()
    exact = sampled = 0.0
    for t, y in enumerate(completion):
        pos = len(prompt) + t - 1  # the logits at pos predict the token at pos + 1
        log_p = [z - math.log(sum(math.exp(w) for w in zp[pos])) for z in zp[pos]]
        log_q = [z - math.log(sum(math.exp(w) for w in zq[pos])) for z in zq[pos]]
        exact += sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q))
        sampled += log_p[y] - log_q[y]
    return exact, sampled


def test_kl_of_a_model_with_itself_is_zero():
    model = tiny(0)
    out = sequence_kl(model, model, PROMPTS, COMPLETIONS, batch_size=3)
    assert out["kl_exact"].abs().max() < 1e-6 and out["kl_sampled"].abs().max() < 1e-6
    assert out["n_tokens"].tolist() == [3, 6, 1, 0]
    assert torch.equal(out["policy_logps"], out["reference_logps"]) and (out["policy_logps"][:3] < 0).all()


def test_kl_matches_hand_computation():
    policy, reference = tiny(1), tiny(2)
    out = sequence_kl(policy, reference, PROMPTS, COMPLETIONS, batch_size=2, pad_id=0)
    for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
        exact, sampled = by_hand(policy, reference, p, c)
        assert out["kl_exact"][i].item() == pytest.approx(exact, abs=1e-5)
        assert out["kl_sampled"][i].item() == pytest.approx(sampled, abs=1e-5)
    assert (out["kl_exact"][:3] > 0).all() and out["kl_exact"][3] == 0 and out["kl_sampled"][3] == 0


def test_batching_and_padding_change_nothing():
    policy, reference = tiny(1), tiny(2)
    together = sequence_kl(policy, reference, PROMPTS, COMPLETIONS, batch_size=4, pad_id=V - 1)
    for i in range(len(PROMPTS)):
        alone = sequence_kl(policy, reference, [PROMPTS[i]], [COMPLETIONS[i]], batch_size=1)
        for key in ("kl_exact", "kl_sampled", "policy_logps"):
            assert together[key][i].item() == pytest.approx(alone[key][0].item(), abs=1e-5)
    chunked = sequence_kl(policy, reference, PROMPTS, COMPLETIONS, batch_size=4, chunk_size=2)
    assert torch.allclose(chunked["kl_exact"], together["kl_exact"], atol=1e-6)


def test_sampled_estimate_is_unbiased_for_the_sequence_kl():
    """On many samples from the policy (T = 1, ending at the model's EOS or after 4 tokens), the mean sampled
    estimate and the mean exact per-token sum agree (both estimate the same sequence KL), and the exact one
    has the smaller spread."""
    policy, reference = tiny(1), tiny(2)
    gen = torch.Generator().manual_seed(0)
    completions = generate(policy, NoEosTokenizer(), [[1, 2]] * 400, max_new_tokens=4, temperature=1.0, generator=gen)
    assert {len(c) for c in completions} != {4}  # some samples end at the EOS
    kl = sequence_kl(policy, reference, [[1, 2]] * 400, completions, batch_size=100)
    exact, sampled = kl["kl_exact"], kl["kl_sampled"]
    assert abs(exact.mean() - sampled.mean()) < 4 * sampled.std() / 20
    assert exact.std() < sampled.std()


class NoEosTokenizer:
    """What generate asks of a tokenizer: no EOS of its own (the model's config has one), pad id 0."""
    eos_id = None

    def pad_id_or_eos(self):
        return 0


def test_vocabulary_mismatch_is_an_error():
    other = GPT(GPTConfig(vocab_size=V + 1, n_layer=1, n_head=2, n_embd=8, max_seq_len=32))
    with pytest.raises(ValueError, match="vocabularies differ"):
        sequence_kl(tiny(0), other, PROMPTS, COMPLETIONS)
