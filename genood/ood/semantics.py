"""Measured grouping of transformed sets: does a transform keep the meaning (a ``shift``, to be accepted) or
destroy it (a ``corruption``, to be rejected)?

A transform of the in-distribution is a *shift* when a classifier trained on the in-distribution's training
split still recognises the classes of the transformed test images: its accuracy on them stays within
``MARGIN`` (absolute) of its accuracy on the clean test images. Otherwise it is a *corruption*. The rule is
measured, not declared, and the same for every in-distribution with labels:

* the classifier: a small CNN (two 3x3 convolutions of 16 and 32 channels, each with ReLU and 2x2 max pooling,
  then a linear layer), Adam at 1e-3, ``STEPS`` steps of batches of 128 drawn with a fixed seed from the
  training positions of the in-distribution's holdout (``data.val_fraction``, the run's ``holdout_seed``); its
  accuracy on in_val is recorded as the check that it learned the classes;
* a set is measured only when it derives from the in-distribution itself by label-keeping steps (a transform of
  another dataset is that dataset's business: it stays OOD, ``real``); a set whose derivation changes the labels
  (a class split) is ``near``, never measured.

The classifier's weights and every set's accuracy are cached under the data root (``cache/semantics/``, keyed by
the dataset's files, the holdout and this recipe) as safetensors and JSON: nothing there is unpickled, and a
second run or another runs root reuses them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

__all__ = ["MARGIN", "STEPS", "RECIPE", "Measured", "measured_group", "measure", "classifier_accuracy", "train_classifier",
           "sets_cli"]

MARGIN = 0.10          # a shift keeps the classifier's accuracy within 10 points of its clean accuracy
STEPS = 600            # classifier training steps (batches of 128); ~30 s on one CPU thread for 28x28 images
BATCH = 128
RECIPE = f"cnn16-32 adam1e-3 steps{STEPS} batch{BATCH} v1"


@dataclass(frozen=True)
class Measured:
    """One set's measurement: its group, the accuracies behind it, and why."""
    name: str
    group: str                 # shift | corruption | near | real
    source: str                # measured | derivation (near: changes the labels) | another dataset
    accuracy: Optional[float]  # the classifier on the set's test images (None when not measured)
    clean_accuracy: Optional[float]
    val_accuracy: Optional[float]

    def row(self) -> Dict[str, Any]:
        return {"ood_dataset": self.name, "group": self.group, "source": self.source, "accuracy": self.accuracy,
                "clean_accuracy": self.clean_accuracy, "val_accuracy": self.val_accuracy,
                "drop": None if self.accuracy is None else self.clean_accuracy - self.accuracy, "margin": MARGIN}


def measured_group(accuracy: float, clean_accuracy: float, margin: float = MARGIN) -> str:
    """``shift`` when the accuracy is within ``margin`` of the clean accuracy, else ``corruption``."""
    return "shift" if accuracy >= clean_accuracy - margin else "corruption"


def _net(channels: int, height: int, width: int, classes: int):
    import torch.nn as nn
    return nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * (height // 4) * (width // 4), classes))


def _tensor(images: np.ndarray):
    import torch
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float().div_(255.0)


def train_classifier(images: np.ndarray, labels: np.ndarray, steps: int = STEPS, seed: int = 0):
    """The recipe's CNN trained on uint8 (N,H,W,C) images and their labels (returns the module in eval mode)."""
    import torch
    n, h, w, c = images.shape
    classes = int(labels.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = _net(c, h, w, classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x_all, y_all = _tensor(images), torch.from_numpy(labels.astype(np.int64))
    for _ in range(int(steps)):
        idx = torch.randint(0, n, (min(BATCH, n),), generator=gen)
        loss = torch.nn.functional.cross_entropy(net(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def classifier_accuracy(net, images: np.ndarray, labels: np.ndarray) -> float:
    import torch
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), 1024):
            pred = net(_tensor(images[i:i + 1024])).argmax(1).numpy()
            correct += int((pred == labels[i:i + 1024]).sum())
    return correct / max(1, len(images))


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _files_digest(files: List[Path]) -> str:
    from genood.data.registry import file_checksums
    return _digest(sorted(file_checksums(files).items()))


def _cache_dir() -> Path:
    from genood.data.registry import data_dir
    return data_dir() / "cache" / "semantics"


def _label_keeping(name: str, in_dataset: str) -> Optional[str]:
    """Why ``name`` is not a label-keeping transform of ``in_dataset`` (its group), or None when it is one: it must
    be ``in_dataset`` (itself possibly derived, ``fmnist:classes=0-4``) followed by transform steps only."""
    from genood.data.derived import split_name
    from genood.data.registry import canonical_name
    base, steps = split_name(canonical_name(name))
    in_base, in_steps = split_name(canonical_name(in_dataset))
    texts, in_texts = [s.text for s in steps], [s.text for s in in_steps]
    if base != in_base or texts[:len(in_texts)] != in_texts or len(texts) == len(in_texts):
        from genood.data.derived import group_of
        declared = group_of(name)  # not made from the in-distribution: its derivation's group, or another dataset
        return "real" if declared == "transform" else declared
    extra = steps[len(in_steps):]
    for group in ("near", "far"):
        if any(s.derivation.group == group for s in extra):
            return group
    return None


def _classifier(in_dataset, train, test, weights: Path, table: Dict[str, Any], table_path: Path,
                val_fraction: float, holdout_seed: int, log):
    """The grouping classifier of ``in_dataset``: read from ``weights`` (safetensors), or trained on the training
    positions of the holdout and saved there, its in_val and clean in_test accuracies put into ``table``."""
    import torch

    from genood import rundir
    from genood.data.splits import holdout

    n, h, w, c = train.images.shape
    net = _net(c, h, w, int(max(train.labels.max(), test.labels.max())) + 1)
    if weights.is_file():
        from safetensors.torch import load_file
        net.load_state_dict(load_file(str(weights)))
        net.eval()
        return net
    fit, val = holdout(len(train), float(val_fraction), int(holdout_seed))
    threads = torch.get_num_threads()
    log(f"semantics: training the grouping classifier on {in_dataset} ({len(fit)} images, {STEPS} steps)")
    net = train_classifier(train.images[fit], train.labels[fit])
    torch.set_num_threads(threads)
    from safetensors.torch import save_file
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    rundir.atomic_write(weights, lambda p: save_file(state, str(p)))
    table["in_val"] = classifier_accuracy(net, train.images[val], train.labels[val]) if len(val) else None
    table["in_test"] = classifier_accuracy(net, test.images, test.labels)
    rundir.write_json(table_path, table)
    return net


def measure(in_dataset: str, names: List[str], val_fraction: float, holdout_seed: int,
            log: Callable[[str], None] = lambda s: None) -> List[Measured]:
    """Each of ``names`` (OOD sets of a run on ``in_dataset``) with its measured group; loads the data it needs,
    trains (or reuses) the classifier. Sets of ``in_dataset`` without labels cannot be measured: ValueError."""

    from genood import rundir
    from genood.data.registry import load_split

    out: List[Measured] = []
    todo = []
    for name in names:
        why = _label_keeping(name, in_dataset)
        if why is None:
            todo.append(name)
        else:
            out.append(Measured(name, why, "derivation (changes the labels)" if why == "near" else "another dataset"
                                if why == "real" else "derivation", None, None, None))
    if not todo:
        return out
    train, test = load_split(in_dataset, "train"), load_split(in_dataset, "test")
    if train.labels is None or test.labels is None:
        raise ValueError(f"Dataset '{in_dataset}' has no labels, so whether a transform keeps its meaning cannot be "
                         f"measured; group its transformed sets by hand in data.ood ({{shift: [...]}} or "
                         f"{{corruption: [...]}}).")
    key = _digest(RECIPE, _files_digest(train.files), len(train), float(val_fraction), int(holdout_seed))
    folder = _cache_dir() / f"{_safe(in_dataset)}-{key}"
    weights, table_path = folder / "classifier.safetensors", folder / "accuracy.json"
    table = json.loads(table_path.read_text()) if table_path.is_file() else {}
    net = _classifier(in_dataset, train, test, weights, table, table_path, val_fraction, holdout_seed, log)
    if "in_test" not in table:
        table["in_test"] = classifier_accuracy(net, test.images, test.labels)
    changed = False
    for name in todo:
        if name not in table:
            shifted = load_split(name, "test")
            if shifted.labels is None or len(shifted) != len(test):
                raise ValueError(f"OOD set '{name}' lost the labels of {in_dataset}; group it by hand in data.ood.")
            table[name] = classifier_accuracy(net, shifted.images, shifted.labels)
            changed = True
        acc = float(table[name])
        out.append(Measured(name, measured_group(acc, float(table["in_test"])), "measured", acc,
                            float(table["in_test"]), table.get("in_val")))
    if changed:
        rundir.write_json(table_path, table)
    order = {n: i for i, n in enumerate(names)}
    return sorted(out, key=lambda m: order[m.name])


def _safe(name: str) -> str:
    from genood.runconfig import _safe as safe
    return safe(name)


STANDARD_TRANSFORMS = ("hflip", "vflip", "rot90", "invert", "gamma=0.5", "gamma=2", "contrast=0.5", "blur=1",
                       "blur=2", "resample=2", "resample=4", "shuffle=4", "permute", "noise=8", "noise=32",
                       "noise=64", "blend=0.5", "blend=0.75")  # the suite meta-configurations' transform list


def table_markdown(in_dataset: str, rows: List[Measured]) -> str:
    """The measured groups of ``rows`` as a markdown table (one row per set, the clean accuracy above)."""
    clean = next((m.clean_accuracy for m in rows if m.clean_accuracy is not None), None)
    val = next((m.val_accuracy for m in rows if m.val_accuracy is not None), None)
    lines = [f"{in_dataset}: classifier accuracy {clean:.3f} on clean in_test" if clean is not None else in_dataset,
             (f" ({val:.3f} on in_val)" if val is not None else "") + f"; shift = within {MARGIN:.2f} of it",
             "", "| set | accuracy | drop | group |", "|---|---|---|---|"]
    lines[0] += lines.pop(1)
    for m in rows:
        acc = "-" if m.accuracy is None else f"{m.accuracy:.3f}"
        drop = "-" if m.accuracy is None else f"{m.clean_accuracy - m.accuracy:+.3f}"
        lines.append(f"| {m.name} | {acc} | {drop} | {m.group} |")
    return "\n".join(lines)


def sets_cli(prog: str, doc: str, argv: Optional[List[str]], run: Callable[[Any, List[str]], str],
             extra: Callable[[Any], None] = lambda parser: None) -> int:
    """The command line shared by the per-set measurements (``semantics``, ``separability``): a dataset, its OOD
    sets (default: the suite's transforms of it) and the holdout; ``run(args, names)`` returns the text to print.
    Bad input is one sentence on stderr and exit status 2."""
    import argparse
    import sys

    from genood import runconfig
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("dataset", help="the in-distribution (fmnist, mnist, npz:<name>, ...)")
    parser.add_argument("sets", nargs="*", help="OOD sets, e.g. fmnist:hflip (default: the suite's transforms)")
    parser.add_argument("--val-fraction", type=float, default=runconfig.CORE_DEFAULTS["data"]["val_fraction"])
    parser.add_argument("--holdout-seed", type=int, default=runconfig.CORE_DEFAULTS["run"]["seed"],
                        help="the in_val holdout's seed (default: run.seed's default, as a run without holdout_seed)")
    extra(parser)
    args = parser.parse_args(argv)
    try:
        text = run(args, args.sets or [f"{args.dataset}:{t}" for t in STANDARD_TRANSFORMS])
    except (ValueError, KeyError, FileNotFoundError, runconfig.ConfigError) as exc:
        print(f"error: {str(exc).strip(chr(39))}", file=sys.stderr)
        return 2
    print(text)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m genood.ood.semantics <dataset> [set ...]``: measure the groups of transformed sets (default:
    the suite's 18 transforms of the dataset) and print them as a table."""
    return sets_cli("python -m genood.ood.semantics", main.__doc__, argv, lambda args, names: table_markdown(
        args.dataset, measure(args.dataset, names, args.val_fraction, args.holdout_seed, log=print)))


if __name__ == "__main__":
    raise SystemExit(main())
