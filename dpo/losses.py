"""The preference-loss family, over per-sequence log-probs.

Every loss is one function with the same positional arguments, all [B] tensors (B pairs):

    loss_fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
            *, <the keyword options it uses>) -> losses [B]

log-probs are per-sequence sums over response tokens (dpo.logprobs), in fp32. The loss returned is
per example; the caller takes the mean (so gradient accumulation over micro-batches by `loss / steps`
equals one bigger batch). `LOSSES` maps the config's `loss.name` to the function and the keyword
arguments it takes. To add a loss, write one function with that signature and add one entry (and, if it
never reads the reference log-probs, add its name to REFERENCE_FREE so no reference model is loaded).

Notation in the docstrings (per pair, β = beta):
    π_w, π_l   = policy_chosen_logps, policy_rejected_logps          (log π_θ(y|x))
    ρ_w, ρ_l   = π_w − ref_w, π_l − ref_l                          (log-ratios; reward r = β·ρ)
    h          = ρ_w − ρ_l                                          (the DPO margin)
    |y_w|, |y_l| = chosen_lengths, rejected_lengths (response tokens)
    σ = sigmoid. "f-DPO" losses accept `f_divergence` and replace ρ by the score f'(π/π_ref) (see
    `f_divergence_scores`); the default reverse KL is standard DPO.

Where TRL (1.16, trl/trainer/dpo_trainer.py) computes a loss differently, the docstring says so and why
(tests/test_losses.py checks equality with TRL wherever both define the same thing).
"""
import math

import torch
import torch.nn.functional as F

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


def f_divergence_scores(logratios: torch.Tensor, f_divergence: str = "reverse_kl",
                        f_alpha: float = 0.5) -> torch.Tensor:
    """f'(u) at u = π_θ(y|x) / π_ref(y|x), from the log-ratio ρ = log u: [B] -> [B].

    f-DPO (Wang et al., 2023, "Beyond Reverse KL: Generalizing DPO with Diverse Divergence Constraints")
    replaces the implicit reward β·log u by β·f'(u) for a divergence f:
        reverse_kl:       f'(u) = log u + 1           -> ρ (the constant cancels in ρ_w − ρ_l)
        forward_kl:       f'(u) = 1 − 1/u             -> 1 − exp(−ρ)
        js_divergence:    f'(u) = log(2u / (1 + u))    -> log 2 + log σ(ρ)
        alpha_divergence: f'(u) = (u^(α−1) − 1)/(α−1)  -> (exp((α−1)ρ) − 1)/(α−1), α → 1 gives ρ
    These are TRL's definitions (its α is 1 − the paper's α). The exponent is computed in fp32 and
    clamped at 80, as TRL does, so exp stays finite."""
    if f_divergence == "reverse_kl":
        return logratios
    if f_divergence == "forward_kl":
        return 1 - torch.exp(-logratios)
    if f_divergence == "js_divergence":
        return math.log(2) + F.logsigmoid(logratios)
    if f_divergence == "alpha_divergence":
        if abs(f_alpha - 1.0) < 1e-6:
            return logratios
        t = torch.clamp((f_alpha - 1.0) * logratios.float(), max=80.0)
        return ((torch.exp(t) - 1.0) / (f_alpha - 1.0)).to(logratios.dtype)
    raise ValueError(f"unknown f_divergence {f_divergence!r}; expected one of {', '.join(F_DIVERGENCES)}")


def _scores(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
            f_divergence="reverse_kl", f_alpha=0.5):
    return (f_divergence_scores(policy_chosen_logps - reference_chosen_logps, f_divergence, f_alpha),
            f_divergence_scores(policy_rejected_logps - reference_rejected_logps, f_divergence, f_alpha))


# ----- DPO and its direct variants ------------------------------------------------------------------------

def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, *,
             beta, label_smoothing=0.0, f_divergence="reverse_kl", f_alpha=0.5):
    """DPO (Rafailov et al., 2023), Eq. 7; with label_smoothing ε > 0, conservative DPO (cDPO, Mitchell 2023):

        L = −(1 − ε)·log σ(β·h) − ε·log σ(−β·h),   h = ρ_w − ρ_l

    At ε = 0 this is TRL's "sigmoid"; the authors' reference code uses the same ε form for cDPO. (TRL 1.16's
    "sigmoid" ignores label_smoothing.) f-DPO: h = f'(u_w) − f'(u_l)."""
    chosen, rejected = _scores(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                               reference_rejected_logps, f_divergence, f_alpha)
    h = chosen - rejected
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def reference_free_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                        reference_rejected_logps, *, beta, label_smoothing=0.0):
    """Reference-free DPO (the reference code's `reference_free=True`): the reference log-ratio is taken as 0,

        L = −(1 − ε)·log σ(β·(π_w − π_l)) − ε·log σ(−β·(π_w − π_l))

    The reference log-probs are ignored (pass anything, e.g. zeros)."""
    zeros = torch.zeros_like(policy_chosen_logps)
    return dpo_loss(policy_chosen_logps, policy_rejected_logps, zeros, zeros, beta=beta,
                    label_smoothing=label_smoothing)


def ipo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, *,
             beta, chosen_lengths, rejected_lengths, f_divergence="reverse_kl", f_alpha=0.5):
    """IPO (Azar et al., 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", Eq. 17), β playing the role of τ, with log-ratios averaged per token:

        L = (ρ_w/|y_w| − ρ_l/|y_l| − 1/(2β))²

    The per-token average is what the IPO authors intended (confirmed to TRL, whose "ipo" does the same);
    the DPO reference code squares the summed log-ratios, which makes the loss scale with length²."""
    chosen, rejected = _scores(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                               reference_rejected_logps, f_divergence, f_alpha)
    h = chosen / chosen_lengths.clamp(min=1) - rejected / rejected_lengths.clamp(min=1)
    return (h - 1 / (2 * beta)) ** 2


def hinge_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, *,
               beta, f_divergence="reverse_kl", f_alpha=0.5):
    """Hinge loss of SLiC (Zhao et al., 2023, "SLiC-HF: Sequence Likelihood Calibration with Human
    Feedback") on the DPO margin, as in TRL's "hinge":  L = max(0, 1 − β·h)."""
    chosen, rejected = _scores(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                               reference_rejected_logps, f_divergence, f_alpha)
    return torch.relu(1 - beta * (chosen - rejected))


def robust_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, *,
                beta, label_smoothing=0.0, f_divergence="reverse_kl", f_alpha=0.5):
    """Robust DPO (Chowdhury et al., 2024, "Provably Robust DPO: Aligning Language Models with Noisy
    Feedback", Eq. 12), ε = label_smoothing = the probability that a label is flipped, ε ∈ [0, 0.5):

        L = [−(1 − ε)·log σ(β·h) + ε·log σ(−β·h)] / (1 − 2ε)

    An unbiased estimate of the clean-label DPO loss."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs label_smoothing in [0, 0.5), got {label_smoothing}")
    chosen, rejected = _scores(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                               reference_rejected_logps, f_divergence, f_alpha)
    h = chosen - rejected
    return (-(1 - label_smoothing) * F.logsigmoid(beta * h)
            + label_smoothing * F.logsigmoid(-beta * h)) / (1 - 2 * label_smoothing)


def exo_pair_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                  *, beta, label_smoothing=1e-3, f_divergence="reverse_kl", f_alpha=0.5):
    """EXO for pairs (Ji et al., 2024, "Towards Efficient Exact Optimization of Language Model Alignment",
    Eq. 16): KL(p_θ ‖ p_label) over {chosen, rejected}, with p_θ = softmax of the rewards = (σ(β·h), σ(−β·h))
    and smoothed labels p_label = (1 − ε, ε), ε = label_smoothing > 0 (paper: 1e-3):

        L = σ(β·h)·[log σ(β·h) − log(1 − ε)] + σ(−β·h)·[log σ(−β·h) − log ε]"""
    if not 0.0 < label_smoothing < 1.0:
        raise ValueError(f"EXO needs label_smoothing in (0, 1) (paper: 1e-3), got {label_smoothing}")
    chosen, rejected = _scores(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                               reference_rejected_logps, f_divergence, f_alpha)
    x = beta * (chosen - rejected)
    return (torch.sigmoid(x) * (F.logsigmoid(x) - math.log1p(-label_smoothing))
            + torch.sigmoid(-x) * (F.logsigmoid(-x) - math.log(label_smoothing)))


def nca_pair_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                  *, beta):
    """NCA for pairs (Chen et al., 2024, "Noise Contrastive Alignment of Language Models with Explicit
    Rewards"), r = β·ρ:   L = −log σ(r_w) − ½·log σ(−r_w) − ½·log σ(−r_l)

    Unlike DPO it constrains each reward's absolute value, so the chosen likelihood does not fall."""
    r_w = beta * (policy_chosen_logps - reference_chosen_logps)
    r_l = beta * (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)


def bco_pair_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                  *, beta, bco_delta=0.0):
    """Pairwise BCO (Jung et al., 2024, "Binary Classifier Optimization for Large Language Model
    Alignment"), r = β·ρ, δ = bco_delta:   L = −log σ(r_w − δ) − log σ(−(r_l − δ))

    δ is the paper's reward shift, a fixed option here (loss.options={bco_delta: ...}); the paper and older
    TRL keep a running mean of the rewards seen so far. δ = 0 is TRL 1.16's "bco_pair"."""
    r_w = beta * (policy_chosen_logps - reference_chosen_logps)
    r_l = beta * (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(r_w - bco_delta) - F.logsigmoid(-(r_l - bco_delta))


def sppo_hard_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                   *, beta):
    """SPPO with hard win probabilities (Wu et al., 2024, "Self-Play Preference Optimization for Language
    Model Alignment", Eq. 4.7 with P(y_w ≻ y_l) = 1 and P(y_l ≻ y_w) = 0):

        L = (ρ_w − 1/(2β))² + (ρ_l + 1/(2β))²"""
    rho_w = policy_chosen_logps - reference_chosen_logps
    rho_l = policy_rejected_logps - reference_rejected_logps
    return (rho_w - 0.5 / beta) ** 2 + (rho_l + 0.5 / beta) ** 2


def aot_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, *,
             beta, label_smoothing=0.0):
    """AOT, paired (Melnyk et al., 2024, "Distributional Preference Alignment of LLMs via Optimal Transport"):
    first-order stochastic dominance of the policy's margin distribution over the reference's, via
    sorting over the batch:

        δ = sort_B(π_w − π_l) − sort_B(ref_w − ref_l),   L = −(1 − ε)·log σ(β·δ) − ε·log σ(−β·δ)

    Row i of the result belongs to the i-th quantile, not to pair i: only its mean is meaningful, and
    the sort runs within the (micro-)batch the caller passes."""
    logratios, _ = torch.sort(policy_chosen_logps - policy_rejected_logps, dim=0)
    ref_logratios, _ = torch.sort(reference_chosen_logps - reference_rejected_logps, dim=0)
    delta = logratios - ref_logratios
    return -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)


def aot_unpaired_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                      reference_rejected_logps, *, beta, label_smoothing=0.0):
    """AOT, unpaired (Melnyk et al., 2024): the chosen log-ratio distribution should dominate the rejected one,

        δ = sort_B(ρ_w) − sort_B(ρ_l),   L = −(1 − ε)·log σ(β·δ) − ε·log σ(−β·δ)

    (rows are quantiles, not pairs, as for `aot_loss`)."""
    rho_w, _ = torch.sort(policy_chosen_logps - reference_chosen_logps, dim=0)
    rho_l, _ = torch.sort(policy_rejected_logps - reference_rejected_logps, dim=0)
    delta = rho_w - rho_l
    return -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)


def apo_zero_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                  *, beta):
    """APO-zero (D'Oosterlinck et al., 2024, "Anchored Preference Optimization and Contrastive
    Revisions", Eq. 7), for chosen outputs better than the model's own: raise chosen, lower rejected,

        L = (1 − σ(β·ρ_w)) + σ(β·ρ_l)"""
    rho_w = policy_chosen_logps - reference_chosen_logps
    rho_l = policy_rejected_logps - reference_rejected_logps
    return (1 - torch.sigmoid(beta * rho_w)) + torch.sigmoid(beta * rho_l)


def apo_down_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                  *, beta):
    """APO-down (D'Oosterlinck et al., 2024, Eq. 8), for chosen outputs worse than the model's own: lower
    both, the rejected more,

        L = σ(β·ρ_w) + (1 − σ(β·(ρ_w − ρ_l)))"""
    rho_w = policy_chosen_logps - reference_chosen_logps
    rho_l = policy_rejected_logps - reference_rejected_logps
    return torch.sigmoid(beta * rho_w) + (1 - torch.sigmoid(beta * (rho_w - rho_l)))


def discopop_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                  *, beta, discopop_tau=0.05, f_divergence="reverse_kl", f_alpha=0.5):
    """DiscoPOP / log-ratio modulated loss (Lu et al., 2024, "Discovering Preference Optimization
    Algorithms with and for Large Language Models", Eq. 5), x = β·h, τ = discopop_tau (paper: 0.05):

        m = σ(x/τ),   L = (1 − m)·(−log σ(x)) + m·exp(−x)

    a blend of the logistic (DPO) and exponential losses, switched by the margin's sign."""
    chosen, rejected = _scores(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                               reference_rejected_logps, f_divergence, f_alpha)
    x = beta * (chosen - rejected)
    m = torch.sigmoid(x / discopop_tau)
    return (1 - m) * -F.logsigmoid(x) + m * torch.exp(-x)


def sigmoid_norm_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                      reference_rejected_logps, *, beta, chosen_lengths, rejected_lengths,
                      f_divergence="reverse_kl", f_alpha=0.5):
    """Length-normalised DPO (Tulu 3's "dpo_norm", Lambert et al., 2024; TRL's "sigmoid_norm"): DPO on
    per-token mean log-ratios, which removes DPO's pull towards longer responses,

        L = −log σ(β·(ρ_w/|y_w| − ρ_l/|y_l|))"""
    chosen, rejected = _scores(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                               reference_rejected_logps, f_divergence, f_alpha)
    h = chosen / chosen_lengths.clamp(min=1) - rejected / rejected_lengths.clamp(min=1)
    return -F.logsigmoid(beta * h)


def simpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, *,
               beta, chosen_lengths, rejected_lengths, simpo_gamma=0.5):
    """SimPO (Meng et al., 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
    Eq. 6): reference-free, length-normalised, with a target margin γ = simpo_gamma (paper: β 2–2.5,
    γ 0.3–1.6):

        L = −log σ(β·π_w/|y_w| − β·π_l/|y_l| − γ)"""
    h = policy_chosen_logps / chosen_lengths.clamp(min=1) - policy_rejected_logps / rejected_lengths.clamp(min=1)
    return -F.logsigmoid(beta * h - simpo_gamma)


# ----- the paper's baselines ----------------------------------------------------------------------------

def sft_loss(policy_chosen_logps, policy_rejected_logps=None, reference_chosen_logps=None,
             reference_rejected_logps=None):
    """SFT / Preferred-FT (the DPO paper's baseline: supervised fine-tuning on the chosen responses),
    summed over each sequence, as the reference code's SFT trainer:   L = −π_w = −log π_θ(y_w|x)

    Each sequence weighs in proportion to its length. See `sft_mean_loss` for the per-token mean."""
    return -policy_chosen_logps


def sft_mean_loss(policy_chosen_logps, policy_rejected_logps=None, reference_chosen_logps=None,
                  reference_rejected_logps=None, *, chosen_lengths):
    """SFT with per-token mean normalisation per sequence:   L = −π_w / |y_w|

    Every sequence weighs the same. TRL's "sft" instead takes one mean over all chosen tokens of the
    batch, −Σ_i π_w,i / Σ_i |y_w,i|; the two agree when the lengths are equal. Ours is per sequence so
    that a loss over a batch split into micro-batches equals the loss over the whole batch."""
    return -policy_chosen_logps / chosen_lengths.clamp(min=1)


def unlikelihood_loss(policy_chosen_logps, policy_rejected_logps=None, reference_chosen_logps=None,
                      reference_rejected_logps=None, *, policy_rejected_unlikelihood, unlikelihood_alpha=1.0):
    """Unlikelihood baseline of the DPO paper (token-level unlikelihood of Welleck et al., 2019, "Neural Text
    Generation with Unlikelihood Training"): raise the chosen, push down each rejected token,

        L = −log π_θ(y_w|x) − α·Σ_t log(1 − π_θ(y_l,t | x, y_l,<t))

    α = unlikelihood_alpha (paper's sweep: 0.05–1). The second term needs per-token probabilities, not
    the sequence log-prob: pass policy_rejected_unlikelihood [B] = Σ_t log(1 − p_t) over the rejected
    response, from `dpo.logprobs.sequence_unlikelihood` on the policy's per-token log-probs."""
    return -policy_chosen_logps - unlikelihood_alpha * policy_rejected_unlikelihood


# loss.name -> (function, the keyword arguments it takes). preference_loss hands each function exactly these.
LOSSES = {
    "sigmoid": (dpo_loss, ("beta", "label_smoothing", "f_divergence", "f_alpha")),  # DPO; cDPO with smoothing
    "reference_free": (reference_free_loss, ("beta", "label_smoothing")),
    "ipo": (ipo_loss, ("beta", "chosen_lengths", "rejected_lengths", "f_divergence", "f_alpha")),
    "hinge": (hinge_loss, ("beta", "f_divergence", "f_alpha")),
    "robust": (robust_loss, ("beta", "label_smoothing", "f_divergence", "f_alpha")),
    "exo_pair": (exo_pair_loss, ("beta", "label_smoothing", "f_divergence", "f_alpha")),
    "nca_pair": (nca_pair_loss, ("beta",)),
    "bco_pair": (bco_pair_loss, ("beta", "bco_delta")),
    "sppo_hard": (sppo_hard_loss, ("beta",)),
    "aot": (aot_loss, ("beta", "label_smoothing")),
    "aot_unpaired": (aot_unpaired_loss, ("beta", "label_smoothing")),
    "apo_zero": (apo_zero_loss, ("beta",)),
    "apo_down": (apo_down_loss, ("beta",)),
    "discopop": (discopop_loss, ("beta", "discopop_tau", "f_divergence", "f_alpha")),
    "sigmoid_norm": (sigmoid_norm_loss, ("beta", "chosen_lengths", "rejected_lengths", "f_divergence", "f_alpha")),
    "simpo": (simpo_loss, ("beta", "chosen_lengths", "rejected_lengths", "simpo_gamma")),
    "sft": (sft_loss, ()),
    "preferred_ft": (sft_loss, ()),  # the paper's name for SFT on the chosen responses
    "sft_mean": (sft_mean_loss, ("chosen_lengths",)),
    "unlikelihood": (unlikelihood_loss, ("policy_rejected_unlikelihood", "unlikelihood_alpha")),
}
# The losses that never read the reference log-probs. The one switch for "is there a reference model": a run
# loads one (or its cached log-probs) exactly when some loss of loss.name is not in this set (uses_reference).
REFERENCE_FREE = {"reference_free", "simpo", "sft", "preferred_ft", "sft_mean", "unlikelihood"}
INPUTS = ("beta", "chosen_lengths", "rejected_lengths")  # always given; every other option is checked


def parse_loss_names(loss_type) -> list:
    """"sigmoid" | "sigmoid+sft" | ["sigmoid", "sft"] -> ["sigmoid", "sft"], each checked against LOSSES."""
    names = loss_type.split("+") if isinstance(loss_type, str) else list(loss_type)
    for name in names:
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(sorted(LOSSES))}")
    return names


def uses_reference(loss_type) -> bool:
    """Whether any loss of the mix reads the reference log-probs (else no reference model is loaded)."""
    return any(name not in REFERENCE_FREE for name in parse_loss_names(loss_type))


def check_options(loss_type, options: dict, wpo: bool = False) -> None:
    """Raise ValueError unless `options` fit the losses of loss_type: an option no loss in LOSSES takes, one
    that none of the chosen losses takes (it would silently do nothing), an f-divergence with a loss that
    reads the reference but has no f-divergence form, WPO weights with the batch-sorting AOT losses."""
    names = parse_loss_names(loss_type)
    if options.get("f_divergence", "reverse_kl") != "reverse_kl":
        for name in names:
            if "f_divergence" not in LOSSES[name][1] and name not in REFERENCE_FREE:
                raise ValueError(f"loss {name!r} has no f-divergence form; use f_divergence=reverse_kl with it")
    known = {key for _, keys in LOSSES.values() for key in keys}
    used = {key for name in names for key in LOSSES[name][1]}
    for key, value in options.items():
        if key not in known:
            raise ValueError(f"unknown loss option {key!r}; losses take: {', '.join(sorted(known))}")
        if key not in used and key not in INPUTS:
            raise ValueError(f"loss option {key}={value!r} has no effect on loss {'+'.join(names)}")
    if wpo and {"aot", "aot_unpaired"} & set(names):
        raise ValueError("WPO weights cannot be used with aot/aot_unpaired: they sort the batch, so rows are "
                         "not pairs")


def preference_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                    *, loss_type="sigmoid", loss_weights=None, rpo_alpha=0.0, wpo_weights=None, **options):
    """The training loss per pair, [B]: a weighted mix of LOSSES plus the options that apply to any loss.

        L = w_pair · ( Σ_k weight_k · L_k  +  rpo_alpha · (−π_w / |y_w|) )

    loss_type: a LOSSES key, several joined by "+" ("sigmoid+bco_pair+sft"), or a list of keys;
    loss_weights: one weight per loss (default 1 each), e.g. MPO's [0.8, 0.2, 1.0].
    rpo_alpha: RPO's NLL term on the chosen (Pang et al., 2024, "Iterative Reasoning Preference
        Optimization"), length-normalised per sequence as in the paper; older TRL's rpo_alpha took
        one token mean over the batch instead (equal when lengths are equal). 0 = off.
    wpo_weights: [B] WPO pair weights (`dpo.logprobs.wpo_weights`), multiplying the whole per-pair loss,
        as TRL does.
    options: beta, chosen_lengths, rejected_lengths (given to whichever loss takes them) and the options
        of the chosen losses (the second column of LOSSES), checked by `check_options`."""
    names = parse_loss_names(loss_type)
    weights = [1.0] * len(names) if loss_weights is None else list(loss_weights)
    if len(weights) != len(names):
        raise ValueError(f"loss_weights has {len(weights)} entries for {len(names)} losses ({'+'.join(names)})")
    check_options(names, options, wpo=wpo_weights is not None)
    total = 0.0
    for name, weight in zip(names, weights):
        fn, keys = LOSSES[name]
        total = total + weight * fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                                    reference_rejected_logps, **{k: options[k] for k in keys if k in options})
    if rpo_alpha:
        if options.get("chosen_lengths") is None:
            raise ValueError("rpo_alpha needs chosen_lengths")
        total = total + rpo_alpha * sft_mean_loss(policy_chosen_logps, chosen_lengths=options["chosen_lengths"])
    if wpo_weights is not None:
        total = total * wpo_weights
    return total


# ----- metrics --------------------------------------------------------------------------------------------

def preference_metrics(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                       reference_rejected_logps, losses, *, beta, chosen_lengths, rejected_lengths,
                       split="train") -> dict:
    """Per-example metrics, [B] detached fp32 tensors each (the caller gathers across ranks and averages).

    Names follow the authors' reference code, so runs compare:
        rewards_{split}/chosen, rewards_{split}/rejected   r = β·ρ (the implicit reward)
        rewards_{split}/accuracies                         1.0 where r_w > r_l (strict, so 0 at step 0)
        rewards_{split}/margins                            r_w − r_l
        logps_{split}/chosen, logps_{split}/rejected       π_w, π_l
        loss/{split}                                       the per-pair loss
    and beyond it:
        lengths_{split}/chosen, lengths_{split}/rejected   response tokens
        logratios_{split}/chosen, logratios_{split}/rejected
            ρ = log π_θ(y|x) − log π_ref(y|x): its mean over data is a running estimate of how far the
            policy has moved from the reference (a KL proxy on dataset responses, not on samples)."""
    with torch.no_grad():
        rho_w = (policy_chosen_logps - reference_chosen_logps).float()
        rho_l = (policy_rejected_logps - reference_rejected_logps).float()
        r_w, r_l = beta * rho_w, beta * rho_l
        return {
            f"rewards_{split}/chosen": r_w,
            f"rewards_{split}/rejected": r_l,
            f"rewards_{split}/accuracies": (r_w > r_l).float(),
            f"rewards_{split}/margins": r_w - r_l,
            f"logps_{split}/chosen": policy_chosen_logps.detach().float(),
            f"logps_{split}/rejected": policy_rejected_logps.detach().float(),
            f"loss/{split}": losses.detach().float(),
            f"lengths_{split}/chosen": chosen_lengths.float(),
            f"lengths_{split}/rejected": rejected_lengths.float(),
            f"logratios_{split}/chosen": rho_w,
            f"logratios_{split}/rejected": rho_l,
        }
