"""Views of a model's internals for chosen images (seed 003's coupling-layer and latent visualisations).

A family that offers ``model_views(x) -> [(title, array (B, H, W))]`` (a capability: coupling flows give the
s and t of every coupling layer and the latent of every scale) gets them drawn for a few in-distribution
test images and a few images of the first OOD set: the runner stores the arrays as ``model_views.npz`` in the
run directory (atomically) and draws them as an image grid (rows: images, columns: views) in the run's
figures and the report.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import torch

__all__ = ["VIEWS_FILE", "write_model_views", "views_figure"]

VIEWS_FILE = "model_views.npz"


def write_model_views(model, scored: List[tuple], directory: Path, n: int = 4) -> Optional[Path]:
    """Compute and store the views of ``n`` in_test images and ``n`` of the first OOD set, if the model has views."""
    if not hasattr(model, "model_views"):
        return None
    from genood import rundir

    chosen = [(key, x[:n]) for key, _, x, _ in scored if key == "in_test"]
    chosen += [(key, x[:n]) for key, _, x, _ in scored if key.startswith("ood")][:1]
    if not chosen:
        return None
    device = next(model.parameters()).device
    rows, arrays, titles = [], [], None
    for key, x in chosen:
        with torch.no_grad():
            panels = model.model_views(x.to(device))
        titles = [t for t, _ in panels]
        arrays.append([a.detach().cpu().double().numpy() for _, a in panels])
        rows += [f"{key} #{i}" for i in range(x.shape[0])]
    stacked = {f"view{j}": np.concatenate([a[j] for a in arrays]) for j in range(len(titles))}
    path = Path(directory) / VIEWS_FILE

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, titles=np.array(titles), rows=np.array(rows), **stacked)
    rundir.atomic_write(path, write)
    return path


def views_figure(directory: Path, title: str = "", max_columns: int = 10) -> Optional[Any]:
    """The stored views as a grid of heatmaps (rows: images, columns: the first ``max_columns`` views)."""
    path = Path(directory) / VIEWS_FILE
    if not path.exists():
        return None
    from plotly.subplots import make_subplots

    with np.load(path, allow_pickle=False) as f:
        every, rows = [str(t) for t in f["titles"]], [str(r) for r in f["rows"]]
        # the first panels (input, the first layers) and the last ones (the latents) when there are too many
        tail = [j for j, t in enumerate(every) if t.startswith("latent")][-max(1, max_columns // 3):]
        head = [j for j in range(len(every)) if j not in tail][:max_columns - len(tail)]
        keep = head + tail
        titles = [every[j].replace(": ", "<br>", 1).replace(" ", "<br>", 1) if ": " in every[j] else every[j]
                  for j in keep]  # short lines ("c0", "channel0 s0", "s"): no overlapping titles
        views = [f[f"view{j}"] for j in keep]
    fig = make_subplots(rows=len(rows), cols=len(titles), column_titles=titles, row_titles=rows,
                        horizontal_spacing=0.01, vertical_spacing=0.01)
    for i in range(len(rows)):
        for j, v in enumerate(views):
            fig.add_heatmap(z=v[i][::-1], colorscale="Greys", showscale=False, row=i + 1, col=j + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=title or "model views", template="plotly_white", width=110 * len(titles) + 160,
                      height=100 * len(rows) + 120, font=dict(size=9))
    return fig
