"""``python -m genood.data``: build the offline mirror, fetch datasets, list what is on disk."""
from __future__ import annotations

import argparse
import sys

from genood.data import mirror, registry

TORCHVISION_CLASSES = {"mnist": ("MNIST", {}), "fmnist": ("FashionMNIST", {}), "kmnist": ("KMNIST", {}),
                       "emnist": ("EMNIST", {"split": "balanced"}), "cifar10": ("CIFAR10", {}),
                       "cifar100": ("CIFAR100", {}), "omniglot": ("Omniglot", {}), "celeba": ("CelebA", {})}


def _download(name: str) -> None:
    try:
        import torchvision.datasets as tvd
    except ImportError:
        sys.exit(f"Downloading '{name}' needs torchvision: `pip install torchvision` (optional extra), then rerun.")
    root = registry.data_dir()
    if name == "svhn":
        for split in ("train", "test"):
            tvd.SVHN(str(root / "svhn"), split=split, download=True)
        return
    cls_name, kwargs = TORCHVISION_CLASSES[name]
    cls = getattr(tvd, cls_name)
    if name == "omniglot":
        for bg in (True, False):
            cls(str(root), background=bg, download=True)
    elif name == "celeba":
        cls(str(root), split="all", download=True)
    else:
        for train in (True, False):
            cls(str(root), train=train, download=True, **kwargs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genood.data", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("mirror", help="build the offline mirror (fmnist, mnist) under DATA_DIR")
    fetch = sub.add_parser("fetch", help="make datasets available under DATA_DIR")
    fetch.add_argument("names", nargs="+")
    fetch.add_argument("--download", action="store_true", help="use torchvision's download even for mirrored sets")
    sub.add_parser("list", help="list registered datasets and whether they are on disk")
    sub.add_parser("derived", help="list the derivations that make OOD sets from a dataset (<name>:<derivation>[=<value>])")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "mirror":
            mirror.build_all()
        elif args.cmd == "fetch":
            for raw_name in args.names:
                name = registry.canonical_name(raw_name)
                if name in mirror.MIRRORED and not args.download:
                    mirror.MIRRORED[name](registry.data_dir())
                else:
                    _download(name)
        elif args.cmd == "derived":
            from genood.data import derived
            print("derived sets: <dataset>:<derivation>[=<value>], chained left to right (fmnist:classes=0-4:hflip)")
            for row in derived.describe():
                value = f"={row['value']}" + (f" (default {row['default']})" if row["default"] else "") if row["value"] != "none" else ""
                print(f"  {row['group']:9s} {row['name'] + value:28s} {row['description']}")
        else:
            print(f"DATA_DIR = {registry.data_dir()}")
            for name in registry.known_datasets():
                try:
                    s = registry.load_split(name, "test")
                    state = f"ok ({len(s)} test images, {s.images.shape[1]}x{s.images.shape[2]}x{s.images.shape[3]})"
                except registry.DatasetNotFoundError:
                    state = "missing"
                print(f"  {name:10s} {state}")
    except (mirror.MirrorError, registry.UnknownDatasetError, registry.DatasetNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
