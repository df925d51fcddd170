"""How separable is an OOD set from the in-distribution at all? A supervised discriminator's AUROC per set.

A label-free detector that scores 0.64 on a set can be far from what the data allow or at their limit; the two
call for different work. This module measures the second number: a binary classifier trained to tell the
in-distribution's training images from the set's training images, with both labels (so it is *optimistic* by
construction, never a detector), and its AUROC on the two test splits (in-distribution = positive class, higher
logit = more in-distribution, as every detector). It is a lower bound on what any detector could reach there (a
stronger discriminator could do better); where it is near 1 and the detectors are not, the gap is the model's or
the score's, not the data's.

The recipe: the grouping classifier's small CNN (:mod:`genood.ood.semantics`: two 3x3 convolutions of 16 and 32
channels with ReLU and 2x2 max pooling, a linear layer) with one logit, Adam at 1e-3, ``STEPS`` steps of
``BATCH`` in-distribution and ``BATCH`` set images, logistic loss, a fixed seed. The in-distribution side uses
the training positions of the run's holdout (``data.val_fraction``, ``holdout_seed``); a set derived from the
in-distribution by label-keeping steps (``fmnist:hflip``) uses the same positions of its own training split and
is drawn *paired* (the same images, transformed and not, in one batch), which asks the discriminator exactly
what the transform changed; any other set uses its whole training split. The AUROC carries a stratified bootstrap
interval. Results are cached under the data root (``cache/separability/``, JSON only, written after every set so
an interrupted measurement keeps what it finished), keyed by the dataset's files, the holdout and the recipe.

    python -m genood.ood.separability fmnist                     # the suite's 18 transforms of fmnist
    python -m genood.ood.separability mnist mnist:hflip fmnist   # chosen sets
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from genood.ood import semantics

__all__ = ["STEPS", "BATCH", "RECIPE", "Separability", "train_discriminator", "discriminator_auroc", "measure"]

STEPS = 3000          # ~75 s on one CPU thread for 28x28 images
BATCH = 64            # images of each side per step
BOOTSTRAP = 300
RECIPE = f"disc cnn16-32 adam1e-3 batch2x{BATCH} v1"


@dataclass(frozen=True)
class Separability:
    """One set's measurement: the discriminator's test AUROC and interval, and how it was trained."""
    name: str
    auroc: float
    auroc_ci: Tuple[float, float]
    n_in: int                  # test images of each side the AUROC was measured on
    n_ood: int
    paired: bool
    steps: int
    seconds: float

    def row(self) -> Dict[str, Any]:
        return {"ood_dataset": self.name, "separability_auroc": self.auroc, "separability_lo": self.auroc_ci[0],
                "separability_hi": self.auroc_ci[1], "n_in": self.n_in, "n_ood": self.n_ood, "paired": self.paired,
                "steps": self.steps, "seconds": self.seconds, "optimistic": True}

    @classmethod
    def from_row(cls, r: Dict[str, Any]) -> "Separability":
        """The measurement back from its cached :meth:`row`."""
        return cls(str(r["ood_dataset"]), float(r["separability_auroc"]),
                   (float(r["separability_lo"]), float(r["separability_hi"])), int(r["n_in"]), int(r["n_ood"]),
                   bool(r["paired"]), int(r["steps"]), float(r["seconds"]))


def train_discriminator(in_images: np.ndarray, ood_images: np.ndarray, steps: int = STEPS, seed: int = 0,
                        paired: bool = False, progress: Optional[str] = None):
    """A one-logit CNN trained to score uint8 (N,H,W,C) ``in_images`` high and ``ood_images`` low (module in eval
    mode). ``paired``: the two arrays are aligned (the same images, transformed and not) and drawn together."""
    import torch
    if in_images.shape[1:] != ood_images.shape[1:]:
        raise ValueError(f"the two sides have different image shapes {in_images.shape[1:]} and "
                         f"{ood_images.shape[1:]}; a discriminator needs one shape")
    if paired and len(in_images) != len(ood_images):
        raise ValueError("paired sides must hold the same number of images")
    _, h, w, c = in_images.shape
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = semantics._net(c, h, w, 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xa, xb = semantics._tensor(in_images), semantics._tensor(ood_images)
    target = torch.cat([torch.ones(BATCH), torch.zeros(BATCH)])
    for _ in _steps(int(steps), progress):
        ia = torch.randint(0, len(xa), (BATCH,), generator=gen)
        ib = ia if paired else torch.randint(0, len(xb), (BATCH,), generator=gen)
        logits = net(torch.cat([xa[ia], xb[ib]]))[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def _steps(n: int, progress: Optional[str]):
    if not progress:
        return range(n)
    from tqdm import tqdm
    return tqdm(range(n), desc=progress, leave=False, mininterval=2.0)


def _logits(net, images: np.ndarray) -> np.ndarray:
    import torch
    with torch.no_grad():
        return np.concatenate([net(semantics._tensor(images[i:i + 1024]))[:, 0].numpy()
                               for i in range(0, len(images), 1024)]) if len(images) else np.zeros(0)


def discriminator_auroc(net, in_images: np.ndarray, ood_images: np.ndarray, b: int = BOOTSTRAP,
                        level: float = 0.95, seed: int = 0) -> Tuple[float, Tuple[float, float]]:
    """The discriminator's AUROC (in-distribution positive) and its bootstrap interval on two test sets."""
    from genood.ood.metrics import auroc, bootstrap_metrics, percentile_interval
    s_in, s_ood = _logits(net, in_images), _logits(net, ood_images)
    lo, hi = percentile_interval(bootstrap_metrics(s_in, s_ood, b, seed)["auroc"], level)
    return float(auroc(s_in, s_ood)), (lo, hi)


def _cache_file(in_dataset: str, train, val_fraction: float, holdout_seed: int, steps: int) -> Path:
    key = semantics._digest(RECIPE, int(steps), semantics._files_digest(train.files), len(train),
                            float(val_fraction), int(holdout_seed))
    return semantics._cache_dir().parent / "separability" / f"{semantics._safe(in_dataset)}-{key}" / "auroc.json"


def _one(in_dataset: str, name: str, train, test, fit: np.ndarray, steps: int, progress: bool) -> Separability:
    from genood.data.registry import load_split
    start = time.time()
    other_train, other_test = load_split(name, "train"), load_split(name, "test")
    paired = semantics._label_keeping(name, in_dataset) is None and len(other_train) == len(train)
    if train.images.shape[1:] != other_train.images.shape[1:]:
        raise ValueError(f"OOD set '{name}' has images of shape {other_train.images.shape[1:]}, "
                         f"{in_dataset} {train.images.shape[1:]}; measure sets of the in-distribution's shape.")
    ood_fit = other_train.images[fit] if paired else other_train.images
    net = train_discriminator(train.images[fit], ood_fit, steps, paired=paired, progress=name if progress else None)
    value, ci = discriminator_auroc(net, test.images, other_test.images)
    return Separability(name, value, ci, len(test), len(other_test), paired, int(steps), round(time.time() - start, 1))


def measure(in_dataset: str, names: List[str], val_fraction: float, holdout_seed: int, steps: int = STEPS,
            log: Callable[[str], None] = lambda s: None, progress: bool = False) -> List[Separability]:
    """Each of ``names`` with its discriminator AUROC against ``in_dataset`` (cached; trains what is missing)."""
    from genood import rundir
    from genood.data.registry import load_split
    from genood.data.splits import holdout
    if int(steps) < 1:
        raise ValueError(f"steps must be a positive number of training steps, got {steps!r}")
    train, test = load_split(in_dataset, "train"), load_split(in_dataset, "test")
    path = _cache_file(in_dataset, train, val_fraction, holdout_seed, steps)
    table = json.loads(path.read_text()) if path.is_file() else {}
    fit, _ = holdout(len(train), float(val_fraction), int(holdout_seed))
    out = []
    for i, name in enumerate(names):
        if name not in table:
            log(f"separability: {in_dataset} vs {name} ({i + 1}/{len(names)}, {int(steps)} steps)")
            table[name] = _one(in_dataset, name, train, test, fit, int(steps), progress).row()
            rundir.write_json(path, table)
        out.append(Separability.from_row(table[name]))
    return out


def table_markdown(in_dataset: str, rows: List[Separability]) -> str:
    """``rows`` as a markdown table with their mean."""
    lines = [f"{in_dataset}: a supervised discriminator's test AUROC per set (optimistic: trained with both labels)",
             "", "| set | discriminator AUROC [95% CI] | paired |", "|---|---|---|"]
    lines += [f"| {r.name} | {r.auroc:.3f} [{r.auroc_ci[0]:.3f}, {r.auroc_ci[1]:.3f}] | {'yes' if r.paired else 'no'} |"
              for r in rows]
    if rows:
        lines.append(f"| mean | {np.mean([r.auroc for r in rows]):.3f} | |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m genood.ood.separability <dataset> [set ...]``: a supervised discriminator's AUROC for each set
    against the dataset (default: the suite's 18 transforms of it), printed as a table."""
    import sys

    def run(args, names: List[str]) -> str:
        rows = measure(args.dataset, names, args.val_fraction, args.holdout_seed, args.steps,
                       log=lambda s: print(s, file=sys.stderr, flush=True), progress=sys.stderr.isatty())
        return table_markdown(args.dataset, rows)
    return semantics.sets_cli("python -m genood.ood.separability", main.__doc__, argv, run, lambda parser: parser.add_argument(
        "--steps", type=int, default=STEPS, help=f"discriminator training steps (default {STEPS})"))


if __name__ == "__main__":
    raise SystemExit(main())
