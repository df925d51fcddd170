import itertools

import numpy as np
import pytest

from genood.ood import detectors, metrics


def brute_force_auroc(a_in, b_in, a_ood, b_ood):
    """Enumerate every threshold pair, keep the best TPR per FPR, integrate the step function."""
    t1s = np.r_[-np.inf, np.unique(np.r_[a_in, a_ood])]
    t2s = np.r_[np.unique(np.r_[b_in, b_ood]), np.inf]
    m = len(a_ood)
    best = np.zeros(m + 1)
    for t1, t2 in itertools.product(t1s, t2s):
        tpr = np.mean((a_in > t1) & (b_in >= t2))
        k = int(np.sum((a_ood > t1) & (b_ood >= t2)))
        best[k:] = np.maximum(best[k:], tpr)
    return best[:-1].mean()


@pytest.mark.parametrize("seed", range(12))
def test_dual_threshold_auroc_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(3, 25, size=2)
    a_in, a_ood = rng.normal(0, 1, n), rng.normal(0.5, 1, m)
    b_in, b_ood = rng.integers(0, 6, n).astype(float), rng.integers(0, 5, m).astype(float)
    fast = detectors.dual_threshold_auroc(a_in, b_in, a_ood, b_ood)
    assert fast == pytest.approx(brute_force_auroc(a_in, b_in, a_ood, b_ood), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_dual_threshold_reduces_to_single_score_when_one_score_is_constant(seed):
    rng = np.random.default_rng(seed)
    a_in, a_ood = rng.normal(0.3, 1, 200), rng.normal(0, 1, 150)
    const_in, const_ood = np.full(200, 7.0), np.full(150, 7.0)
    assert detectors.dual_threshold_auroc(a_in, const_in, a_ood, const_ood) == pytest.approx(metrics.auroc(a_in, a_ood), abs=1e-12)
    # and with a constant first score it is the AUROC of the second (integer, so ties: step envelope)
    b_in, b_ood = rng.normal(0.3, 1, 200), rng.normal(0, 1, 150)
    assert detectors.dual_threshold_auroc(np.zeros(200), b_in, np.zeros(150), b_ood) == pytest.approx(
        metrics.auroc(b_in, b_ood), abs=1e-12)


def test_dual_threshold_beats_likelihood_when_ood_has_low_second_score():
    rng = np.random.default_rng(0)
    ll_in, ll_ood = rng.normal(0, 1, 300), rng.normal(1, 1, 300)   # the paradox: OOD likelier
    lid_in, lid_ood = rng.normal(300, 10, 300), rng.normal(200, 10, 300)
    single = metrics.auroc(ll_in, ll_ood)
    dual = detectors.dual_threshold_auroc(ll_in, lid_in.round(), ll_ood, lid_ood.round())
    assert single < 0.5 < 0.99 < dual


def test_honest_variant_uses_training_data_only():
    b_train = np.arange(100, dtype=float)
    assert detectors.fixed_second_threshold(b_train, keep=0.95) == 5.0
    assert np.mean(b_train >= 5.0) == 0.95
    out = detectors.dual_threshold_metrics([1.0, 2.0], [10.0, 0.0], [1.5], [10.0], b_train)
    assert out["fixed"]["t2"] == 5.0
    # the second in-distribution point is gated out (-inf); 1.0 < 1.5 -> AUROC 0
    assert out["fixed"]["auroc"] == 0.0 and out["envelope"]["optimistic"] is True


def test_fpr95_of_envelope():
    a_in = np.arange(20, dtype=float)
    assert detectors.dual_threshold_fpr95(a_in, np.ones(20), np.array([-1.0, 100.0]), np.ones(2)) == 0.5


def test_a_nested_density_member_is_the_in_val_density_and_keeps_the_other_scores_tail():
    """``[[a, b], c]``: a Gaussian density over (a, b) fitted on in_val (checked against scipy with one component),
    cross-fitted on in_val itself, then combined with c's p-value. OOD rows break the (a, b) correlation (each
    marginal unchanged, so marginal p-values cannot see it) and shift c down: the nested combination sees both."""
    import pandas as pd
    from scipy.stats import multivariate_normal

    from genood.ood import combined
    from genood.ood.detectors import TaskView
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.95], [0.95, 1.0]])
    names = ["log_likelihood", "orientation@hflip", "orientation@vflip"]

    def draw(n, ood=False):
        ab = rng.standard_normal((n, 2)) if ood else rng.multivariate_normal([0, 0], cov, n)
        return pd.DataFrame(np.column_stack([ab, rng.normal(-1.0 if ood else 0.0, 1.0, n)]), columns=names)
    val, pos, neg = draw(2000), draw(1000), draw(1000, ood=True)
    view = TaskView(pos, neg, val[:2], val, names, {}, {"ood": {"bootstrap": 0}, "run": {"seed": 0},
                    "combined": {"sets": [[names[:2], names[2]], names], "max_components": 1}})
    ref, s_pos, _ = combined._inner_density((val, pos, neg), names[:2], {"max_components": 1}, 0)
    x = val[names[:2]].to_numpy()
    mu, sd = x.mean(0), x.std(0)
    z = (x - mu) / sd
    gauss = multivariate_normal(z.mean(0), np.cov(z.T, bias=True) + 1e-4 * np.eye(2))
    np.testing.assert_allclose(s_pos, gauss.logpdf((pos[names[:2]].to_numpy() - mu) / sd), atol=1e-6)
    assert ref.mean() < gauss.logpdf(z).mean()  # in_val scored by densities that did not see it: held-out values
    out = combined.combined(view)
    nested = "density(log_likelihood+orientation@hflip)+orientation@vflip"
    assert {f"{k}:{nested}" for k in ("density", "fisher", "minp")} <= set(out)
    flat = "log_likelihood+orientation@hflip+orientation@vflip"
    assert out[f"fisher:{nested}"]["auroc"] > out[f"fisher:{flat}"]["auroc"] + 0.1
    assert out[f"fisher:{nested}"]["scores"] == names
