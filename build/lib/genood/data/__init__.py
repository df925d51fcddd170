"""Datasets: registry by name, on-disk formats, the offline mirror and transforms.

Images are always handed around as ``uint8`` arrays of shape ``(N, H, W, C)``: the
*stored data*. Models dequantize them themselves (see :mod:`data.transforms`).
"""
