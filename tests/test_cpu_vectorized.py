"""The hot loops of the CPU tile kernels vectorize (GCC's own report, -fopt-info-vec).

A loop the compiler leaves scalar still gives the right numbers, only several times slower, and
no numeric test notices: an edit of an exact solve's state sweep (exact_state_rows) that pushes its
row loop past GCC's size limit for complete unrolling makes the vectorizer give up on the whole
sweep, and the step then takes several times longer per element. This test compiles the AVX-512 and
AVX2 kernel files as setup.py does (they need no torch headers) with GCC's vectorization report,
and checks, for each elementwise loop below, that it is reported vectorized and that at most the
listed number of its instantiations is not (RAMDA's double instantiations call the library's
double cube root, which does not vectorize).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU = ROOT / "csrc" / "cpu"
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _is_gcc(cxx: str | None) -> bool:
    if cxx is None:
        return False
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError:
        return False
    return "clang" not in out.lower() and ("gcc" in out.lower() or "free software foundation" in out.lower())


pytestmark = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or not _is_gcc(CXX),
    reason="GCC's -fopt-info report on x86-64 only",
)

# (file, function, first line of the loop inside it, instantiations allowed to stay scalar)
LOOPS = [
    ("kernels_impl.h", "exact_state_rows", "for (int64_t k = 0; k < n; ++k) {", 0),
    ("kernels_impl.h", "exact_start_rows", "for (int64_t k = 0; k < n; ++k) {", 0),
    ("kernels_impl.h", "ramda_state_chunk", "for (int64_t k = 0; k < n; ++k) {", 0),
    # the float cube roots (the double one, the library's cbrt, is a loop of its own: scalar)
    ("kernels_impl.h", "ramda_state_chunk", "for (int64_t k = 0; k < n; ++k) p[k] = cbrt_nonneg(", 0),
    (
        "kernels_impl.h",
        "ramda_state_chunk",
        "for (int64_t k = 0; k < n; ++k) p[k] = cbrt_nonneg_unscaled(",
        0,
    ),
    ("kernels_impl.h", "newton_x_row", "for (int64_t k = 0; k < n; ++k) {", 0),
    ("solve_rows.h", "newton_start_row", "for (int64_t k = 0; k < n; ++k) {", 0),
    ("solve_rows.h", "newton_row", "for (int64_t k = 0; k < n; ++k) {", 0),
    ("solve_rows.h", "newton_row2", "for (int64_t k = 0; k < n; ++k) {", 0),
    ("solve_rows.h", "pg_row", "for (int64_t k = 0; k < n; ++k) {", 0),
    ("solve_rows.h", "pg_row2", "for (int64_t k = 0; k < n; ++k) {", 0),
    ("solve_rows.h", "gmcp_start_row", "for (int64_t k = 0; k < n; ++k) {", 0),
    ("solve_rows.h", "gmcp_pick_row", "for (int64_t k = 0; k < n; ++k) {", 0),
    ("kernels_impl.h", "finite_bits", "for (int64_t i = 0; i < h; ++i) {", 0),  # the NaN/Inf check
]


def loop_line(fname: str, func: str, loop: str) -> int:
    """1-based line of the first `loop` after the definition of `func` in csrc/cpu/`fname`."""
    lines = (CPU / fname).read_text().split("\n")
    start = next(i for i, t in enumerate(lines) if re.search(rf"\b{func}\(", t) and "inline" in t)
    return next(i for i in range(start, len(lines)) if loop in lines[i]) + 1


@pytest.fixture(scope="module", params=["avx512", "avx2"])
def report(request, tmp_path_factory) -> Counter:
    out = tmp_path_factory.mktemp("vec") / f"{request.param}.txt"
    # setup.py's flags for the kernels (-fopenmp aside: the tile kernels have no OpenMP)
    cmd = [CXX, "-O3", "-std=c++20", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]
    cmd += [f"-I{ROOT / 'csrc' / 'include'}", f"-I{CPU}", "-c", str(CPU / f"kernels_{request.param}.cpp")]
    cmd += ["-o", os.devnull, f"-fopt-info-vec-all={out}"]
    subprocess.run(cmd, check=True, timeout=600, cwd=ROOT)
    counts: Counter = Counter()
    pat = re.compile(r"([\w./-]+):(\d+):\d+: (optimized: loop vectorized|missed: couldn't vectorize loop)")
    for m in pat.finditer(out.read_text()):
        counts[(Path(m.group(1)).name, int(m.group(2)), m.group(3).split(":")[0])] += 1
    return counts


@pytest.mark.parametrize("fname,func,loop,scalar_ok", LOOPS, ids=[x[1] for x in LOOPS])
def test_hot_loop_vectorized(report, fname, func, loop, scalar_ok):
    line = loop_line(fname, func, loop)
    vec = report[(fname, line, "optimized")]
    missed = report[(fname, line, "missed")]
    assert vec > 0, f"{fname}:{line} ({func}): no instantiation vectorized"
    assert missed <= scalar_ok, (
        f"{fname}:{line} ({func}): {missed} instantiations left scalar (allowed {scalar_ok})"
    )
