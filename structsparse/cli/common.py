"""Small utilities shared by the subcommands: the CLI's error type, device choice, run folders, the
per-epoch log, progress bars, number formatting and Markdown tables, the thread-count context.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch


class CLIError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise CLIError(f"--device: invalid device {name!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device: {name!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"--device: unsupported device type {dev.type!r}; expected cpu or cuda")
    return dev


def check_backend(name: str, device: str, distributed: bool = False) -> None:
    """Fail early (a :class:`CLIError`, before any output is created) when ``--backend`` cannot run
    here with ``--device`` (under ``torchrun`` the device is the CPU)."""
    dev = _pick_device("cpu" if distributed else device)
    if name in ("auto", "reference"):
        return
    from .. import backends

    try:
        backends.resolve(name, dev)
    except (RuntimeError, ValueError) as e:
        raise CLIError(f"--backend {name}: {str(e).splitlines()[0]}") from e
    if name == "cuda" and dev.type != "cuda":
        raise CLIError("--backend cuda: runs on CUDA tensors; use --device cuda")
    if name == "triton" and dev.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise CLIError("--backend triton: runs on CUDA tensors (on CPU only with TRITON_INTERPRET=1)")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _run_dir(base: str | None, name: str, unique: bool, create: bool = True) -> Path:
    """``<base or ./runs>/<name>``, with ``-1``, ``-2``, … appended when ``unique`` and it exists;
    created unless ``create`` is false (then :func:`make_dir` creates it once the input is valid).
    ``name`` (``--run-name``) is one folder name: no path separator, not ``.`` or ``..``."""
    if not name or name in (".", "..") or "/" in name or (os.sep != "/" and os.sep in name):
        raise CLIError(f"--run-name: expected a folder name (no path separator, not . or ..), got {name!r}")
    root = Path(base) if base else Path.cwd() / "runs"
    path = root / name
    if unique and path.exists():
        k = 1
        while (root / f"{name}-{k}").exists():
            k += 1
        path = root / f"{name}-{k}"
    return make_dir(path) if create else path


def make_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"--out: cannot create {path}: {e.strerror}") from e
    return path


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Write ``path`` all or nothing: the block writes a temporary file in the same folder, which is
    flushed, fsync'ed and renamed over ``path`` (``os.replace``, atomic on POSIX) when the block
    ends without error; on error it is removed and ``path`` keeps its previous content."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # the permissions of a file opened with open()
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": "", "encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable (not every file system allows it)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_text(path: str | Path, text: str) -> None:
    """``Path.write_text`` done atomically (:func:`atomic_open`)."""
    with atomic_open(path, "w") as f:
        f.write(text)


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` done atomically (:func:`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def save_figure(fig: Any, path: str | Path, dpi: int) -> None:
    """A matplotlib figure saved as PNG atomically (:func:`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)


class _Log:
    """Per-epoch log written as JSON lines or CSV, one flushed row at a time. ``keep`` rows of an
    existing log are kept (a resumed run: the file is first rewritten atomically with them)."""

    def __init__(self, path: Path, fmt: str, keep: int | None = None) -> None:
        self.path, self.fmt = path, fmt
        self.writer: csv.DictWriter | None = None
        if keep is None:
            self.f = open(path, "w", newline="")
            return
        lines = path.read_text().splitlines(keepends=True) if path.exists() else []
        header = 1 if fmt == "csv" and lines else 0
        write_text(path, "".join(lines[: header + keep]))
        self.f = open(path, "a", newline="")
        if header:
            self.writer = csv.DictWriter(self.f, fieldnames=lines[0].strip().split(","))

    def write(self, row: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            self.f.write(json.dumps(row) + "\n")
        else:
            if self.writer is None:
                self.writer = csv.DictWriter(self.f, fieldnames=list(row))
                self.writer.writeheader()
            self.writer.writerow(row)
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(
        iterable, total=total, desc=desc, leave=False, unit="batch", file=sys.stderr, dynamic_ncols=True
    )


def _fmt(x: Any) -> str:
    return f"{100 * x:5.1f}%" if isinstance(x, float) else str(x)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


class _threads:
    """Set torch's intra-op thread count for the duration of a run (restored afterwards).

    ``None`` (auto): one thread for the small embedded/synthetic data sets, where the tensors are
    too small for intra-op parallelism to pay and a busy machine makes spinning threads very slow;
    torch's default otherwise."""

    def __init__(self, n: int | None, dataset: str) -> None:
        if n is not None and n < 1:
            raise CLIError(f"--threads: expected a positive thread count, got {n}")
        self.n = n if n is not None else (1 if dataset in ("digits", "synthetic") else None)

    def __enter__(self):
        self.old = torch.get_num_threads()
        if self.n is not None:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


def _silent(_msg: str) -> None:
    """``echo`` of the ranks other than 0."""
