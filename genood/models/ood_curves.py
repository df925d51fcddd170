"""OOD curves during training (seed 003's ``train_unsup_ood.py``): how the likelihood of the in-distribution test
split and of every OOD set of ``data.ood`` moves while the model trains.

With ``training.ood_curve_every: N`` (> 0), every N steps (and at the last) the model scores fixed, seeded
subsamples of ``training.ood_curve_points`` images of the in-distribution test split and of each OOD set (the
same dequantization noise every time) and records their mean bits/dim and the likelihood's AUROC (in_test the
positive class; it needs no other model). Rows (step, dataset, group, bits_per_dim, auroc) go to
``training_curves.parquet`` in the run directory after every evaluation (atomically; a resumed run keeps the rows
of the steps it had done), to W&B as ``ood_curve/<set>/bits_per_dim`` and ``.../auroc``, and to the run's
figures and report as curves. The evaluation never changes the weights, the optimiser or the random streams of
training, so a model trained with curves is bit-identical to one trained without.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

__all__ = ["OodCurves", "curves_figure", "CURVES_FILE"]

CURVES_FILE = "training_curves.parquet"


class OodCurves:
    """A training callback ``(step, loss)``; :meth:`attach` gives it the model before training starts."""

    def __init__(self, cfg: Dict[str, Any], directory: Path, shape: Tuple[int, ...], log: Callable[[str], None],
                 tracker=None):
        from genood import runconfig
        from genood.data.registry import load_split
        from genood.data.transforms import eval_dequantization_noise, match_shape

        tcfg = cfg["training"]
        self.every, self.total = int(tcfg["ood_curve_every"]), int(tcfg["steps"])
        self.path, self.log, self.tracker = Path(directory) / CURVES_FILE, log, tracker
        self.batch, self.model = int(cfg["ood"]["batch_size"]), None
        seed, n = int(cfg["run"]["seed"]), int(tcfg["ood_curve_points"])
        sets = [(cfg["data"]["in_distribution"], "in_test")] + runconfig.ood_sets(cfg["data"]["ood"])
        self.sets: List[Tuple[str, str, torch.Tensor]] = []
        for name, group in sets:
            images = load_split(name, "test").images
            idx = np.sort(np.random.default_rng([seed, 0xC0B]).permutation(len(images))[:n])
            x = torch.from_numpy(match_shape(images[idx], shape)).permute(0, 3, 1, 2).float()
            x = x + eval_dequantization_noise(len(idx), shape, seed, f"ood_curve:{name}", cfg["data"]["eval_dequantization"])
            self.sets.append((name, group, x))

    def attach(self, model) -> None:
        self.model = model

    def _bits(self, x: torch.Tensor) -> np.ndarray:
        device = next(self.model.parameters()).device
        with torch.no_grad():
            return torch.cat([self.model.bits_per_dim(x[s:s + self.batch].to(device)).cpu()
                              for s in range(0, len(x), self.batch)]).double().numpy()

    def __call__(self, step: int, loss: float) -> None:
        if self.model is None or not (step % self.every == 0 or step == self.total):
            return
        import pandas as pd

        from genood import rundir
        from genood.ood.metrics import auroc

        was_training = self.model.training
        self.model.eval()
        try:
            bits = {name: self._bits(x) for name, _, x in self.sets}
        finally:
            self.model.train(was_training)
        in_name = self.sets[0][0]
        rows = [{"step": step, "dataset": name, "group": group, "bits_per_dim": float(np.mean(bits[name])),
                 "auroc": float("nan") if name == in_name else auroc(-bits[in_name], -bits[name])}
                for name, group, _ in self.sets]
        old = pd.read_parquet(self.path) if self.path.exists() else pd.DataFrame()
        frame = pd.concat([old[old["step"] < step] if len(old) else old, pd.DataFrame(rows)], ignore_index=True)
        rundir.atomic_write(self.path, lambda p: frame.to_parquet(p, index=False))
        if self.tracker is not None:
            values = {f"ood_curve/{r['dataset']}/bits_per_dim": r["bits_per_dim"] for r in rows}
            values.update({f"ood_curve/{r['dataset']}/auroc": r["auroc"] for r in rows if r["dataset"] != in_name})
            self.tracker.log(values, step=step)
        self.log(f"ood curve at step {step}: " + ", ".join(f"{r['dataset']} {r['bits_per_dim']:.3f} bpd"
                                                           + ("" if r["dataset"] == in_name else f" (AUROC {r['auroc']:.3f})")
                                                           for r in rows))


def curves_figure(directory: Path, title: str = "") -> Optional[Any]:
    """Mean bits/dim of in_test and every OOD set against the training step, and the likelihood's AUROC."""
    path = Path(directory) / CURVES_FILE
    if not path.exists():
        return None
    import pandas as pd
    from plotly.subplots import make_subplots

    frame = pd.read_parquet(path)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("mean bits/dim", "likelihood AUROC (in_test vs the set)"))
    for k, (name, part) in enumerate(frame.groupby("dataset", sort=False)):
        fig.add_scatter(x=part["step"], y=part["bits_per_dim"], mode="lines+markers", name=name, legendgroup=name,
                        row=1, col=1)
        if part["auroc"].notna().any():
            fig.add_scatter(x=part["step"], y=part["auroc"], mode="lines+markers", name=name, legendgroup=name,
                            showlegend=False, row=1, col=2)
    fig.update_xaxes(title_text="training step")
    fig.update_layout(title=title or "OOD curves during training", template="plotly_white", width=1100, height=480)
    return fig
