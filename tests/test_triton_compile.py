"""The Triton step kernel compiles for sm_90 and sm_80 (no GPU needed: Triton bundles ptxas).

Runs ``.ci/triton_aot_check.py`` in a subprocess without ``TRITON_INTERPRET``,
so that the compiled-mode triton of that process is independent of this one's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


def test_step_kernel_compiles_for_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "triton_aot_check.py"), "--quick", "--arch", "90", "80"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "compiled 34 variants" in r.stdout, r.stdout[-3000:]
