"""The build's CUDA decisions (build_helpers.py, used by setup.py) and the messages of an install
without the extension, checked without a GPU and without building anything: toolkits and nvcc are
fake scripts in a temporary folder (a real nvcc, when installed, is checked as found too)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("build_helpers", ROOT / "build_helpers.py")
bh = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("build_helpers", bh)  # dataclasses look their module up there
_spec.loader.exec_module(bh)

NO_TOOLKIT = "/nonexistent/cuda"


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_toolkit(root: Path, release: str = "13.0", arches=("75", "80", "86", "90", "100", "120")) -> Path:
    """A folder that looks like a CUDA toolkit: bin/nvcc answering --version, --list-gpu-arch and
    --dryrun (which reports the folder it runs from, as the real one does), and the runtime header."""
    (root / "include").mkdir(parents=True, exist_ok=True)
    (root / "include" / "cuda_runtime_api.h").write_text("/* fake */\n")
    listing = "\\n".join(f"compute_{a}" for a in arches)
    _script(
        root / "bin" / "nvcc",
        f"""case "$1" in
  --version) echo "Cuda compilation tools, release {release}, V{release}.1";;
  --list-gpu-arch) printf '{listing}\\n';;
  --dryrun) echo "#$ _HERE_={root / "bin"}" >&2; echo "#$ _THERE_={root / "bin"}" >&2;;
  *) exit 1;;
esac
""",
    )
    return root


def which_in(*folders: Path):
    """shutil.which over the given folders only (the test's PATH)."""
    path = os.pathsep.join(str(f) for f in folders)
    return lambda name: shutil.which(name, path=path)


def plan(environ=None, torch_cuda="13.0", gpus=0, which=None):
    return bh.cuda_plan(environ or {}, torch_cuda, gpus, which=which or which_in(), default_home=NO_TOOLKIT)


def test_no_gpu_picks_sm80_sm90_with_ptx(tmp_path):
    tk = fake_toolkit(tmp_path / "cuda-13.0")
    p = plan({"CUDA_HOME": str(tk)})
    assert p == bh.CudaPlan(True, "", str(tk), "8.0;9.0+PTX")


def test_visible_gpu_leaves_the_arch_choice_to_torch(tmp_path):
    tk = fake_toolkit(tmp_path / "cuda")
    assert plan({"CUDA_HOME": str(tk)}, gpus=1) == bh.CudaPlan(True, "", str(tk), None)


def test_torch_cuda_arch_list_is_respected(tmp_path):
    tk = fake_toolkit(tmp_path / "cuda")
    p = plan({"CUDA_HOME": str(tk), "TORCH_CUDA_ARCH_LIST": "9.0"})
    assert p.build and p.arch_list is None  # the variable stays as the user set it


def test_default_arches_follow_what_nvcc_supports():
    assert bh.default_arch_list({"7.5", "8.0", "8.6", "9.0", "10.0"}) == "8.0;9.0+PTX"
    assert bh.default_arch_list({"7.0", "7.5", "8.0", "8.6"}) == "8.0+PTX"  # a toolkit without sm_90
    assert bh.default_arch_list({"5.0", "7.0"}) is None
    assert bh.default_arch_list(None) == "8.0;9.0+PTX"  # nvcc that cannot list: the defaults


def test_nvcc_without_sm80_or_sm90_skips_cuda(tmp_path):
    tk = fake_toolkit(tmp_path / "cuda", arches=("50", "70"))
    p = plan({"CUDA_HOME": str(tk)})
    assert not p.build and "TORCH_CUDA_ARCH_LIST" in p.reason


def test_no_nvcc_no_toolkit_skips_cuda():
    p = plan({})
    assert not p.build
    assert "no CUDA toolkit found" in p.reason and "no nvcc on the PATH" in p.reason


def test_cpu_torch_and_no_cuda_flag_skip_cuda(tmp_path):
    tk = fake_toolkit(tmp_path / "cuda")
    assert plan({"CUDA_HOME": str(tk)}, torch_cuda=None) == bh.CudaPlan(False, "torch is a CPU-only build")
    p = plan({"CUDA_HOME": str(tk), "STRUCTSPARSE_NO_CUDA": "1"})
    assert not p.build and "STRUCTSPARSE_NO_CUDA" in p.reason


def test_cuda_home_is_authoritative(tmp_path):
    tk = fake_toolkit(tmp_path / "cuda")
    bad = tmp_path / "empty"
    bad.mkdir()
    p = plan({"CUDA_HOME": str(bad)}, which=which_in(tk / "bin"))
    assert not p.build and f"CUDA_HOME={bad}" in p.reason  # not silently another toolkit


def test_toolkit_of_another_major_version_skips_cuda(tmp_path):
    tk = fake_toolkit(tmp_path / "cuda-12.4", release="12.4")
    p = plan({"CUDA_HOME": str(tk)}, torch_cuda="13.0")
    assert not p.build and "12.4" in p.reason and "13.0" in p.reason


def test_nvcc_through_a_symlink_in_an_odd_place(tmp_path):
    tk = fake_toolkit(tmp_path / "opt" / "cuda-13.0")
    odd = tmp_path / "odd" / "bin"
    odd.mkdir(parents=True)
    (odd / "nvcc").symlink_to(tk / "bin" / "nvcc")
    p = plan({}, which=which_in(odd))
    assert p == bh.CudaPlan(True, "", str(tk), "8.0;9.0+PTX")


def test_nvcc_wrapper_script_outside_the_toolkit(tmp_path):
    # /usr/local/bin/nvcc as `exec /usr/local/cuda-13.0/bin/nvcc "$@"`: its folder's parent is not
    # the toolkit (torch would guess /usr/local); nvcc --dryrun says where it really runs from
    tk = fake_toolkit(tmp_path / "cuda-13.0")
    wrap = _script(tmp_path / "wrap" / "bin" / "nvcc", f'exec {tk / "bin" / "nvcc"} "$@"\n')
    p = plan({}, which=which_in(wrap.parent))
    assert p.build and p.cuda_home == str(tk)


def test_default_toolkit_location(tmp_path):
    tk = fake_toolkit(tmp_path / "usr-local-cuda")
    p = bh.cuda_plan({}, "13.0", 0, which=which_in(), default_home=str(tk))
    assert p.build and p.cuda_home == str(tk)


def test_nvcc_that_cannot_run(tmp_path):
    tk = fake_toolkit(tmp_path / "cuda")
    _script(tk / "bin" / "nvcc", "exit 3\n")
    p = plan({"CUDA_HOME": str(tk)})
    assert not p.build and "--version" in p.reason


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc installed")
def test_the_installed_nvcc_is_found():
    home, why = bh.find_cuda_home({}, default="/nonexistent")
    assert home is not None, why
    assert bh.is_toolkit(home)
    assert bh.nvcc_version(os.path.join(home, "bin", "nvcc")) is not None


def test_env_flag():
    assert bh.env_flag({"X": "1"}, "X") and bh.env_flag({"X": " Yes"}, "X")
    assert not bh.env_flag({"X": "0"}, "X") and not bh.env_flag({}, "X")


# -- setup.py's one-line messages (no build: `setup.py --name` only evaluates the configuration) --


def _setup_name(env_extra: dict[str, str], block_torch: bool = False) -> subprocess.CompletedProcess:
    code = "import runpy, sys\n"
    if block_torch:
        code += "sys.modules['torch'] = None  # as in pip's isolated build environment\n"
    code += "sys.argv = ['setup.py', '--name']\nrunpy.run_path('setup.py', run_name='__main__')\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRUCTSPARSE_")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def _our_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("structsparse:")]


def test_setup_without_torch_says_what_to_run():
    res = _setup_name({}, block_torch=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "structsparse"
    lines = _our_lines(res.stderr)
    assert len(lines) == 1 and "pip install --no-build-isolation ." in lines[0], res.stderr
    res = _setup_name({"STRUCTSPARSE_REQUIRE_EXT": "1"}, block_torch=True)
    assert res.returncode != 0 and "needs torch at build time" in res.stderr


def test_setup_says_in_one_line_why_cuda_is_skipped():
    import torch

    if torch.version.cuda is not None:
        pytest.skip("a CUDA build of torch: the CPU-only message is not printed")
    res = _setup_name({})
    assert res.returncode == 0, res.stderr
    lines = _our_lines(res.stderr)
    assert lines == ["structsparse: building the CPU kernels only, CUDA skipped: torch is a CPU-only build"]
    res = _setup_name({"STRUCTSPARSE_REQUIRE_CUDA": "1"})
    assert res.returncode != 0
    assert (
        "STRUCTSPARSE_REQUIRE_CUDA is set but CUDA cannot be built: torch is a CPU-only build" in res.stderr
    )


# -- an install without structsparse._C -------------------------------------------------------


def test_package_without_extension_says_what_to_run(tmp_path):
    """The package as `pip install .` leaves it when the isolated build had no torch: no _C. The
    reason names the command to run (never Python's "circular import" of a missing submodule), and
    the optimizer's fallback warning is one line."""
    pkg = tmp_path / "structsparse"
    shutil.copytree(
        ROOT / "structsparse", pkg, ignore=shutil.ignore_patterns("_C*.so", "_C*.pyd", "__pycache__")
    )
    code = (
        "import sys\n"
        "# an editable install of a built checkout would map structsparse._C to its .so\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if not f.__module__.startswith('__editable__')]\n"
        "import warnings, torch, structsparse as ss\n"
        "from structsparse import ops\n"
        f"assert ss.__file__.startswith({str(tmp_path)!r}), ss.__file__\n"
        "print('LOADED', ops.loaded())\n"
        "p = torch.nn.Parameter(torch.ones(3, 2))\n"
        "p.grad = torch.ones(3, 2)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    ss.RMDA([p], lr=0.1).step()\n"
        "print('WARN', repr(str(w[0].message)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "circular" not in out.lower()
    loaded = next(ln for ln in out.splitlines() if ln.startswith("LOADED"))
    assert "False" in loaded and "pip install --no-build-isolation ." in loaded
    warn = next(ln for ln in out.splitlines() if ln.startswith("WARN"))
    assert "pip install --no-build-isolation ." in warn and "\\n" not in warn
