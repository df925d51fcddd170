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

A member of a set may itself be a list of scores, ``[[a, b], c]``: it enters the set as one statistic, the
log-density of a density fitted to its scores on in_val (as ``density:a+b``), named ``density(a+b)``, with its
lower tail the unusual one. So ``fisher:density(a+b)+c`` lets a DoSE density and a score with a meaningful tail
(``orientation``) each count where they are strong; a density over all of them at once can drown one score's
tail in the others' spread. The statistic's in_val reference values are cross-fitted (two halves of in_val,
each scored by a density fitted on the other half) so in_val is not scored by a density that saw it; test and
OOD points are scored by the density fitted on all of in_val.

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


def _member_label(member) -> str:
    return f"density({set_label([str(m) for m in member])})" if isinstance(member, list) else str(member)


def _columns(member, names: List[str]) -> List[str]:
    """The table columns a plain member stands for (a vector score: all its components <name>@<label>)."""
    return [str(member)] if str(member) in names else [v for v in names if v.startswith(f"{member}@")]


def _inner_density(frames, names: List[str], ccfg: Dict[str, Any], seed: int):
    """A nested member's statistic on (in_val, positive, negative): the log-density of a density over ``names``
    fitted on in_val; in_val's own values cross-fitted over two halves, the others from the full fit."""
    method, k = str(ccfg.get("density", "gmm")), int(ccfg.get("max_components", 8))
    x_val, x_pos, x_neg = (oriented_matrix(f, names) for f in frames)
    full = fit_density(x_val, method, k, seed)["log_density"]
    ref = np.empty(len(x_val))
    halves = np.array_split(np.random.default_rng([int(seed), 0xC0F1]).permutation(len(x_val)), 2)
    for i in range(2):
        ref[halves[1 - i]] = fit_density(x_val[halves[i]], method, k, seed)["log_density"](x_val[halves[1 - i]])
    return ref, full(x_pos), full(x_neg)


def _set_matrices(view: TaskView, members, ccfg: Dict[str, Any], seed: int):
    """(in_val, positive, negative) oriented matrices of one set, its columns' labels and two-sidedness, and the
    scores used; None when the set cannot be formed here (a member not computed, too few complete rows)."""
    parts = []
    for m in members:
        found = [_columns(n, view.names) for n in (m if isinstance(m, list) else [m])]
        if not all(found):
            return None
        parts.append((m, [c for cols in found for c in cols]))
    used = list(dict.fromkeys(c for _, cols in parts for c in cols))
    frames = tuple(_complete(f, used) for f in (view.in_val, view.positive, view.negative))
    if len(frames[0]) < 4 or not len(frames[1]) or not len(frames[2]):
        return None
    blocks, labels, both = [[], [], []], [], []
    for m, cols in parts:
        if isinstance(m, list):
            values = _inner_density(frames, cols, ccfg, seed)
            labels.append(_member_label(m))
            both.append(False)
        else:
            values = tuple(oriented_matrix(f, cols) for f in frames)
            labels += cols
            both += [score_registry.two_sided(c) for c in cols]
        for block, v in zip(blocks, values):
            block.append(np.asarray(v, dtype=float).reshape(len(v), -1))
    return [np.hstack(b) for b in blocks], labels, both, used


@register_detector("combined", optimistic=False,
                   description="label-free combinations of scores fitted on in_val: a density (GMM or KDE) over the "
                               "oriented scores, and Fisher's combination of per-score p-values")
def combined(view: TaskView) -> Dict[str, Dict[str, Any]]:
    ccfg = view.cfg.get("combined", {})
    seed = int(view.cfg.get("run", {}).get("seed", 0))
    out = {}
    for members in ccfg.get("sets", []) or []:
        formed = _set_matrices(view, list(members), ccfg, seed)
        if formed is None:
            continue
        (x_val, x_pos, x_neg), columns, both, names = formed
        label = set_label([_member_label(m) for m in members])
        n_fit = len(x_val)
        fitted = fit_density(x_val, str(ccfg.get("density", "gmm")), int(ccfg.get("max_components", 8)), seed)
        density = fitted.pop("log_density")
        out[f"density:{label}"] = dict(scored(view, density(x_pos), density(x_neg)), scores=names, fitted_on="in_val",
                                       n_fit=n_fit, density=str(ccfg.get("density", "gmm")), **fitted)
        tails = {"two_sided": [c for c, b in zip(columns, both) if b]} if any(both) else {}
        if ccfg.get("fisher", True):
            fisher = fit_pvalues(x_val, both)
            out[f"fisher:{label}"] = dict(scored(view, fisher(x_pos), fisher(x_neg)), scores=names, fitted_on="in_val",
                                          n_fit=n_fit, **tails)
        if ccfg.get("min_p", True):
            min_p = fit_min_p(x_val, both)
            out[f"minp:{label}"] = dict(scored(view, min_p(x_pos), min_p(x_neg)), scores=names, fitted_on="in_val",
                                        n_fit=n_fit, **tails)
    return out
