"""Build script: the structsparse package and its C++ extension ``structsparse._C``.

The extension holds the fused CPU kernels (csrc/cpu; op schemas in csrc/library.cpp). The tile kernels are
compiled three times (baseline, AVX2+FMA, AVX-512) and the best one for the running CPU is chosen
at import (no -march=native). When no compiler is available the build of the extension is
skipped with a warning and the pure-Python package (reference backend) still installs; set
``STRUCTSPARSE_REQUIRE_EXT=1`` to make that an error, ``STRUCTSPARSE_NO_EXT=1`` to skip it.

With a CUDA build of torch and a CUDA toolkit of the same major version, the same extension also
holds the CUDA kernels (csrc/cuda/*.cu, csrc/cuda/ops.cpp). The toolkit and the GPU
architectures are chosen by build_helpers.cuda_plan (CUDA_HOME, else nvcc's real location, else
/usr/local/cuda; TORCH_CUDA_ARCH_LIST, else the visible GPUs, else sm_80 and sm_90 with PTX).
When the CUDA part cannot be built the CPU kernels still are, and one line says why;
``STRUCTSPARSE_REQUIRE_CUDA=1`` makes that an error, ``STRUCTSPARSE_NO_CUDA=1`` skips CUDA.
docs/gpu.md and docs/install.md describe the variables.
"""

import glob
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # build_helpers (PEP 517 builds do not put the project on sys.path)
import build_helpers as bh  # noqa: E402

PACKAGES = [
    "structsparse",
    "structsparse.backends",
    "structsparse.cli",
    "structsparse.distributed",
    "structsparse.optim",
    "structsparse.triton_kernels",
]


def _say(msg: str) -> None:
    print(f"structsparse: {msg}", file=sys.stderr, flush=True)


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _gpu_count(torch) -> int:
    try:
        return torch.cuda.device_count() if torch.version.cuda else 0
    except Exception:  # a CUDA torch without a driver
        return 0


def _ext_modules():
    if bh.env_flag(os.environ, "STRUCTSPARSE_NO_EXT"):
        return [], {}
    require_ext = bh.env_flag(os.environ, "STRUCTSPARSE_REQUIRE_EXT")
    require_cuda = bh.env_flag(os.environ, "STRUCTSPARSE_REQUIRE_CUDA")
    try:
        import torch
    except Exception as e:  # torch missing at build time (e.g. pip's isolated build environment)
        if require_ext or require_cuda:
            raise SystemExit(f"structsparse: the C++ extension needs torch at build time ({e})") from e
        _say(
            f"not building the C++ extension: torch is not importable here ({e}); install torch, "
            "then `pip install --no-build-isolation .`"
        )
        return [], {}

    plan = bh.cuda_plan(os.environ, torch.version.cuda, _gpu_count(torch))
    if not plan.build:
        if require_cuda:
            raise SystemExit(
                f"structsparse: STRUCTSPARSE_REQUIRE_CUDA is set but CUDA cannot be built: {plan.reason}"
            )
        _say(f"building the CPU kernels only, CUDA skipped: {plan.reason}")
    else:
        # before torch.utils.cpp_extension is imported: it fixes CUDA_HOME at import
        os.environ["CUDA_HOME"] = plan.cuda_home
        if plan.arch_list is not None:
            os.environ["TORCH_CUDA_ARCH_LIST"] = plan.arch_list
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or "the visible GPUs"
        _say(f"building the CPU and CUDA kernels (CUDA toolkit {plan.cuda_home}, architectures {archs})")
    import torch.utils.cpp_extension as cpp_extension

    if plan.build:
        cpp_extension.CUDA_HOME = plan.cuda_home

    sources = [
        "csrc/library.cpp",
        "csrc/cpu/ops.cpp",
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
    include_dirs = [os.path.join(HERE, "csrc", "include"), os.path.join(HERE, "csrc", "cpu")]
    # headers as dependencies: without them an in-place rebuild after a header-only edit is skipped
    # (setuptools compares the sources' times with the built library's, before ninja runs)
    depends = sorted(
        os.path.relpath(f, HERE)
        for pat in ("*.h", "*/*.h", "*/*/*.h", "*/*.cuh")
        for f in glob.glob(os.path.join(HERE, "csrc", pat))
    )
    cpu_ext = cpp_extension.CppExtension(
        "structsparse._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
        depends=depends,
    )
    ext = cpu_ext
    if plan.build:
        cuda_sources = ["csrc/cuda/ops.cpp"] + sorted(
            os.path.relpath(f, HERE) for f in glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu"))
        )
        ext = cpp_extension.CUDAExtension(
            "structsparse._C",
            sources + cuda_sources,
            include_dirs=include_dirs + [os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17"]},
            extra_link_args=link,
            depends=depends,
        )

    class OptionalBuild(cpp_extension.BuildExtension):
        """CUDA build failed: the CPU kernels alone; C++ build failed: the pure-Python package."""

        def run(self):
            compiler, inplace = self.compiler, self.inplace
            try:
                super().run()
                return
            except Exception as e:
                err = e
            if plan.build and not require_cuda:
                _say(
                    f"building the CUDA kernels failed ({_first_line(err)}); building the CPU kernels "
                    "only (STRUCTSPARSE_REQUIRE_CUDA=1 makes this an error)"
                )
                # the finalized Extension object stays (setuptools keeps its bookkeeping on it)
                ext.__dict__.update({k: v for k, v in cpu_ext.__dict__.items() if not k.startswith("_")})
                # run() replaced the compiler with an instance, and left inplace off when it raised
                self.compiler, self.inplace = compiler, inplace
                try:
                    super().run()
                    return
                except Exception as e:
                    err = e
            if require_ext or require_cuda:
                raise err
            _say(
                f"building the C++ extension failed ({_first_line(err)}); installing the pure-Python "
                "package (backend='reference')"
            )

    return [ext], {"build_ext": OptionalBuild.with_options(use_ninja=True)}


ext_modules, cmdclass = _ext_modules()

setup(
    packages=PACKAGES,
    # triton_kernels/ at the repo root is installed inside the package (a top-level module named
    # triton_kernels would collide with the triton project's own package)
    package_dir={"structsparse.triton_kernels": "triton_kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
