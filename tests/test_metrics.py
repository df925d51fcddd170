import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from genood.ood import metrics


@pytest.mark.parametrize("seed", range(6))
def test_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n_in, n_ood = rng.integers(5, 300, size=2)
    s_in = rng.normal(0.5, 1, n_in)
    s_ood = rng.normal(0, 1, n_ood)
    if seed % 2:  # ties across and within classes
        s_in, s_ood = np.round(s_in, 1), np.round(s_ood, 1)
    y = np.r_[np.ones(n_in), np.zeros(n_ood)]
    s = np.r_[s_in, s_ood]
    m = metrics.detection_metrics(s_in, s_ood)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert m["fpr95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    assert (m["n_in"], m["n_ood"]) == (n_in, n_ood)


def test_auroc_is_never_flipped():
    # OOD scoring higher than in-distribution is reported as is (the paradox), not as 1 - AUROC
    assert metrics.auroc([0.0, 0.1], [1.0, 2.0]) == 0.0
    assert metrics.auroc([1.0, 1.0], [1.0]) == 0.5


def test_fpr95_definition_by_hand():
    s_in = np.arange(1, 21, dtype=float)   # 20 in-distribution scores 1..20
    s_ood = np.array([0.5, 1.5, 2.5, 30.0])
    # accepting 95% of in-distribution (19 of 20) needs t = 2, which accepts 2.5 and 30 of OOD
    assert metrics.fpr_at_tpr(s_in, s_ood) == 0.5


def test_roc_curve_points_ends_and_area():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1, 1, 50), rng.normal(0, 1, 70)
    fpr, tpr = metrics.roc_curve_points(a, b)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.auroc(a, b), abs=1e-12)


def test_nan_scores_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        metrics.auroc([np.nan, 1.0], [0.0])


def test_infinite_scores_tie_correctly():
    # the honest dual-threshold detector gives gated-out points -inf; ties among them must stay ties
    s_in = np.array([3.0, -np.inf, 2.0, -np.inf])
    s_ood = np.array([-np.inf, 1.0, -np.inf])
    y = np.r_[np.ones(4), np.zeros(3)]
    big = 1e300  # sklearn cannot take inf; a huge finite stand-in keeps the order and the ties
    s = np.where(np.isinf(np.r_[s_in, s_ood]), -big, np.r_[s_in, s_ood])
    assert metrics.average_precision(s_in, s_ood) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert metrics.auroc(s_in, s_ood) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
