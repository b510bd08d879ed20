"""dpo/losses.py: every loss against its closed form on hand-made numbers (written out with `math`, not with
the code under test), the step-0 invariant, the option plumbing, and parity with TRL's DPOTrainer on a tiny
GPT-2 for every loss both define."""
import math
import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from dpo.logprobs import chunked_token_logps, response_mask, sequence_logps, wpo_weights
from dpo.losses import LOSSES, f_divergence_scores, preference_loss, preference_metrics, uses_reference

# Three pairs. rho_w = [0.5, -0.5, 0.5], rho_l = [-1.0, 0.5, 0.5], h = [1.5, -1.0, 0.0]
PC = [-10.0, -12.5, -7.0]
PR = [-11.0, -9.5, -8.0]
RC = [-10.5, -12.0, -7.5]
RR = [-10.0, -10.0, -8.5]
LC = [5, 8, 3]
LR = [6, 4, 3]
BETA = 0.1


def logsig(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x):
    return 1 / (1 + math.exp(-x))


def rho(i):
    return PC[i] - RC[i], PR[i] - RR[i]


def run(name, **options):
    t = torch.tensor
    kwargs = dict(beta=BETA, chosen_lengths=t(LC), rejected_lengths=t(LR))
    kwargs.update(options)
    out = preference_loss(t(PC), t(PR), t(RC), t(RR), loss_type=name, **kwargs)
    assert out.shape == (3,)
    return out.tolist()


def close(actual, expected, tol=1e-6):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert abs(a - e) <= tol * max(1.0, abs(e)), (actual, expected)


def test_sigmoid_and_conservative():
    exp = [-logsig(BETA * (rho(i)[0] - rho(i)[1])) for i in range(3)]
    close(run("sigmoid"), exp)
    eps = 0.2
    exp = [-(1 - eps) * logsig(BETA * (rho(i)[0] - rho(i)[1])) - eps * logsig(-BETA * (rho(i)[0] - rho(i)[1]))
           for i in range(3)]
    close(run("sigmoid", label_smoothing=eps), exp)


def test_reference_free():
    exp = [-logsig(BETA * (PC[i] - PR[i])) for i in range(3)]
    close(run("reference_free"), exp)


def test_which_losses_need_a_reference_model():
    """The one switch: a reference is loaded exactly when some loss of the mix reads its log-probs."""
    assert uses_reference("sigmoid") and uses_reference("ipo") and uses_reference("sigmoid+sft")
    assert not uses_reference("reference_free") and not uses_reference("simpo")
    assert not uses_reference("sft+unlikelihood") and not uses_reference("preferred_ft")
    zeros = torch.zeros(3)
    for name in ("reference_free", "simpo", "sft", "sft_mean", "preferred_ft", "unlikelihood"):
        extra = {"policy_rejected_unlikelihood": torch.tensor([-1.0, -2.0, -0.5])} if name == "unlikelihood" else {}
        args = dict(beta=BETA, chosen_lengths=torch.tensor(LC), rejected_lengths=torch.tensor(LR), **extra)
        with_reference = preference_loss(torch.tensor(PC), torch.tensor(PR), torch.tensor(RC), torch.tensor(RR),
                                         loss_type=name, **args)
        without = preference_loss(torch.tensor(PC), torch.tensor(PR), zeros, zeros, loss_type=name, **args)
        assert torch.equal(with_reference, without), name  # it really does not read them


def test_ipo_averages_log_ratios_per_token():
    exp = [(rho(i)[0] / LC[i] - rho(i)[1] / LR[i] - 1 / (2 * BETA)) ** 2 for i in range(3)]
    close(run("ipo"), exp)


def test_hinge():
    close(run("hinge"), [max(0.0, 1 - BETA * (rho(i)[0] - rho(i)[1])) for i in range(3)])
    close(run("hinge", beta=2.0), [max(0.0, 1 - 2.0 * (rho(i)[0] - rho(i)[1])) for i in range(3)])


def test_robust():
    e = 0.1
    exp = []
    for i in range(3):
        x = BETA * (rho(i)[0] - rho(i)[1])
        exp.append((-(1 - e) * logsig(x) + e * logsig(-x)) / (1 - 2 * e))
    close(run("robust", label_smoothing=e), exp)
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        run("robust", label_smoothing=0.5)


def test_exo_pair():
    e = 1e-3
    exp = []
    for i in range(3):
        x = BETA * (rho(i)[0] - rho(i)[1])
        exp.append(sig(x) * (logsig(x) - math.log(1 - e)) + sig(-x) * (logsig(-x) - math.log(e)))
    close(run("exo_pair", label_smoothing=e), exp)
    with pytest.raises(ValueError, match="EXO"):
        run("exo_pair", label_smoothing=0.0)


def test_nca_pair():
    exp = []
    for i in range(3):
        rw, rl = BETA * rho(i)[0], BETA * rho(i)[1]
        exp.append(-logsig(rw) - 0.5 * logsig(-rw) - 0.5 * logsig(-rl))
    close(run("nca_pair"), exp)


def test_bco_pair_with_delta():
    d = 0.03
    exp = [-logsig(BETA * rho(i)[0] - d) - logsig(-(BETA * rho(i)[1] - d)) for i in range(3)]
    close(run("bco_pair", bco_delta=d), exp)


def test_sppo_hard():
    close(run("sppo_hard"), [(rho(i)[0] - 0.5 / BETA) ** 2 + (rho(i)[1] + 0.5 / BETA) ** 2 for i in range(3)])


def test_aot_sorts_over_the_batch():
    e = 0.1
    pol = sorted(PC[i] - PR[i] for i in range(3))
    ref = sorted(RC[i] - RR[i] for i in range(3))
    exp = [-(1 - e) * logsig(BETA * (p - r)) - e * logsig(-BETA * (p - r)) for p, r in zip(pol, ref)]
    close(run("aot", label_smoothing=e), exp)
    w = sorted(rho(i)[0] for i in range(3))
    lo = sorted(rho(i)[1] for i in range(3))
    exp = [-logsig(BETA * (a - b)) for a, b in zip(w, lo)]
    close(run("aot_unpaired"), exp)


def test_apo():
    close(run("apo_zero"), [(1 - sig(BETA * rho(i)[0])) + sig(BETA * rho(i)[1]) for i in range(3)])
    close(run("apo_down"), [sig(BETA * rho(i)[0]) + 1 - sig(BETA * (rho(i)[0] - rho(i)[1])) for i in range(3)])


def test_discopop():
    tau = 0.05
    exp = []
    for i in range(3):
        x = BETA * (rho(i)[0] - rho(i)[1])
        m = sig(x / tau)
        exp.append((1 - m) * -logsig(x) + m * math.exp(-x))
    close(run("discopop"), exp)
    x = BETA * (rho(0)[0] - rho(0)[1])
    m = sig(x / 0.5)
    close(run("discopop", discopop_tau=0.5)[:1], [(1 - m) * -logsig(x) + m * math.exp(-x)])


def test_length_normalised():
    close(run("sigmoid_norm"), [-logsig(BETA * (rho(i)[0] / LC[i] - rho(i)[1] / LR[i])) for i in range(3)])
    g = 0.3
    close(run("simpo", beta=2.0, simpo_gamma=g),
          [-logsig(2.0 * PC[i] / LC[i] - 2.0 * PR[i] / LR[i] - g) for i in range(3)])


def test_sft_family():
    close(run("sft"), [-x for x in PC])
    close(run("preferred_ft"), [-x for x in PC])
    close(run("sft_mean"), [-PC[i] / LC[i] for i in range(3)])
    u = [-0.7, -1.9, -0.05]
    close(run("unlikelihood", policy_rejected_unlikelihood=torch.tensor(u), unlikelihood_alpha=0.5),
          [-PC[i] - 0.5 * u[i] for i in range(3)])
    with pytest.raises(TypeError, match="policy_rejected_unlikelihood"):
        run("unlikelihood")


@pytest.mark.parametrize("name", ["sigmoid", "ipo", "hinge", "sigmoid_norm"])
def test_f_divergences(name):
    alpha = 0.3
    fs = {
        "forward_kl": lambda r: 1 - math.exp(-r),
        "js_divergence": lambda r: math.log(2) + logsig(r),
        "alpha_divergence": lambda r: (math.exp((alpha - 1) * r) - 1) / (alpha - 1),
    }
    for fdiv, f in fs.items():
        exp = []
        for i in range(3):
            sw, sl = f(rho(i)[0]), f(rho(i)[1])
            if name == "sigmoid":
                exp.append(-logsig(BETA * (sw - sl)))
            elif name == "hinge":
                exp.append(max(0.0, 1 - BETA * (sw - sl)))
            elif name == "ipo":
                exp.append((sw / LC[i] - sl / LR[i] - 1 / (2 * BETA)) ** 2)
            else:
                exp.append(-logsig(BETA * (sw / LC[i] - sl / LR[i])))
        close(run(name, f_divergence=fdiv, f_alpha=alpha), exp, tol=1e-5)
    close(run(name, f_divergence="alpha_divergence", f_alpha=1.0), run(name))


def test_f_divergence_scores_reverse_kl_is_identity():
    x = torch.tensor([-2.0, 0.0, 3.0])
    assert f_divergence_scores(x).tolist() == x.tolist()
    with pytest.raises(ValueError, match="unknown f_divergence"):
        f_divergence_scores(x, "hellinger")


def test_mix_rpo_and_wpo():
    mix = run("sigmoid+bco_pair+sft", loss_weights=[0.8, 0.2, 1.0])
    parts = [run("sigmoid"), run("bco_pair"), run("sft")]
    close(mix, [0.8 * a + 0.2 * b + c for a, b, c in zip(*parts)])
    close(run(["sigmoid", "sft"]), [a + c for a, c in zip(parts[0], parts[2])])
    close(run("sigmoid", rpo_alpha=0.5), [parts[0][i] + 0.5 * -PC[i] / LC[i] for i in range(3)])
    w = [0.5, 2.0, 1.0]
    close(run("sigmoid", rpo_alpha=0.5, wpo_weights=torch.tensor(w)),
          [w[i] * (parts[0][i] + 0.5 * -PC[i] / LC[i]) for i in range(3)])


def test_option_errors():
    with pytest.raises(ValueError, match="unknown loss 'dpo_typo'"):
        run("dpo_typo")
    with pytest.raises(ValueError, match="unknown loss option 'lable_smoothing'"):
        run("sigmoid", lable_smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing=0.1 has no effect on loss hinge"):
        run("hinge", label_smoothing=0.1)
    run("sigmoid+hinge", label_smoothing=0.1)  # an option one loss of the mix takes
    with pytest.raises(ValueError, match="no f-divergence form"):
        run("nca_pair", f_divergence="forward_kl")
    run("sigmoid+sft", f_divergence="forward_kl")  # sft has no reference term
    with pytest.raises(ValueError, match="loss_weights has 1 entries for 2 losses"):
        run("sigmoid+sft", loss_weights=[1.0])
    with pytest.raises(ValueError, match="aot"):
        run("aot", wpo_weights=torch.ones(3))
    with pytest.raises(ValueError, match="rpo_alpha needs chosen_lengths"):
        preference_loss(*(torch.zeros(3),) * 4, beta=0.1, rpo_alpha=1.0)


def test_every_loss_is_reachable_and_differentiable():
    for name in LOSSES:
        pc = torch.tensor(PC, requires_grad=True)
        extra = {"label_smoothing": 0.1} if name in {"exo_pair"} else {}
        if name == "unlikelihood":
            extra["policy_rejected_unlikelihood"] = torch.tensor([-1.0, -2.0, -0.5])
        loss = preference_loss(pc, torch.tensor(PR), torch.tensor(RC), torch.tensor(RR), loss_type=name, beta=BETA,
                               chosen_lengths=torch.tensor(LC), rejected_lengths=torch.tensor(LR), **extra)
        loss.mean().backward()
        assert torch.isfinite(loss).all() and pc.grad is not None, name


def test_step_zero_is_ln2_with_zero_rewards():
    """Policy == reference: the DPO loss is ln 2, rewards 0, accuracy 0 (strict >), margins 0."""
    logps_c = torch.tensor([-31.25, -7.5, -102.0, -3.0])
    logps_r = torch.tensor([-12.0, -9.0, -55.5, -3.0])
    n = torch.tensor([10, 3, 40, 1])
    losses = preference_loss(logps_c, logps_r, logps_c.clone(), logps_r.clone(), beta=0.1,
                             chosen_lengths=n, rejected_lengths=n)
    assert losses.tolist() == [pytest.approx(math.log(2), abs=1e-7)] * 4
    m = preference_metrics(logps_c, logps_r, logps_c.clone(), logps_r.clone(), losses, beta=0.1, chosen_lengths=n,
                           rejected_lengths=n, split="train")
    assert m["rewards_train/chosen"].tolist() == [0.0] * 4
    assert m["rewards_train/rejected"].tolist() == [0.0] * 4
    assert m["rewards_train/accuracies"].tolist() == [0.0] * 4
    assert m["rewards_train/margins"].tolist() == [0.0] * 4
    assert m["loss/train"].mean().item() == pytest.approx(0.6931472, abs=1e-7)


def test_metrics_names_and_values():
    t = torch.tensor
    losses = run("sigmoid")
    m = preference_metrics(t(PC), t(PR), t(RC), t(RR), t(losses), beta=BETA, chosen_lengths=t(LC),
                           rejected_lengths=t(LR), split="eval")
    assert sorted(m) == sorted([
        "rewards_eval/chosen", "rewards_eval/rejected", "rewards_eval/accuracies", "rewards_eval/margins",
        "logps_eval/chosen", "logps_eval/rejected", "loss/eval", "lengths_eval/chosen", "lengths_eval/rejected",
        "logratios_eval/chosen", "logratios_eval/rejected"])
    close(m["rewards_eval/chosen"].tolist(), [BETA * rho(i)[0] for i in range(3)])
    close(m["rewards_eval/rejected"].tolist(), [BETA * rho(i)[1] for i in range(3)])
    assert m["rewards_eval/accuracies"].tolist() == [1.0, 0.0, 0.0]  # h = 1.5, -1, 0 (a tie is not a win)
    close(m["rewards_eval/margins"].tolist(), [BETA * (rho(i)[0] - rho(i)[1]) for i in range(3)])
    close(m["logratios_eval/rejected"].tolist(), [rho(i)[1] for i in range(3)])
    assert m["lengths_eval/chosen"].tolist() == [5.0, 8.0, 3.0]
    assert all(v.shape == (3,) and not v.requires_grad for v in m.values())


# ----- parity with TRL ---------------------------------------------------------------------------------

VOCAB = 97


@pytest.fixture(scope="module")
def trl_setup():
    """A tiny random GPT-2 policy and a different one as reference, both patched with TRL's fused LM head,
    and TRL's own collated batch: chosen rows then rejected rows, right padded."""
    pytest.importorskip("trl")
    transformers = pytest.importorskip("transformers")
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import add_fused_lm_head

    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.2)
    torch.manual_seed(0)
    policy = transformers.GPT2LMHeadModel(config).eval()
    torch.manual_seed(1)
    reference = transformers.GPT2LMHeadModel(config).eval()
    add_fused_lm_head(policy, outputs=("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs"))
    add_fused_lm_head(reference)
    collate = DataCollatorForPreference(pad_token_id=0)
    varied = collate([  # chosen and rejected lengths all differ
        {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5, 6, 7], "rejected_ids": [8, 9]},
        {"prompt_ids": [10, 11], "chosen_ids": [12, 13, 14], "rejected_ids": [15, 16, 17, 18, 19]},
        {"prompt_ids": [20, 21, 22, 23], "chosen_ids": [24], "rejected_ids": [25, 26, 27]},
        {"prompt_ids": [30], "chosen_ids": [31, 32, 33, 34, 35, 36], "rejected_ids": [37, 38, 39, 40]},
    ])
    equal_chosen = collate([  # equal chosen lengths: TRL's batch-token-mean SFT == our per-sequence mean
        {"prompt_ids": [41, 42], "chosen_ids": [43, 44, 45], "rejected_ids": [46]},
        {"prompt_ids": [50, 51, 52], "chosen_ids": [53, 54, 55], "rejected_ids": [56, 57, 58, 59]},
        {"prompt_ids": [60], "chosen_ids": [61, 62, 63], "rejected_ids": [64, 65]},
    ])
    return policy, reference, {"varied": varied, "equal_chosen": equal_chosen}


def trl_loss(policy, reference, batch, loss_types, loss_weights=None, beta=0.1, label_smoothing=0.0,
             f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5, ld_alpha=None, use_weighting=False,
             discopop_tau=0.05):
    """TRL 1.16's DPOTrainer._compute_loss, called on a stand-in `self` with only what it reads."""
    from trl.trainer.dpo_trainer import DPOTrainer

    fake_self = SimpleNamespace(
        model=policy, ref_model=reference, aux_loss_enabled=False, precompute_ref_logps=False,
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x),
        args=SimpleNamespace(gradient_checkpointing_kwargs=None, discopop_tau=discopop_tau),
        beta=beta, label_smoothing=label_smoothing, loss_types=loss_types,
        loss_weights=loss_weights or [1.0] * len(loss_types), ld_alpha=ld_alpha,
        f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha_divergence_coef,
        use_weighting=use_weighting, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1)
    with warnings.catch_warnings():  # transformers' deprecation notice for is_gradient_checkpointing
        warnings.simplefilter("ignore", FutureWarning)
        inputs = {k: v for k, v in batch.items() if not k.startswith("_")}  # TRL passes every key to the model
        loss = DPOTrainer._compute_loss(fake_self, policy, inputs, False)
    return loss.item(), {k: v[-1] for k, v in fake_self._metrics["eval"].items()}


def gpt2_token_logps(model, batch, labels, with_log_sum_sq=False):
    """Our chunked gatherer on a transformers GPT-2: its final hidden states and its lm_head's weight."""
    hidden = model.transformer(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return chunked_token_logps(hidden, model.lm_head.weight, None, labels, with_log_sum_sq=with_log_sum_sq)


def our_loss(policy, reference, batch, loss_types, loss_weights=None, beta=0.1, label_smoothing=0.0,
             f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5, ld_alpha=None, use_weighting=False,
             discopop_tau=0.05):
    """Our path on the same weights and batch: labels = input ids with -100 off the completion."""
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    mask = response_mask(labels)
    with torch.no_grad():
        policy_tok, policy_log_sum_sq = gpt2_token_logps(policy, batch, labels, with_log_sum_sq=True)
        reference_tok, _ = gpt2_token_logps(reference, batch, labels)
    policy_logps, n = sequence_logps(policy_tok, mask, ld_alpha)
    reference_logps, _ = sequence_logps(reference_tok, mask, ld_alpha)
    pc, pr = policy_logps.chunk(2)
    rc, rr = reference_logps.chunk(2)
    nc, nr = n.chunk(2)
    options = {k: v for k, v, default in [("label_smoothing", label_smoothing, 0.0),
                                          ("f_divergence", f_divergence_type, "reverse_kl"),
                                          ("f_alpha", f_alpha_divergence_coef, 0.5),
                                          ("discopop_tau", discopop_tau, 0.05)] if v != default}
    losses = preference_loss(
        pc, pr, rc, rr, loss_type=loss_types, loss_weights=loss_weights, beta=beta, chosen_lengths=nc,
        rejected_lengths=nr, **options,
        wpo_weights=wpo_weights(policy_tok, policy_log_sum_sq, mask) if use_weighting else None)
    metrics = preference_metrics(pc, pr, rc, rr, losses, beta=beta, chosen_lengths=nc, rejected_lengths=nr,
                                 split="eval")
    return losses.mean().item(), {k: v.mean().item() for k, v in metrics.items()}


# (TRL loss_type(s), options): every loss TRL 1.16 and we both define. "sft" needs equal chosen lengths (see
# sft_mean_loss: TRL takes one token mean over the batch, we take a mean per sequence); TRL's "sigmoid" has no
# label smoothing (our cDPO), TRL's "bco_pair" has no running reward shift (our bco_delta=0).
PARITY_CASES = [
    (["sigmoid"], {}),
    (["sigmoid"], {"beta": 0.5}),
    (["hinge"], {}),
    (["ipo"], {}),
    (["exo_pair"], {"label_smoothing": 1e-3}),
    (["nca_pair"], {}),
    (["robust"], {"label_smoothing": 0.1}),
    (["bco_pair"], {}),
    (["sppo_hard"], {}),
    (["aot"], {}),
    (["aot"], {"label_smoothing": 0.1}),
    (["aot_unpaired"], {"label_smoothing": 0.1}),
    (["apo_zero"], {}),
    (["apo_down"], {}),
    (["discopop"], {}),
    (["discopop"], {"discopop_tau": 0.5}),
    (["sigmoid_norm"], {}),
    (["sigmoid"], {"f_divergence_type": "forward_kl"}),
    (["sigmoid"], {"f_divergence_type": "js_divergence"}),
    (["sigmoid"], {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3}),
    (["ipo"], {"f_divergence_type": "js_divergence"}),
    (["sigmoid_norm"], {"f_divergence_type": "alpha_divergence"}),
    (["hinge"], {"f_divergence_type": "forward_kl"}),
    (["sigmoid"], {"ld_alpha": 0.5}),
    (["ipo"], {"ld_alpha": 0.0}),
    (["sigmoid"], {"use_weighting": True}),
    (["sigmoid", "bco_pair"], {"loss_weights": [0.8, 0.2], "use_weighting": True}),
]


@pytest.mark.parametrize("loss_types,options", PARITY_CASES, ids=lambda x: str(x))
@pytest.mark.parametrize("batch_name", ["varied", "equal_chosen"])
def test_parity_with_trl(trl_setup, batch_name, loss_types, options):
    policy, reference, batches = trl_setup
    batch = batches[batch_name]
    theirs, their_metrics = trl_loss(policy, reference, batch, loss_types, **options)
    ours, our_metrics = our_loss(policy, reference, batch, loss_types, **options)
    assert abs(ours - theirs) <= 1e-5 * max(1.0, abs(theirs)), (ours, theirs)
    for name in ("chosen", "rejected", "accuracies", "margins"):
        assert our_metrics[f"rewards_eval/{name}"] == pytest.approx(their_metrics[f"rewards/{name}"], abs=1e-5)
    for name in ("chosen", "rejected"):
        assert our_metrics[f"logps_eval/{name}"] == pytest.approx(their_metrics[f"logps/{name}"], abs=1e-4)


def test_sft_parity_with_trl(trl_setup):
    policy, reference, batches = trl_setup
    theirs, _ = trl_loss(policy, reference, batches["equal_chosen"], ["sft"])
    ours, _ = our_loss(policy, reference, batches["equal_chosen"], "sft_mean")
    assert abs(ours - theirs) <= 1e-5
    mix_theirs, _ = trl_loss(policy, reference, batches["equal_chosen"], ["sigmoid", "bco_pair", "sft"],
                             loss_weights=[0.8, 0.2, 1.0])
    mix_ours, _ = our_loss(policy, reference, batches["equal_chosen"], "sigmoid+bco_pair+sft_mean",
                           loss_weights=[0.8, 0.2, 1.0])
    assert abs(mix_ours - mix_theirs) <= 1e-5
    # With unequal lengths TRL's "sft" is one token mean over the batch; ours averages per sequence.
    theirs, _ = trl_loss(policy, reference, batches["varied"], ["sft"])
    batch = batches["varied"]
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        logps, n = sequence_logps(gpt2_token_logps(policy, batch, labels)[0], response_mask(labels))
    chosen, _ = logps.chunk(2)
    chosen_n, _ = n.chunk(2)
    assert theirs == pytest.approx((-chosen.sum() / chosen_n.sum()).item(), abs=1e-5)
    ours, _ = our_loss(policy, reference, batch, "sft_mean")
    assert ours != pytest.approx(theirs, abs=1e-3)


def test_summed_logps_equal_reference_code_on_gpt2(trl_setup):
    """Our gatherer on the GPT-2's logits == _get_batch_logps of the authors' trainers.py, written out."""
    policy, _, batches = trl_setup
    batch = batches["varied"]
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = labels[:, 1:].clone()
    loss_mask = shifted != -100
    shifted[~loss_mask] = 0
    expected = (torch.gather(logits[:, :-1].log_softmax(-1), 2, shifted.unsqueeze(2)).squeeze(2) * loss_mask).sum(-1)
    with torch.no_grad():
        ours, n = sequence_logps(gpt2_token_logps(policy, batch, labels)[0], response_mask(labels))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    assert n.tolist() == batch["completion_mask"].sum(-1).tolist()
