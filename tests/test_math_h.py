"""csrc/include/structsparse/math.h compiled alone by the C++ compiler that builds the extension:
its float cube root (P = cbrt(U) + ε of RAMDA's CPU and CUDA kernels) against the correctly
rounded cube root (the float64 cube root rounded to float32), and Newton's rule of the exact
group-LASSO solve on float groups against the float64 root."""

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


def build(tmp_path_factory, name: str) -> Path:
    exe = tmp_path_factory.mktemp("math_h") / name
    # the extension's flags for its kernels (setup.py), no ISA flags: fmaf as the library call
    cmd = [CXX, "-O3", "-std=c++20", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]
    cmd += [f"-I{ROOT / 'csrc' / 'include'}", str(ROOT / "tests" / "math_h" / f"{name}.cpp"), "-o", str(exe)]
    subprocess.run(cmd, check=True, timeout=300)
    return exe


@pytest.fixture(scope="module")
def cbrt_exe(tmp_path_factory) -> Path:
    return build(tmp_path_factory, "cbrt")


@pytest.fixture(scope="module")
def newton_exe(tmp_path_factory) -> Path:
    return build(tmp_path_factory, "newton")


def run_cbrt(exe: Path, u: np.ndarray, *args: str) -> np.ndarray:
    out = subprocess.run(
        [str(exe), *args], input=u.astype(np.float32).tobytes(), capture_output=True, check=True
    )
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
    assert d.max() <= 1
    # u < 2^-96 is scaled by 2^96 (subnormals through their bits), so the residual c³ − u stays
    # normal: measured 81 misroundings among every float below 2^-96 (260 M); a residual that
    # underflows misrounds about 0.7 % of them.
    assert int((d > 0).sum()) <= 5


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


def test_cbrt_unscaled_is_cbrt(cbrt_exe):
    """cbrt_nonneg_unscaled (RAMDA's state pass takes it for a chunk where no u needs scaling) is
    cbrt_nonneg bit for bit wherever cbrt_scales(u) is false, and cbrt_scales marks exactly
    0 < u < 2^-96."""
    rng = np.random.default_rng(1)
    f32 = np.finfo(np.float32)
    u = np.concatenate(
        [
            np.exp(rng.uniform(np.log(1e-45), np.log(3e38), 500_000)).astype(np.float32),
            np.array(
                [0.0, -0.0, -1.0, np.inf, np.nan, f32.max, 2.0**-96, 2.0**-96 * (1 - 2.0**-24)], np.float32
            ),
        ]
    )
    ref = run_cbrt(cbrt_exe, u)
    got = run_cbrt(cbrt_exe, u, "unscaled")
    scales = (u > 0) & (u < np.float32(2.0**-96))
    assert np.isnan(got[scales]).all()
    np.testing.assert_array_equal(got[~scales].view(np.int32), ref[~scales].view(np.int32))


def test_newton_negative_first_step_stops(newton_exe):
    """Long float groups shaped like RAMDA's state on a 2304-row weight (P spread over four
    decades, T small against P·r): the start R − c̄ from float start sums lands a few ulps right of
    the root for some groups. Their negative first step then stops on its error bound (math.h
    newton_next) instead of taking a second pass, and every root is within Newton's tolerance
    (NEWTON_ULPS = 4 ulps) of the float64 root of the same float data."""
    rng = np.random.default_rng(0)
    groups, n = 400, 2304
    g = rng.normal(0, 0.01, (groups, n))
    p = (np.cbrt(6 * g * g) + 1e-6).astype(np.float32)
    pz = (p * rng.normal(0, 0.05, (groups, n)) - 0.6 * g).astype(np.float32)
    thr = np.float32(2.6e-6)
    inp = np.array([groups, n], np.int64).tobytes() + np.array([thr], np.float32).tobytes()
    out = subprocess.run(
        [str(newton_exe)], input=inp + p.tobytes() + pz.tobytes(), capture_output=True, check=True
    )
    rec = np.frombuffer(
        out.stdout, dtype=np.dtype([("r", np.float32), ("passes", np.int32), ("neg", np.int32)])
    )
    assert rec.shape == (groups,)
    neg = rec["neg"] == 1
    assert neg.sum() >= 5  # measured 22: the path is exercised
    assert (rec["passes"][neg] == 1).all()  # the negative-step stop: one pass each
    assert (rec["passes"] <= 2).all()
    p64, z64, r = p.astype(np.float64), pz.astype(np.float64), rec["r"].astype(np.float64)
    root = r.copy()
    for _ in range(100):  # Newton in float64 from the float result: converges in a few steps
        inv = 1 / (p64 * root[:, None] + float(thr))
        q2 = (z64 * inv) ** 2
        s1, s2 = q2.sum(1), (q2 * p64 * inv).sum(1)
        root = root + s1 * (np.sqrt(s1) - 1) / s2
    err = np.abs(r - root) / root / 2.0**-23
    # a step below the tolerance stops without being taken: up to ~4 ulps (measured 3.99, a
    # positive first step's), plus the float terms' rounding
    assert err.max() <= 6.0
    # the negative steps are taken (measured 0.27); stopping before one would leave ~5 ulps
    assert err[neg].max() <= 1.0
