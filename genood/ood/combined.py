"""Label-free combined detectors: several scores of one model, fitted on held-out in-distribution data only.

For each score set in ``combined.sets`` (a list of lists of score names; each set becomes entries named
after its members):

* ``density:<a>+<b>+...`` (DoSE-style, Morningstar et al. 2021; over the ``score_norms`` vector it is MSMA):
  the scores, oriented so higher = in-distribution and standardised with in_val's mean and standard
  deviation, get a density fitted on the ``in_val`` rows: a Gaussian mixture whose number of components
  (1..``combined.max_components``) maximises the 2-fold held-out log-likelihood on in_val, or a Gaussian
  KDE whose bandwidth does (``combined.density``). The detector is the fitted log density.
* ``fisher:<a>+<b>+...``: Fisher's combination of per-score p-values. Each score's left-tail p-value
  against in_val, p = (1 + #{in_val <= s}) / (n_val + 1) (low oriented scores are unusual), combined as
  T = -2 sum log p; the detector is -T. A score registered with ``tails: both`` (a likelihood's terms,
  which have no direction) gets the two-sided p = min(1, 2 min(p_left, p_right)) instead. Beyond in_val's
  extremes the empirical p-value would stop at its floor 1 / (n_val + 1) and tie every point there (an
  in_test point just past in_val's minimum with an OOD image far past it: with 400 in_val points, 2% of
  MNIST's test digits tied with every far set and capped their AUROC at 0.989); there it continues as an
  exponential tail, p = p_floor * exp(-d / b), d the distance past the extreme and b the mean excess of
  in_val's sqrt(n_val) most extreme points over the next one (fitted on in_val alone; equal to the empirical
  p-value everywhere inside in_val's range).
* ``minp:<a>+<b>+...``: Tippett's combination of the same p-values: the detector is log min_i p_i, so one
  score far in its tail is enough (where Fisher dilutes it with the others).

Nothing here sees test or OOD rows when fitting: :func:`fit_density` and :func:`fit_pvalues` get the
in_val matrix only (tests check this). Rows missing any score of a set (e.g. points without an LID)
are left out of that set's entries.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

import numpy as np

from genood.ood import scores as score_registry
from genood.ood.detectors import TaskView, register_detector, scored

__all__ = ["oriented_matrix", "fit_density", "fit_log_pvalues", "tail_scales", "fit_pvalues", "fit_min_p", "set_label",
           "combined"]


def oriented_matrix(frame, names: List[str]) -> np.ndarray:
    return np.column_stack([score_registry.oriented(n, frame[n].to_numpy(dtype=float)) for n in names])


def _complete(frame, names: List[str]):
    return frame.dropna(subset=names)


def _gmm_candidates(max_components: int, n: int) -> List[int]:
    return [k for k in range(1, int(max_components) + 1) if k * 5 <= n] or [1]


_FITTED: Dict[str, Dict[str, Any]] = {}  # in_val content + settings -> a fitted density (see fit_density)


def fit_density(x_val: np.ndarray, method: str = "gmm", max_components: int = 8, seed: int = 0) -> Dict[str, Any]:
    """A density fitted to the in_val matrix ``x_val`` (n, k): returns {"log_density": fn(x) -> (m,), ...details}.

    A fit depends on in_val alone, so it is made once per process for the same matrix and settings and
    shared by every task of a run (in_test and generated against each of its OOD sets)."""
    import hashlib

    key = hashlib.sha256(np.ascontiguousarray(x_val, dtype=np.float64).tobytes()
                         + repr((x_val.shape, method, int(max_components), int(seed))).encode()).hexdigest()
    if key not in _FITTED:
        if len(_FITTED) >= 64:
            _FITTED.pop(next(iter(_FITTED)))
        _FITTED[key] = _fit_density(x_val, method, max_components, seed)
    return dict(_FITTED[key])


def _fit_density(x_val: np.ndarray, method: str, max_components: int, seed: int) -> Dict[str, Any]:
    from sklearn.mixture import GaussianMixture
    from sklearn.neighbors import KernelDensity

    mu, sd = x_val.mean(axis=0), x_val.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    z = (x_val - mu) / sd
    n = z.shape[0]
    halves = np.array_split(np.random.default_rng([int(seed), 0xD05E]).permutation(n), 2)

    def heldout(make: Callable[[], Any]) -> float:
        total = 0.0
        for i in range(2):
            fit_rows, test_rows = halves[i], halves[1 - i]
            total += float(make().fit(z[fit_rows]).score_samples(z[test_rows]).sum())
        return total / n

    if method == "gmm":
        make = lambda k: GaussianMixture(k, covariance_type="full", reg_covar=1e-4, n_init=2, random_state=int(seed))
        candidates = _gmm_candidates(max_components, n // 2)
        scores = {k: heldout(lambda k=k: make(k)) for k in candidates}
        best = max(scores, key=scores.get)
        model = make(best).fit(z)
        detail = {"components": int(best), "heldout_loglik": {str(k): v for k, v in scores.items()}}
    elif method == "kde":
        scott = n ** (-1.0 / (z.shape[1] + 4))
        grid = scott * np.array([0.25, 0.5, 1.0, 2.0, 4.0])
        make = lambda b: KernelDensity(bandwidth=float(b))
        scores = {float(b): heldout(lambda b=b: make(b)) for b in grid}
        best = max(scores, key=scores.get)
        model = make(best).fit(z)
        detail = {"bandwidth": float(best), "heldout_loglik": {f"{k:.4g}": v for k, v in scores.items()}}
    else:
        raise ValueError(f"combined.density must be gmm or kde, got {method!r}.")
    detail["log_density"] = lambda x: model.score_samples((np.asarray(x, dtype=float) - mu) / sd)
    return detail


def fit_log_pvalues(x_val: np.ndarray, two_sided=None) -> Callable[[np.ndarray], np.ndarray]:
    """Per-score log p-values against the in_val matrix: fn(x (m, k)) -> (m, k). Score j's left-tail p-value is
    (1 + #{in_val <= x_j}) / (n_val + 1); where ``two_sided[j]`` it is min(1, 2 min(left, right)), the right tail
    (1 + #{in_val >= x_j}) / (n_val + 1). Past in_val's minimum (maximum) a tail's p-value goes on falling as an
    exponential tail with the scale :func:`tail_scales` fits on in_val, instead of staying at 1 / (n_val + 1)."""
    ref = np.sort(x_val, axis=0)
    n, k = ref.shape
    both = np.zeros(k, dtype=bool) if two_sided is None else np.asarray(two_sided, dtype=bool)
    if both.shape != (k,):
        raise ValueError(f"two_sided has {both.size} entries for {k} scores")
    b_low, b_high = tail_scales(ref)

    def log_p(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        below = np.column_stack([np.searchsorted(ref[:, j], x[:, j], side="right") for j in range(k)])
        left = np.log((1.0 + below) / (n + 1.0)) - _past(ref[0] - x, b_low)  # past in_val's minimum: the tail
        if not both.any():
            return left
        above = np.column_stack([n - np.searchsorted(ref[:, j], x[:, j], side="left") for j in range(k)])
        right = np.log((1.0 + above) / (n + 1.0)) - _past(x - ref[-1], b_high)
        return np.where(both, np.minimum(0.0, np.log(2.0) + np.minimum(left, right)), left)
    return log_p


def _past(d: np.ndarray, b: np.ndarray) -> np.ndarray:
    """An exponential tail's -log survival ratio for a distance ``d`` past in_val's extreme (0 inside the range, and
    where the column has no tail scale)."""
    with np.errstate(invalid="ignore"):  # d / b is nan where both are infinite; the mask leaves those out
        return np.where(np.isfinite(b) & (d > 0), d / b, 0.0)


def tail_scales(ref: np.ndarray):
    """Per column of the sorted in_val matrix ``ref`` (n, k): the exponential tail's scale below the minimum and
    above the maximum, each the mean excess of the m = ceil(sqrt(n)) most extreme values over the (m+1)-th
    (an exponential tail's maximum-likelihood scale). A column without spread there gets an infinite scale: its
    p-value keeps the empirical floor past the extreme (no tail to extrapolate)."""
    n = ref.shape[0]
    m = int(min(max(np.ceil(np.sqrt(n)), 2), n - 1)) if n > 2 else 1
    with np.errstate(invalid="ignore"):
        low = (ref[m] - ref[:m]).mean(axis=0) if n > 1 else np.zeros(ref.shape[1])
        high = (ref[::-1][:m] - ref[n - 1 - m]).mean(axis=0) if n > 1 else np.zeros(ref.shape[1])
    fix = lambda b: np.where(np.isfinite(b) & (b > 0), b, np.inf)
    return fix(low), fix(high)


def fit_pvalues(x_val: np.ndarray, two_sided=None) -> Callable[[np.ndarray], np.ndarray]:
    """Fisher's statistic, negated, against the in_val matrix: fn(x (m, k)) -> 2 sum_j log p_j = -T."""
    log_p = fit_log_pvalues(x_val, two_sided)
    return lambda x: 2.0 * log_p(x).sum(axis=1)


def fit_min_p(x_val: np.ndarray, two_sided=None) -> Callable[[np.ndarray], np.ndarray]:
    """Tippett's combination against the in_val matrix: fn(x (m, k)) -> log of the smallest per-score p-value."""
    log_p = fit_log_pvalues(x_val, two_sided)
    return lambda x: log_p(x).min(axis=1)


def set_label(names: List[str]) -> str:
    return "+".join(names)


@register_detector("combined", optimistic=False,
                   description="label-free combinations of scores fitted on in_val: a density (GMM or KDE) over the "
                               "oriented scores, and Fisher's combination of per-score p-values")
def combined(view: TaskView) -> Dict[str, Dict[str, Any]]:
    ccfg = view.cfg.get("combined", {})
    seed = int(view.cfg.get("run", {}).get("seed", 0))
    out = {}
    for members in ccfg.get("sets", []) or []:
        # a vector score (e.g. score_norms) stands for all its components <name>@<label>
        names = [c for n in members for c in ([str(n)] if str(n) in view.names
                                              else [v for v in view.names if v.startswith(f"{n}@")])]
        if not names or len(names) < len(members) or not set(names) <= set(view.names):
            continue
        val = _complete(view.in_val, names)
        pos, neg = _complete(view.positive, names), _complete(view.negative, names)
        if len(val) < 4 or not len(pos) or not len(neg):
            continue
        x_val = oriented_matrix(val, names)
        x_pos, x_neg = oriented_matrix(pos, names), oriented_matrix(neg, names)
        label = set_label([str(m) for m in members])
        fitted = fit_density(x_val, str(ccfg.get("density", "gmm")), int(ccfg.get("max_components", 8)), seed)
        density = fitted.pop("log_density")
        out[f"density:{label}"] = dict(scored(view, density(x_pos), density(x_neg)), scores=names, fitted_on="in_val",
                                       n_fit=int(len(val)), density=str(ccfg.get("density", "gmm")), **fitted)
        both = [score_registry.two_sided(n) for n in names]
        tails = {"two_sided": [n for n, b in zip(names, both) if b]} if any(both) else {}
        if ccfg.get("fisher", True):
            fisher = fit_pvalues(x_val, both)
            out[f"fisher:{label}"] = dict(scored(view, fisher(x_pos), fisher(x_neg)), scores=names, fitted_on="in_val",
                                          n_fit=int(len(val)), **tails)
        if ccfg.get("min_p", True):
            min_p = fit_min_p(x_val, both)
            out[f"minp:{label}"] = dict(scored(view, min_p(x_pos), min_p(x_neg)), scores=names, fitted_on="in_val",
                                        n_fit=int(len(val)), **tails)
    return out
