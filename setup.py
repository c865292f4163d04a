"""Build script: the structsparse package (and, once present, its C++/CUDA extension)."""

from setuptools import setup

setup(
    packages=["structsparse", "structsparse.backends", "structsparse.optim", "structsparse.triton_kernels"],
    # triton_kernels/ at the repo root is installed inside the package (a top-level module named
    # triton_kernels would collide with the triton project's own package)
    package_dir={"structsparse.triton_kernels": "triton_kernels"},
)
