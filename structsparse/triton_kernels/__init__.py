"""Source-checkout shim for ``structsparse.triton_kernels``.

The kernels live in ``<repo>/triton_kernels/``; setup.py installs that directory as this package
(``package_dir``), so an installed structsparse never contains this file. In a source checkout
(``PYTHONPATH=<repo>``) this shim points the package's ``__path__`` at ``<repo>/triton_kernels``
and runs its ``__init__`` so ``import structsparse.triton_kernels`` works the same way.
"""

import os as _os

__path__ = [
    _os.path.join(
        _os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))), "triton_kernels"
    )
]
with open(_os.path.join(__path__[0], "__init__.py")) as _f:
    exec(compile(_f.read(), _f.name, "exec"))
