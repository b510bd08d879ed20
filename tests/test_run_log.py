"""dpo/run_log.py: the FLOPs a step is credited with (tflops_per_second, mfu), counted by hand on tiny batches."""
import torch

from dpo import batching, lora
from dpo.model import GPT, GPTConfig
from dpo.reference_cache import ReferenceLogps
from dpo.reward_model import RewardModel
from dpo.run_log import batch_flops, step_flops
from helpers import tokenized_pair

CFG = GPTConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=16, max_seq_len=64)
BODY = 2 * (3 * 16 * 16 + 3 * 16 + 16 * 16 + 16 + 16 * 64 + 64 + 64 * 16 + 16 + 4 * 16) + 2 * 16  # blocks + final norm
HEAD, ATTENTION = 50 * 16, 4 * 2 * 2 * 8  # V·C; 4·L·H·D per token and key


def pairs():
    """Two pairs: prompts of 3 and 2 tokens, responses of 2 + 3 and 4 + 1 tokens."""
    return [tokenized_pair([1, 2, 3], [4, 5], [6, 7, 8], 0), tokenized_pair([9, 10], [11, 12, 13, 14], [15], 1)]


def test_the_body_on_real_tokens_and_the_head_on_scored_positions():
    model = GPT(CFG)
    assert model.num_params() - HEAD == BODY  # (the tied head counted once, as the lookup table it also is)
    shared = batching.collate_shared(pairs(), pad_id=0)  # blocks of 3+2+3 = 8 and 2+4+1 = 7 tokens, no padding
    scored = 2 + 3 + 4 + 1  # every response token, its first one predicted from the prompt's last position
    assert batch_flops(model, shared, backward=False) == 2 * BODY * 15 + ATTENTION * (8 ** 2 + 7 ** 2) + 2 * HEAD * scored
    assert batch_flops(model, shared, backward=True) == 3 * batch_flops(model, shared, backward=False)
    rows = batching.collate_preference(pairs(), pad_id=0)  # 4 rows padded to 6: the prompts twice, padding skipped
    assert batch_flops(model, rows, backward=False) == 2 * BODY * 20 + ATTENTION * 20 * 6 + 2 * HEAD * scored


def test_a_step_counts_the_reference_forward_only_when_it_is_a_model():
    model, batch = GPT(CFG), batching.collate_shared(pairs(), pad_id=0)
    policy = batch_flops(model, batch, backward=True)
    assert step_flops(model, None, batch) == step_flops(model, ReferenceLogps(torch.zeros(2), torch.zeros(2)), batch) \
        == policy
    assert step_flops(model, GPT(CFG), batch) == policy + policy / 3
    assert step_flops(model, lora.WithoutAdapters(model), batch) == policy + policy / 3


def test_a_reward_model_has_no_vocabulary_head_work():
    reward_model = RewardModel(GPT(CFG), 1, pad_id=0)
    batch = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.tensor([[1] * 5, [1] * 3 + [0] * 2])}
    assert batch_flops(reward_model, batch, backward=False) == 2 * BODY * 8 + ATTENTION * 8 * 5
