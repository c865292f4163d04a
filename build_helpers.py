"""Build-time decisions of setup.py, kept apart so that they can be unit-tested without a build:
whether the CUDA kernels are built, with which CUDA toolkit and for which GPU architectures.

Nothing here imports torch: the caller passes torch's CUDA version and the number of visible GPUs,
so :func:`cuda_plan` runs before ``torch.utils.cpp_extension`` is imported (that module fixes its
``CUDA_HOME`` at import, and guesses it from nvcc's folder, which is wrong when ``nvcc`` on the
PATH is a link or a wrapper script outside the toolkit).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

#: GPU architectures of a build that has no GPU to look at and no TORCH_CUDA_ARCH_LIST: Ampere
#: (A100) and Hopper (H100/H200) as machine code, plus the PTX of the newest one, which the
#: driver compiles for later GPUs at first use.
DEFAULT_ARCHS = ("8.0", "9.0")

#: A file every usable CUDA toolkit has (torch's CUDA headers include it).
TOOLKIT_HEADER = os.path.join("include", "cuda_runtime_api.h")


@dataclass(frozen=True)
class CudaPlan:
    """What setup.py does about CUDA. ``build`` False: CPU kernels only, ``reason`` says why."""

    build: bool
    reason: str = ""
    cuda_home: str | None = None
    #: value to set TORCH_CUDA_ARCH_LIST to; None leaves the variable (or torch's choice) alone
    arch_list: str | None = None


def env_flag(environ: Mapping[str, str], name: str) -> bool:
    """An on/off environment variable: "1", "true", "yes", "on" (any case) are on."""
    return environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def is_toolkit(root: str | None) -> bool:
    """Whether ``root`` holds a CUDA toolkit (bin/nvcc and the runtime headers)."""
    return (
        bool(root)
        and os.path.isfile(os.path.join(root, "bin", "nvcc"))
        and os.path.isfile(os.path.join(root, TOOLKIT_HEADER))
    )


def _run(cmd: list[str], run: Callable[..., subprocess.CompletedProcess]) -> str:
    """stdout + stderr of ``cmd``, "" when it cannot run."""
    try:
        res = run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (res.stdout or "") + (res.stderr or "")


def nvcc_toolkit_roots(
    nvcc: str, run: Callable[..., subprocess.CompletedProcess] = subprocess.run
) -> list[str]:
    """Toolkit folders an ``nvcc`` found on the PATH may belong to: the parent of its folder with
    links resolved (``/usr/bin/nvcc -> /opt/cuda-13.0/bin/nvcc``), then the folder nvcc reports
    itself in when it runs (``_HERE_`` of ``nvcc --dryrun``), which also sees through a wrapper
    script that execs the real nvcc."""
    roots = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    out = _run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull], run)
    m = re.search(r"^#\$ _HERE_=(.+)$", out, re.M)
    if m:
        roots.append(os.path.dirname(os.path.realpath(m.group(1).strip())))
    return list(dict.fromkeys(roots))


def find_cuda_home(
    environ: Mapping[str, str],
    which: Callable[[str], str | None] = shutil.which,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
    default: str = "/usr/local/cuda",
) -> tuple[str | None, str]:
    """(toolkit folder, "") or (None, why none was found). ``CUDA_HOME`` (or ``CUDA_PATH``) is
    taken as given when set; otherwise nvcc on the PATH (:func:`nvcc_toolkit_roots`), then
    ``default``."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        given = environ.get(var)
        if given:
            if is_toolkit(given):
                return given, ""
            return None, f"{var}={given} is not a CUDA toolkit (no bin/nvcc or {TOOLKIT_HEADER})"
    nvcc = which("nvcc")
    tried = []
    if nvcc:
        for root in nvcc_toolkit_roots(nvcc, run):
            if is_toolkit(root):
                return root, ""
            tried.append(root)
    if is_toolkit(default):
        return default, ""
    where = f"nvcc at {nvcc} (looked in {', '.join(tried)})" if nvcc else "no nvcc on the PATH"
    return None, f"no CUDA toolkit found: CUDA_HOME is not set, {where}, no {default}"


def nvcc_version(nvcc: str, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> str | None:
    """The release "13.0" from ``nvcc --version`` ("... release 13.0, V13.0.88"); None when it cannot tell."""
    m = re.search(r"release (\d+)\.(\d+)", _run([nvcc, "--version"], run))
    return f"{m.group(1)}.{m.group(2)}" if m else None


def nvcc_arches(
    nvcc: str, run: Callable[..., subprocess.CompletedProcess] = subprocess.run
) -> set[str] | None:
    """The virtual architectures nvcc compiles for, as "8.0", "9.0", "10.0" (``--list-gpu-arch``);
    None when nvcc does not say (older toolkits)."""
    found = re.findall(r"compute_(\d+)", _run([nvcc, "--list-gpu-arch"], run))
    if not found:
        return None
    return {f"{int(a) // 10}.{int(a) % 10}" for a in found}


def default_arch_list(supported: set[str] | None) -> str | None:
    """TORCH_CUDA_ARCH_LIST for a build without a GPU: :data:`DEFAULT_ARCHS` that nvcc supports,
    PTX for the last. None when nvcc supports none of them."""
    archs = [a for a in DEFAULT_ARCHS if supported is None or a in supported]
    if not archs:
        return None
    return ";".join(archs) + "+PTX"


def cuda_plan(
    environ: Mapping[str, str],
    torch_cuda: str | None,
    gpu_count: int,
    which: Callable[[str], str | None] = shutil.which,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
    default_home: str = "/usr/local/cuda",
) -> CudaPlan:
    """Whether and how to build the CUDA kernels.

    ``torch_cuda``: ``torch.version.cuda`` (None for a CPU build of torch); ``gpu_count``: visible
    GPUs (torch then builds for those when TORCH_CUDA_ARCH_LIST is unset)."""
    if env_flag(environ, "STRUCTSPARSE_NO_CUDA"):
        return CudaPlan(False, "STRUCTSPARSE_NO_CUDA is set")
    if torch_cuda is None:
        return CudaPlan(False, "torch is a CPU-only build")
    home, why = find_cuda_home(environ, which, run, default_home)
    if home is None:
        return CudaPlan(False, why)
    nvcc = os.path.join(home, "bin", "nvcc")
    version = nvcc_version(nvcc, run)
    if version is None:
        return CudaPlan(False, f"{nvcc} --version does not say its CUDA release", home)
    if version.split(".")[0] != torch_cuda.split(".")[0]:
        return CudaPlan(
            False,
            f"the CUDA toolkit at {home} is {version} but torch was built with CUDA {torch_cuda} "
            "(set CUDA_HOME to a toolkit of the same major version)",
            home,
        )
    if environ.get("TORCH_CUDA_ARCH_LIST", "").strip():
        return CudaPlan(True, "", home, None)
    if gpu_count > 0:
        return CudaPlan(True, "", home, None)
    archs = default_arch_list(nvcc_arches(nvcc, run))
    if archs is None:
        return CudaPlan(
            False,
            f"nvcc {version} compiles for none of sm_{', sm_'.join(a.replace('.', '') for a in DEFAULT_ARCHS)} "
            "(set TORCH_CUDA_ARCH_LIST)",
            home,
        )
    return CudaPlan(True, "", home, archs)
