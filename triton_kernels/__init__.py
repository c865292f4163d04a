"""Triton kernels of structsparse, installed as ``structsparse.triton_kernels`` (setup.py's
``package_dir``; a top-level ``triton_kernels`` would collide with the triton project's package).

Importing this package imports triton; :mod:`structsparse.backends.triton` does so lazily.
"""

from . import launch, lbi_step, step
from .launch import dessilbi, proxgen, proxsgd, proxssi, ramda, rmda
from .launch import launch as launch_step

__all__ = [
    "launch",
    "step",
    "launch_step",
    "rmda",
    "ramda",
    "proxsgd",
    "proxgen",
    "proxssi",
    "dessilbi",
    "lbi_step",
]
