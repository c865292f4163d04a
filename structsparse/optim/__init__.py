"""The optimizers, one file per algorithm (the math of each is in ``backends/reference.py``)."""

from .dessilbi import DessiLBI
from .proxgen import ProxGen
from .proxsgd import ProxSGD
from .proxssi import ProxSSI
from .ramda import RAMDA
from .rmda import RMDA

__all__ = ["RMDA", "RAMDA", "ProxSGD", "ProxGen", "ProxSSI", "DessiLBI"]
