"""Which of a flagged label's samples to isolate: the upper mode of its quarantine scores.

A trigger is there or it is not, so a label's poisoned samples form a mode of their own in the
quarantine model's log-odds, apart from the label's clean samples; a natural ambiguity (shirts that
look like T-shirts) is a matter of degree and forms none. So each label that isolation flagged is
judged by a two-component Gaussian mixture on its samples' log-odds (scikit-learn's
GaussianMixture):

- Null model: the label's log-odds are one population, so the two fitted components overlap.
  They are called apart when Ashman's D = |μ₁ − μ₂| / √((σ₁² + σ₂²) / 2) exceeds 2, the usual
  criterion for a clean separation of two Gaussians (Ashman, Bird and Zepf, 1994). A flagged
  label whose modes are not apart isolates nothing, and the verdict says why.
- Otherwise the label's samples above the log-odds where the upper component's posterior reaches
  `posterior` (`isolation.mode_posterior`, 0.03) are isolated: the Bayes rule when keeping a
  poisoned sample costs as much as dropping 1/posterior − 1 ≈ 32 clean ones. The costs are that
  unequal: poison left in training re-implants the backdoor (a run at 88% recall ended at 3.7%
  ASR, docs/method.md), while a label's clean samples are thousands. The value was chosen among
  0.1, 0.03 and 0.01 on three cells (MNIST 4k and 5k BadNets, Fashion-MNIST 60k SIG; figures in
  docs/method.md), the only one of the three that met recall ≥ 95% at FPR ≤ 1% on all of them,
  and then checked on cells it was not chosen on.

Why not a fixed cut on the probability: the clean mode's place moves with the data. Measured on
the final scores of matrix cells (log-odds; clean samples' maximum against poison's minimum):
MNIST 5k Blend, clean ≤ −6.2 and poison ≥ −5.1, where a cut at probability 0.1 (−2.2) missed 29 of
500 poisoned samples; Fashion-MNIST 60k all-to-all, label 4's clean samples reach 3.5, and the
same cut took 1,442 of them with its 571 poisoned ones (Ashman's D there: 7.4).

Scores are float64 (quarantine.quarantine_probability): a float32 softmax rounds to 1 above
log-odds 16.6, where strongly learnt poison would pile up at the clip as a narrow component of its
own. In float64 the pile starts at 36.7 (HIGHEST; none of the saved float32 scores of seven cells
and the default run reached even 16.6). Every sample is scored by the time the cut runs (each by a
model that did not train on it); a probability of exactly 0 is kept out of the fit and never
isolated, as a guard: it would mean no model scored the sample.

When the two components overlap so much that the upper one's posterior already reaches
`posterior` at the lower mean (D just above 2, or a heavy, broad upper component), the cut is the
lower mean, and the label's figures say `overlap`: by the costs above, poison left in is the worse
error, and D > 2 has already rejected a single population.

The isolated samples the upper component claims with a posterior of at least 0.5 (CONFIDENT) are
the *confident* ones, and only they are unlearnt by the finetune (`finetune.unlearn: confident`).
The costs differ there: an isolated sample is out of training whether it is unlearnt or not, so
not unlearning a poisoned one costs little, while unlearning a clean one teaches the final model
that its class is not its class. With the costs about equal, the Bayes rule is the even posterior.
Measured on two full cells (2026-12-07, same isolation, finetune re-run): SIG 5% 88.76 → 89.66%
(2,879 of 3,203 unlearnt, 98 of them clean instead of 285), all-to-all 89.74 → 90.25%, with the
ASR at 0.02% and 0.11%.
"""

from __future__ import annotations

import torch

SEPARATION = 2.0  # Ashman's D above which two Gaussian components are apart
LOWEST, HIGHEST = 1e-300, 1 - 2.0 ** -53  # float64's range for a probability: log-odds from −690.8 to 36.7
MIN_SAMPLES = 20  # fewer samples of a label: no mixture is fitted, the label is not separated
CONFIDENT = 0.5  # the upper component's posterior from which an isolated sample is unlearnt


def log_odds(probability: torch.Tensor) -> torch.Tensor:
    clipped = probability.double().clamp(LOWEST, HIGHEST)
    return torch.log(clipped) - torch.log1p(-clipped)


def upper_mode(probability: torch.Tensor, posterior: float, seed: int) -> dict:
    """The mixture's verdict on one label's quarantine probabilities: `separated` (Ashman's D above
    SEPARATION), `cut` (the log-odds from which samples are isolated), `overlap` (the cut is the
    lower mean), `confident_cut` (from which they are confident, CONFIDENT), and the components'
    figures."""
    import numpy as np
    from sklearn.mixture import GaussianMixture

    if probability.numel() < MIN_SAMPLES:
        return {"separated": False, "reason": f"{probability.numel()} samples, fewer than {MIN_SAMPLES}"}
    values = log_odds(probability).numpy().reshape(-1, 1)
    mixture = GaussianMixture(n_components=2, n_init=3, reg_covar=1e-3, random_state=seed).fit(values)
    means, spreads = mixture.means_.ravel(), np.sqrt(mixture.covariances_.ravel())
    low, high = int(np.argmin(means)), int(np.argmax(means))
    pooled_spread = np.sqrt((spreads[high] ** 2 + spreads[low] ** 2) / 2)
    separation = float(abs(means[high] - means[low]) / pooled_spread)
    figures = {"ashman_d": separation, "means": [float(means[low]), float(means[high])],
               "spreads": [float(spreads[low]), float(spreads[high])],
               "weights": [float(mixture.weights_[low]), float(mixture.weights_[high])]}
    if separation <= SEPARATION:
        return {**figures, "separated": False, "reason": "its quarantine log-odds form no separate mode "
                f"(Ashman's D {separation:.2f} ≤ {SEPARATION:g})"}
    cut, overlap = posterior_cut(mixture, means, low, high, posterior)
    # overlap: the upper mode already claims the lower mean, and about half the label's clean
    # samples go with its poison (the module's story says why that is the cheaper error)
    confident_cut, _ = posterior_cut(mixture, means, low, high, max(posterior, CONFIDENT))
    return {**figures, "separated": True, "cut": cut, "overlap": overlap, "confident_cut": confident_cut}


def posterior_cut(mixture, means, low: int, high: int, posterior: float) -> tuple[float, bool]:
    """(the lowest log-odds between the two means where the upper component's posterior reaches
    `posterior`, whether it reaches it already at the lower mean). Searched between the means only,
    so the decision is monotone: a broad lower component would otherwise win back the far upper tail."""
    import numpy as np

    grid = np.linspace(means[low], means[high], 2001).reshape(-1, 1)
    reached = mixture.predict_proba(grid)[:, high] >= posterior
    cut = float(grid[int(np.argmax(reached)), 0]) if reached.any() else float(means[high])
    return cut, bool(reached[0])


def isolate_upper_modes(labels: torch.Tensor, probability: torch.Tensor, flagged: list[int], posterior: float,
                        seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Each flagged label's scored samples in its upper mode (upper_mode): (isolated indices, the
    confident ones among them, figures per label). A sample of probability 0 (unscored) is neither
    fitted nor isolated."""
    chosen = torch.zeros(labels.numel(), dtype=torch.bool)
    confident = torch.zeros(labels.numel(), dtype=torch.bool)
    figures = {}
    scores = log_odds(probability)
    for label in flagged:
        members = (labels == label) & (probability > 0)
        result = upper_mode(probability[members], posterior, seed + label)
        result["scored"], result["isolated"] = int(members.sum()), 0
        if result["separated"]:
            chosen |= members & (scores >= result["cut"])
            confident |= members & (scores >= result["confident_cut"])
            result["isolated"], result["confident"] = int((chosen & members).sum()), int((confident & members).sum())
        figures[str(label)] = result
    return torch.nonzero(chosen).flatten(), torch.nonzero(confident).flatten(), figures
