"""csrc/include/structsparse/math.h's float cube root (P = cbrt(U) + ε of RAMDA's CPU and CUDA
kernels), compiled alone by the C++ compiler that builds the extension and compared with the
correctly rounded cube root (the float64 cube root rounded to float32)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CXX = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler")


@pytest.fixture(scope="module")
def cbrt_exe(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("math_h") / "cbrt"
    # the extension's flags for its kernels (setup.py), no ISA flags: fmaf as the library call
    cmd = [CXX, "-O3", "-std=c++20", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]
    cmd += [f"-I{ROOT / 'csrc' / 'include'}", str(ROOT / "tests" / "math_h" / "cbrt.cpp"), "-o", str(exe)]
    subprocess.run(cmd, check=True, timeout=300)
    return exe


def run_cbrt(exe: Path, u: np.ndarray) -> np.ndarray:
    out = subprocess.run([str(exe)], input=u.astype(np.float32).tobytes(), capture_output=True, check=True)
    return np.frombuffer(out.stdout, dtype=np.float32)


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a − b| in units in the last place of nonnegative float32 values (bit patterns are ordered)."""
    return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))


def correctly_rounded(u: np.ndarray) -> np.ndarray:
    return np.cbrt(u.astype(np.float64)).astype(np.float32)


def test_cbrt_log_uniform(cbrt_exe):
    rng = np.random.default_rng(0)
    normal = np.exp(rng.uniform(np.log(1e-23), np.log(3e38), 1_000_000)).astype(np.float32)
    got = run_cbrt(cbrt_exe, normal)
    d = ulps(got, correctly_rounded(normal))
    assert d.max() <= 1
    # measured 4 misroundings in 4M samples of 1e-23..1e30 (math.h); a broken step shows thousands
    assert int((d > 0).sum()) <= 20
    tiny = np.exp(rng.uniform(np.log(1e-45), np.log(1e-23), 200_000)).astype(np.float32)
    tiny = tiny[tiny > 0]
    d = ulps(run_cbrt(cbrt_exe, tiny), correctly_rounded(tiny))
    assert d.max() <= 1  # subnormals (scaled by 2^24) and the range where the residual underflows


def test_cbrt_special_values(cbrt_exe):
    f32 = np.finfo(np.float32)
    u = np.array(
        [0.0, -0.0, -1.0, 1.0, 8.0, 27.0, 0.125, 2.0**-126, 2.0**-149, f32.max, 1e-40, 3e38],
        dtype=np.float32,
    )
    got = run_cbrt(cbrt_exe, u)
    assert got[0] == 0.0 and got[1] == 0.0 and got[2] == 0.0  # U ≥ 0 in RAMDA; 0 and below give 0
    np.testing.assert_array_equal(got[3:7], np.array([1.0, 2.0, 3.0, 0.5], dtype=np.float32))
    assert ulps(got[7:], correctly_rounded(u[7:])).max() <= 1
    cubes = np.arange(1, 2000, dtype=np.float64) ** 3  # cubes below 2^24 are exact in float32
    cubes = cubes[cubes < 2**24].astype(np.float32)
    np.testing.assert_array_equal(
        run_cbrt(cbrt_exe, cubes), np.round(np.cbrt(cubes.astype(np.float64))).astype(np.float32)
    )
