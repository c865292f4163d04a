""".ci/check_words catches development-history wording and references outside the repository, and
every "docs/math.md §N" reference in the tree names a section that docs/math.md has."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BAD = [
    "fixed in session 3",
    "the session that wrote this",
    "see #26 for details",
    "closes issue 27",
    "round 4 of work",
    "Round 2 changed this",
    "merged as PR #31",
    "the previous version of this page",
    "per SPEC §3",
    "see ../shared/papers",
    "DESIGN.md says",
    "/work/main/structsparse",
    "/work/brief.md",
]
GOOD = [
    "[RAMDA](#4-ramda-and-the-weighted-subproblem)",
    'color="#1f77b4", &#39;, foo#3.',
    "#include <cmath>",
    "rounds each value; the issue is the rounding",
    "the previous checkpoint stays in force",
]


def _check_words(tmp_path: Path, lines: list[str]) -> subprocess.CompletedProcess:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "check_words", tmp_path / ".ci" / "check_words")
    (tmp_path / "notes.md").write_text("\n".join(lines) + "\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
    return subprocess.run(
        ["bash", ".ci/check_words"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def test_check_words_flags_every_bad_line(tmp_path):
    r = _check_words(tmp_path, BAD)
    assert r.returncode == 1
    flagged = {int(line.split(":")[1]) for line in r.stdout.splitlines() if line.startswith("notes.md:")}
    assert flagged == set(range(1, len(BAD) + 1)), r.stdout


def test_check_words_passes_ordinary_text(tmp_path):
    r = _check_words(tmp_path, GOOD)
    assert r.returncode == 0, r.stdout + r.stderr


def _math_sections() -> set[str]:
    heads = re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", (ROOT / "docs" / "math.md").read_text(), re.M)
    return set(heads)


def test_every_math_md_section_reference_exists():
    sections = _math_sections()
    assert {"1", "4", "4.4", "11"} <= sections
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.split()
    if not files:  # not a git checkout (an sdist): the files under the root
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]
    bad = []
    # "math.md §3", "math.md §3, §7", "math.md §2–§5", "[math.md §4.4](...)"
    ref = re.compile(r"math\.md\]?\)?'?s? ?(§\d+(?:\.\d+)?(?:(?:, |–|-)§\d+(?:\.\d+)?)*)")
    for name in files:
        path = ROOT / name
        if name == "docs/math.md" or path.suffix not in {".py", ".md", ".h", ".cpp", ".cu", ".cuh", ""}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for m in ref.finditer(text):
            for sec in re.findall(r"§(\d+(?:\.\d+)?)", m.group(1)):
                if sec not in sections:
                    bad.append(f"{name}: §{sec}")
    assert not bad, bad
