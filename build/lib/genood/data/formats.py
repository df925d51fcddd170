"""Readers and writers for the on-disk image formats the registry understands.

Every reader returns ``uint8`` images of shape ``(N, H, W, C)`` and, where the format
has them, ``int64`` labels of shape ``(N,)``.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

# IDX type codes (http://yann.lecun.com/exdb/mnist/ describes the format).
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}


class FormatError(ValueError):
    """A file exists but does not hold what its format promises."""


def _open_maybe_gzip(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed) into a numpy array of its stored shape."""
    path = Path(path)
    with _open_maybe_gzip(path) as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise FormatError(f"{path} is not an IDX file (bad magic number).")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise FormatError(f"{path} has unknown IDX type code 0x{code:02x}.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FormatError(f"{path} is truncated inside its IDX header.")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise FormatError(f"{path} holds {len(raw) - header} data bytes, its header promises {expected}.")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8/int8 array as an uncompressed IDX file, atomically."""
    array = np.ascontiguousarray(array)
    if array.dtype not in _IDX_CODES:
        raise TypeError(f"write_idx supports uint8 and int8, got {array.dtype}.")
    header = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(header)
        fh.write(array.tobytes())
    os.replace(tmp, path)


def as_nhwc(images: np.ndarray, source: str) -> np.ndarray:
    """Bring (N,H,W) or (N,H,W,C) uint8 images to (N,H,W,C); reject anything else."""
    if images.dtype != np.uint8:
        raise FormatError(f"{source}: images must be uint8, got {images.dtype}.")
    if images.ndim == 3:
        return images[..., None]
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        return images
    raise FormatError(f"{source}: images must have shape (N,H,W) or (N,H,W,C) with C in {{1,3}}, got {images.shape}.")


def read_npz(path: str | os.PathLike) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Read a user .npz holding uint8 ``images`` (N,H,W[,C]) and optional ``labels`` (N,)."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as archive:
        if "images" not in archive.files:
            raise FormatError(f"{path} has no 'images' array (found: {', '.join(archive.files) or 'nothing'}).")
        images = as_nhwc(archive["images"], str(path))
        labels = archive["labels"].astype(np.int64) if "labels" in archive.files else None
    if labels is not None and labels.shape != (images.shape[0],):
        raise FormatError(f"{path}: 'labels' has shape {labels.shape}, expected ({images.shape[0]},).")
    return images, labels


def read_image_folder(path: str | os.PathLike, channels: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Read every image under ``path`` (sorted; one sub-folder per class, or flat).

    All images must share one size. ``channels`` forces 1 (L) or 3 (RGB); by default the
    first image's mode decides.
    """
    from PIL import Image

    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FormatError(f"{root} contains no image files ({', '.join(IMAGE_SUFFIXES)}).")
    classes = sorted({p.parent.relative_to(root).as_posix() for p in files})
    class_index = {name: i for i, name in enumerate(classes)}
    if channels is None:
        with Image.open(files[0]) as first:
            channels = 1 if first.mode in ("L", "1", "I;16", "I") else 3
    mode = "L" if channels == 1 else "RGB"
    images, labels = [], []
    for p in files:
        with Image.open(p) as im:
            arr = np.asarray(im.convert(mode), dtype=np.uint8)
        if images and arr.shape[:2] != images[0].shape[:2]:
            raise FormatError(f"{p} is {arr.shape[1]}x{arr.shape[0]}, other images in {root} are "
                              f"{images[0].shape[1]}x{images[0].shape[0]}: resize them to one size first.")
        images.append(arr)
        labels.append(class_index[p.parent.relative_to(root).as_posix()])
    return as_nhwc(np.stack(images), str(root)), np.asarray(labels, dtype=np.int64)


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain types only: a dataset file from elsewhere never runs code."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "ndarray"),
               ("numpy", "dtype"), ("_codecs", "encode")}  # protocol-2 pickles spell bytes as _codecs.encode(str)

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not an array or a plain type")


def load_array_pickle(path: Path):
    """A pickle holding only arrays, dicts, lists, numbers and strings (CIFAR's batches); one sentence otherwise."""
    try:
        with open(path, "rb") as fh:
            return _ArrayUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise FormatError(f"{path} is not a pickle of arrays and plain data ({exc}); it was not loaded (nothing in "
                          f"it ran); replace it with the dataset's original file.") from exc


def read_cifar_batches(files: list[Path], label_key: bytes) -> Tuple[np.ndarray, np.ndarray]:
    """Read CIFAR-10/100 python pickles (torchvision's on-disk layout) into (N,32,32,3)."""
    images, labels = [], []
    for f in files:
        entry = load_array_pickle(f)
        images.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(entry[label_key], dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def read_svhn_mat(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """Read an SVHN ``*_32x32.mat`` file into (N,32,32,3); label 10 becomes 0 as in torchvision."""
    from scipy.io import loadmat

    mat = loadmat(path)
    images = np.ascontiguousarray(mat["X"].transpose(3, 0, 1, 2)).astype(np.uint8)
    labels = mat["y"].astype(np.int64).reshape(-1)
    labels[labels == 10] = 0
    return images, labels
