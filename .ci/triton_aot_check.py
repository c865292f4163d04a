"""Compile the step kernel's variants for a GPU architecture, without a GPU.

``python .ci/triton_aot_check.py [--arch 90 80] [--quick]`` (from the repository root, with
structsparse importable) runs Triton's full
pipeline (TTIR → TTGIR → LLVM IR → PTX → cubin with Triton's bundled ptxas) for every
(algorithm, regularizer, solver, on-chip/two-phase) combination the launch wrappers can request,
and exits non-zero on the first failure. The interpreter (``TRITON_INTERPRET=1``) checks the
numbers; this checks that the same source is valid for the GPU compiler (loop-carried types,
pointer casts, dtype promotion), which the interpreter does not. Must run without
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import argparse
import sys
import time

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from structsparse.triton_kernels import lbi_step, step

_PTRS = ("ptab", "dims", "starts", "strd", "cnt")
_INTS = ("T", "max_iters", "newton_max")
_CONSTS = ("ALG", "REG", "SOLVER", "FIT", "R", "BK", "NSEARCH", "PDT", "SDT", "ND", "PAIRED", "MS")


def variants(quick: bool = False) -> list[dict]:
    """Every constexpr combination the wrappers launch (fp32), plus low-precision and fp64 ones."""
    out = []
    for alg in range(5):
        for reg in range(4):
            for solver in (step.SOLVER_PROX, step.SOLVER_NEWTON, step.SOLVER_PG):
                if reg == step.REG_NONE and solver != step.SOLVER_PROX:
                    continue
                if alg in (step.ALG_RMDA, step.ALG_PROXSGD) and solver != step.SOLVER_PROX:
                    continue
                if alg == step.ALG_PROXSSI and solver == step.SOLVER_PG:
                    continue
                for fit in (True, False):
                    out.append(dict(ALG=alg, REG=reg, SOLVER=solver, FIT=fit))
    if quick:
        keep = {
            (0, 1, 0, True),
            (1, 1, 1, False),
            (1, 1, 2, True),
            (1, 2, 2, True),
            (1, 3, 2, False),
            (4, 1, 1, True),
            (1, 3, 1, True),
            (3, 2, 1, False),
            (4, 3, 1, False),
        }
        out = [v for v in out if (v["ALG"], v["REG"], v["SOLVER"], v["FIT"]) in keep]
    full = []
    for v in out:
        dts = [(tl.float32, tl.float32)]
        if v["ALG"] == step.ALG_RAMDA and v["REG"] == step.REG_GROUP_LASSO and v["FIT"]:
            dts += [(tl.bfloat16, tl.float32), (tl.float16, tl.float32), (tl.float64, tl.float64)]
        for pdt, sdt in dts:
            full.append(
                dict(
                    v, R=64 if v["FIT"] else 1, BK=16 if v["FIT"] else 1024, NSEARCH=3, PDT=pdt, SDT=sdt, ND=0
                )
            )
        if v["ALG"] == step.ALG_RAMDA and v["REG"] == step.REG_GROUP_LASSO and v["SOLVER"] == step.SOLVER_PG:
            # strided (e.g. channels_last 4-D) parameters and gradients
            full.append(dict(full[-len(dts)], ND=4))
    return full


def lbi_variants(quick: bool = False) -> list[tuple[object, dict]]:
    """DessiLBI kernels: (kernel, constexprs) for paired/unpaired × magnitude scaling × on chip."""
    base = dict(NSEARCH=3, PDT=tl.float32, SDT=tl.float32, ND=0)
    out = []
    for fit in (True, False):
        tile = dict(base, FIT=fit, R=64 if fit else 1, BK=16 if fit else 1024)
        out.append((lbi_step.count_kernel, tile))
        for paired, ms in ((False, False), (True, False), (True, True)):
            out.append((lbi_step.dessilbi_kernel, dict(tile, PAIRED=paired, MS=ms)))
    out.append((lbi_step.dessilbi_kernel, dict(out[-1][1], ND=4, PDT=tl.bfloat16)))
    if quick:
        out = [out[0], out[3], out[7], out[8]]
    return out


def compile_variant(consts: dict, arch: int, num_warps: int = 4, fn=None):
    fn = fn or step.step_kernel
    names = fn.arg_names
    sig = {
        n: "*i64" if n in _PTRS else "i32" if n in _INTS else "constexpr" if n in _CONSTS else "fp32"
        for n in names
    }
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", nargs="+", type=int, default=[90, 80])
    ap.add_argument("--quick", action="store_true", help="a representative subset")
    args = ap.parse_args(argv)
    if type(step.step_kernel).__name__ == "InterpretedFunction":
        print("aot_check: unset TRITON_INTERPRET to compile for a GPU", file=sys.stderr)
        return 2
    n = 0
    for arch in args.arch:
        for consts in variants(args.quick):
            t0 = time.time()
            k = compile_variant(consts, arch)
            assert "cubin" in k.asm, consts
            n += 1
            tag = " ".join(f"{a}={consts[a]}" for a in ("ALG", "REG", "SOLVER", "FIT", "PDT"))
            print(f"sm_{arch} {tag}: ok ({time.time() - t0:.1f}s)")
        for fn, consts in lbi_variants(args.quick):
            t0 = time.time()
            k = compile_variant(consts, arch, fn=fn)
            assert "cubin" in k.asm, consts
            n += 1
            tag = " ".join(f"{a}={v}" for a, v in consts.items() if a in ("FIT", "PAIRED", "MS", "ND", "PDT"))
            print(f"sm_{arch} {fn.__name__} {tag}: ok ({time.time() - t0:.1f}s)")
    print(f"compiled {n} variants")
    return 0


if __name__ == "__main__":
    sys.exit(main())
