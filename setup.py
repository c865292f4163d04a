"""Build script: the structsparse package and its C++ extension ``structsparse._C``.

The extension holds the fused CPU kernels (csrc/cpu, csrc/bindings.cpp). The tile kernels are
compiled three times (baseline, AVX2+FMA, AVX-512) and the best one for the running CPU is chosen
at import (no -march=native). When no compiler is available the build of the extension is
skipped with a warning and the pure-Python package (reference backend) still installs; set
``STRUCTSPARSE_REQUIRE_EXT=1`` to make that an error, ``STRUCTSPARSE_NO_EXT=1`` to skip it.

With a CUDA build of torch and a CUDA toolkit (``CUDA_HOME``/nvcc found), the same extension also
holds the CUDA kernels (csrc/cuda/*.cu, csrc/cuda_bindings.cpp); otherwise it is CPU-only.
``STRUCTSPARSE_NO_CUDA=1`` forces a CPU-only build; ``TORCH_CUDA_ARCH_LIST`` picks the GPU
architectures as for any torch extension.
"""

import glob
import os
import sys

from setuptools import setup

PACKAGES = [
    "structsparse",
    "structsparse.backends",
    "structsparse.cli",
    "structsparse.optim",
    "structsparse.triton_kernels",
]


def _ext_modules():
    if os.environ.get("STRUCTSPARSE_NO_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except Exception as e:  # torch missing at build time
        print(f"structsparse: not building the C++ extension ({e})", file=sys.stderr)
        return [], {}

    here = os.path.dirname(os.path.abspath(__file__))
    sources = [
        "csrc/bindings.cpp",
        "csrc/cpu/steps.cpp",
        "csrc/cpu/kernels_default.cpp",
        "csrc/cpu/kernels_avx2.cpp",
        "csrc/cpu/kernels_avx512.cpp",
    ]
    if sys.platform == "win32":
        cxx = ["/O2", "/std:c++20"]
    else:
        # -fno-math-errno lets sqrt vectorize and -fno-trapping-math lets loops with selects
        # (prox, cbrt) vectorize; neither changes a result. No FMA contraction, so every ISA
        # variant rounds the same way as the others.
        cxx = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-std=c++20"]
    link = []
    # at::parallel_for is an inline template: with torch's OpenMP backend its `#pragma omp parallel`
    # is compiled into this extension, and without -fopenmp every kernel would run on one thread.
    if sys.platform != "win32" and "OpenMP" in torch.__config__.parallel_info():
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    include_dirs = [os.path.join(here, "csrc", "include"), os.path.join(here, "csrc", "cpu")]
    # headers as dependencies: without them an in-place rebuild after a header-only edit is skipped
    # (setuptools compares the sources' times with the built library's, before ninja runs)
    depends = sorted(
        os.path.relpath(f, here)
        for pat in ("*.h", "*/*.h", "*/*/*.h", "*/*.cuh")
        for f in glob.glob(os.path.join(here, "csrc", pat))
    )
    if _with_cuda():
        from torch.utils.cpp_extension import CUDAExtension

        cuda_sources = ["csrc/cuda_bindings.cpp"] + sorted(
            os.path.relpath(f, here) for f in glob.glob(os.path.join(here, "csrc", "cuda", "*.cu"))
        )
        ext = CUDAExtension(
            "structsparse._C",
            sources + cuda_sources,
            include_dirs=include_dirs + [os.path.join(here, "csrc")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17"]},
            extra_link_args=link,
            depends=depends,
        )
    else:
        ext = CppExtension(
            "structsparse._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
            depends=depends,
        )

    class OptionalBuild(BuildExtension):
        def run(self):
            try:
                super().run()
            except Exception as e:
                if os.environ.get("STRUCTSPARSE_REQUIRE_EXT") == "1":
                    raise
                print(
                    f"structsparse: building the C++ extension failed ({e}); installing the "
                    "pure-Python package (backend='reference')",
                    file=sys.stderr,
                )

    return [ext], {"build_ext": OptionalBuild.with_options(use_ninja=True)}


def _with_cuda() -> bool:
    """CUDA kernels are built when torch is a CUDA build and a CUDA toolkit is found."""
    if os.environ.get("STRUCTSPARSE_NO_CUDA") == "1":
        return False
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception:
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


ext_modules, cmdclass = _ext_modules()

setup(
    packages=PACKAGES,
    # triton_kernels/ at the repo root is installed inside the package (a top-level module named
    # triton_kernels would collide with the triton project's own package)
    package_dir={"structsparse.triton_kernels": "triton_kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
