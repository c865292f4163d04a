"""Build script: the structsparse package (and, once present, its C++/CUDA extension)."""

from setuptools import setup

setup(
    packages=["structsparse", "structsparse.backends", "structsparse.optim"],
)
