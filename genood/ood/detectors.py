"""Detectors: registered functions of the scores table that write metrics.json entries.

A detector is ``fn(view) -> {entry name: metrics}`` over a :class:`TaskView` (the positive split, the
OOD split, in_train and in_val, the scores present, each stage score's metric info, the configuration);
:func:`evaluate` runs every registered detector for each task (in_test vs ood, generated vs ood).
A detector declares ``optimistic=True`` when it chooses something with the OOD labels (or marks single
entries so); its entries then carry ``optimistic: true`` and are never the headline. Every other entry
carries ``label_free: true``: only in-distribution data (``in_val``) chose anything in it. New detectors are new registrations.

Single- and dual-threshold detectors follow.

Dual threshold (seeds 000/001): a point is in-distribution iff ``score_a > t1`` and
``score_b >= t2`` (log-likelihood and LID). Its ROC is the upper-left envelope of the
(FPR, TPR) operating points over all threshold pairs; its AUROC is the area under that
envelope taken as a step function, ``AUROC = integral_0^1 max{TPR : FPR <= f} df``. With one
score constant this is exactly the single-score AUROC (for untied scores). It picks both
thresholds with the OOD labels in hand, so it is an optimistic upper envelope.

The honest variant fixes ``t2`` from held-out in-distribution data alone (``in_val``: the quantile of
score_b that keeps ``keep`` of its points) and sweeps only ``t1``: points rejected
by ``t2`` get score -inf; this is an ordinary single-score AUROC, comparable to any other.

Exact algorithm: only values of ``score_b`` taken by in-distribution points matter as ``t2``
candidates (K of them; LID is an integer, so K <= D + 1). For each candidate, the best TPR at
"at most k OOD accepted" for every k comes from one sorted search, so the cost is
O(K (n + m) log(n + m)) time and O(n + m) memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List

import numpy as np

from genood.ood.metrics import _clean, detection_metrics, percentile_interval, with_intervals
from genood.registry import Registry

__all__ = ["SPLIT_ORDER", "TaskView", "Detector", "DETECTORS", "register_detector", "evaluate", "present", "scored",
           "single_score", "dual_threshold_envelope", "dual_threshold_auroc", "dual_threshold_fpr95",
           "fixed_second_threshold", "gated_score", "envelope_bootstrap", "dual_threshold_metrics", "dual_threshold"]

SPLIT_ORDER = ("in_train", "in_val", "in_test", "ood", "generated")


@dataclass
class TaskView:
    positive: Any        # DataFrame of the positive split (in_test, or generated)
    negative: Any        # DataFrame of the OOD split
    in_train: Any        # DataFrame of in_train (points the model trained on; for reference only)
    in_val: Any          # DataFrame of in_val (held out from training): everything fitted or thresholded uses it
    names: List[str]     # scores in the table
    info: Dict[str, Dict[str, Any]]   # score name -> its stage's metric info (e.g. {"log_tau": -3.0})
    cfg: Dict[str, Any]


@dataclass(frozen=True)
class Detector:
    name: str
    fn: Callable[[TaskView], Dict[str, Dict[str, Any]]]
    optimistic: bool
    description: str


# every module that registers detectors; imported on first lookup (genood.registry)
DETECTORS: Registry[Detector] = Registry("detector", modules=(__name__, "genood.ood.combined", "genood.ood.best_component",
                                                              "genood.ood.baselines"))


def register_detector(name: str, optimistic: bool, description: str):
    def wrap(fn):
        DETECTORS.add(name, Detector(name, fn, optimistic, description), fn.__module__)
        return fn
    return wrap


def evaluate(table, names: List[str], info: Dict[str, Dict[str, Any]], cfg: Dict[str, Any],
             values: Dict[str, Any] = None) -> Dict[str, Dict[str, Any]]:
    """metrics.json content: every registered detector's entries for in_test vs ood (no prefix) and, when
    generated samples exist, for generated vs ood (prefix ``generated_vs_ood/``). With ``values`` (a dict),
    each entry's oriented detector values (positive, negative) are put there under the entry's key, for
    ROC curves of every detector (the runner writes them to detector_values.parquet)."""
    s = {split: table.loc[table["split"] == split] for split in SPLIT_ORDER}
    tasks = [("", "in_test")] + ([("generated_vs_ood/", "generated")] if not s["generated"].empty else [])
    out: Dict[str, Dict[str, Any]] = {}
    for prefix, positive in tasks:
        view = TaskView(s[positive], s["ood"], s["in_train"], s["in_val"], list(names), info, cfg)
        for det in DETECTORS.values():
            for key, entry in det.fn(view).items():
                if det.optimistic:
                    entry = dict(entry, optimistic=True)
                # label_free: only in-distribution data (in_train / in_val) chose anything; optimistic: OOD labels did
                entry = dict(entry, label_free=bool(entry.get("label_free", True)) and not entry.get("optimistic", False),
                             detector=det.name, model_free=_model_free(entry.get("scores") or [key], names))
                pair = entry.pop("_values", None)
                if values is not None and pair is not None:
                    values[f"{prefix}{key}"] = pair
                out[f"{prefix}{key}"] = entry
    return out


def _model_free(members, names) -> bool:
    """Whether an entry rests on model-free scores only (the reference baselines)."""
    from genood.ood import scores as score_registry

    members = [str(m) for m in members]
    return bool(members) and all(m in names and score_registry.model_free(m) for m in members)


def present(view: TaskView, column: str):
    """A column's values on the positive and the OOD split, rows without a value left out."""
    pos = view.positive[column].to_numpy(dtype=float)
    neg = view.negative[column].to_numpy(dtype=float)
    return pos[~np.isnan(pos)], neg[~np.isnan(neg)]


def scored(view: TaskView, s_in, s_ood) -> Dict[str, Any]:
    """:func:`detection_metrics` of oriented scores plus their bootstrap intervals (``ood.bootstrap`` resamples,
    ``ood.confidence``, seeded by ``run.seed``): what every detector should return per entry."""
    o = view.cfg.get("ood", {})
    entry = detection_metrics(s_in, s_ood)
    entry = with_intervals(entry, s_in, s_ood, int(o.get("bootstrap") or 0), float(o.get("confidence", 0.95)),
                           int(view.cfg.get("run", {}).get("seed", 0)))
    entry["_values"] = (np.asarray(s_in, dtype=float), np.asarray(s_ood, dtype=float))  # taken off by evaluate
    return entry


@register_detector("single", optimistic=False,
                   description="each learned score alone, oriented so higher = in-distribution; rows without a value are "
                               "left out (model-free statistics are detectors through ood.baselines)")
def single_score(view: TaskView) -> Dict[str, Dict[str, Any]]:
    from genood.ood import scores as score_registry

    out = {}
    for name in view.names:
        if score_registry.model_free(name):  # no direction: a pixel statistic is a detector as baseline:<name> (two-sided)
            continue
        pos, neg = present(view, name)
        if pos.size and neg.size:
            out[name] = scored(view, score_registry.oriented(name, pos), score_registry.oriented(name, neg))
            out[name].update(view.info.get(name, view.info.get(name.split("@", 1)[0], {})))  # a vector's info covers its components
    return out


def dual_threshold_envelope(a_in, b_in, a_ood, b_ood) -> np.ndarray:
    """``g[k]`` = the highest TPR reachable while accepting at most k of the m OOD points, k = 0..m."""
    a_in, b_in, a_ood, b_ood = (_clean(v) for v in (a_in, b_in, a_ood, b_ood))
    n, m = a_in.size, a_ood.size
    best = np.zeros(m + 1)
    for t2 in np.unique(b_in):
        ins = np.sort(a_in[b_in >= t2])
        oods = np.sort(a_ood[b_ood >= t2])[::-1]  # descending
        # accepting at most k OOD: t1 = the (k+1)-th largest passing OOD score (accept a > t1)
        k = np.arange(m + 1)
        t1 = np.where(k < oods.size, oods[np.minimum(k, max(oods.size - 1, 0))] if oods.size else -np.inf, -np.inf)
        tpr = (ins.size - np.searchsorted(ins, t1, side="right")) / n
        np.maximum(best, tpr, out=best)
    return best


def dual_threshold_auroc(a_in, b_in, a_ood, b_ood) -> float:
    """Area under the dual-threshold ROC envelope (step function; see module docstring)."""
    g = dual_threshold_envelope(a_in, b_in, a_ood, b_ood)
    return float(g[:-1].mean())


def dual_threshold_fpr95(a_in, b_in, a_ood, b_ood) -> float:
    """Smallest OOD acceptance rate at which some threshold pair accepts >= 95% of in-distribution."""
    g = dual_threshold_envelope(a_in, b_in, a_ood, b_ood)
    m = g.size - 1
    return float(np.argmax(g >= 0.95) / m) if (g >= 0.95).any() else 1.0


def fixed_second_threshold(b_val, keep: float = 0.95) -> float:
    """The ``t2`` that keeps (at least) ``keep`` of the in-distribution training points (b >= t2)."""
    b_val = np.sort(_clean(b_val))
    return float(b_val[int(np.floor((1.0 - keep) * b_val.size))])


def gated_score(a, b, t2: float) -> np.ndarray:
    """Score ``a`` where ``b >= t2``, -inf elsewhere: the honest dual-threshold detector's score."""
    a, b = _clean(a), _clean(b)
    return np.where(b >= t2, a, -np.inf)


def envelope_bootstrap(a_in, b_in, a_ood, b_ood, b: int, seed: int) -> Dict[str, np.ndarray]:
    """Envelope AUROC and FPR95 over ``b`` stratified resamples (the thresholds are re-chosen in each)."""
    a_in, b_in, a_ood, b_ood = (_clean(v) for v in (a_in, b_in, a_ood, b_ood))
    rng = np.random.default_rng([int(seed), 0xE7E])
    n, m = a_in.size, a_ood.size
    auc, fpr = np.empty(b), np.empty(b)
    for i in range(b):
        p, q = rng.integers(0, n, n), rng.integers(0, m, m)
        g = dual_threshold_envelope(a_in[p], b_in[p], a_ood[q], b_ood[q])
        auc[i] = g[:-1].mean()
        fpr[i] = np.argmax(g >= 0.95) / m if (g >= 0.95).any() else 1.0
    return {"auroc": auc, "fpr95": fpr}


def dual_threshold_metrics(a_in, b_in, a_ood, b_ood, b_val, keep: float = 0.95, bootstrap: int = 0,
                           level: float = 0.95, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """metrics.json entries for the dual-threshold detectors (optimistic envelope and honest variant), with
    bootstrap intervals when ``bootstrap`` > 0 (the envelope's resamples are capped at 200 above 4,000 points)."""
    n_in, n_ood = int(np.size(a_in)), int(np.size(a_ood))
    t2 = fixed_second_threshold(b_val, keep)
    h_in, h_ood = gated_score(a_in, b_in, t2), gated_score(a_ood, b_ood, t2)
    honest = with_intervals(detection_metrics(h_in, h_ood), h_in, h_ood, bootstrap, level, seed)
    honest["t2"] = t2
    honest["_values"] = (h_in, h_ood)
    envelope = {"auroc": dual_threshold_auroc(a_in, b_in, a_ood, b_ood),
                "fpr95": dual_threshold_fpr95(a_in, b_in, a_ood, b_ood),
                "n_in": n_in, "n_ood": n_ood, "optimistic": True}
    if bootstrap:
        nb = int(bootstrap) if n_in + n_ood <= 4000 else min(int(bootstrap), 200)
        boot = envelope_bootstrap(a_in, b_in, a_ood, b_ood, nb, seed)
        envelope.update({f"{k}_ci": percentile_interval(v, level) for k, v in boot.items()},
                        bootstrap=nb, confidence=float(level))
    return {"envelope": envelope, "fixed": honest}


@register_detector("dual_threshold", optimistic=False,
                   description="log-likelihood and LID (seeds 000/001): the envelope (optimistic) and the honest variant "
                               "with the LID threshold fixed on in_val")
def dual_threshold(view: TaskView) -> Dict[str, Dict[str, Any]]:
    if not {"lid", "log_likelihood"} <= set(view.names):
        return {}
    pick = lambda f: f.dropna(subset=["lid"])
    p, n, tr = pick(view.positive), pick(view.negative), pick(view.in_val)
    if not (len(p) and len(n) and len(tr)):
        return {}
    keep = float(view.cfg["lid"]["keep"])
    info = view.info.get("lid", {})
    o = view.cfg.get("ood", {})
    dual = dual_threshold_metrics(p["log_likelihood"], p["lid"], n["log_likelihood"], n["lid"], tr["lid"], keep,
                                  int(o.get("bootstrap") or 0), float(o.get("confidence", 0.95)),
                                  int(view.cfg.get("run", {}).get("seed", 0)))
    return {"dual_threshold": dict(dual["envelope"], aupr_in=None, aupr_out=None, **info),
            "dual_threshold_fixed": dict(dual["fixed"], **info, keep=keep)}
