// Interface between the CPU dispatcher (steps.cpp side, compiled with default flags) and the
// per-ISA tile kernels (kernels_impl.h compiled several times with different target flags).
//
// A tensor viewed as [A, G, B] (docs/math.md §1) is cut into tiles of `ng` consecutive groups. A tile is
// A rows; row a holds the ng·B contiguous elements (a, j0..j0+ng, 0..B). Each array of a tile is a
// pointer to row 0 plus a row stride (rs): element (a, j, b) of the tile is p[a·rs + j·B + b].
// The dispatcher points state arrays into the (contiguous) state tensors and the parameter and
// gradient at either the tensors themselves (contiguous, same dtype) or a gathered copy.
#pragma once

#include <cstdint>

namespace structsparse {
namespace cpu {

struct TileArgs {
  int64_t A, ng, B;
  void* w;
  int64_t w_rs;  // parameter (math dtype), read-write
  const void* g;
  int64_t g_rs;  // gradient (math dtype)
  void* s0;
  void* s1;
  void* s2;
  int64_t s_rs;     // state tensors (anchor, grad_sum, sq_grad_sum | exp_avg, exp_avg_sq | buf)
  double sc[8];     // per-tensor scalars of the algorithm (see each kernel)
  int reg_kind;     // structsparse::RegKind
  double lam, lam2, omega, wg;
  int exact;  // 1: solver "exact", 0: "pg"
  int wide = 0;  // wide tiles (exact solver with a regularizer, see groups_per_tile): no prefetch
  int64_t max_iters;
  double rtol;
  void* scratch;  // at least scratch_elems(A, ng, B, wide) elements of the math dtype
  // Two-pass streaming of the prox kernels (RMDA, ProxSGD) for A > 1, where the tile is a block
  // of rows of its groups: 0 = whole groups in one tile; 1 = pass 1 (update the state, write the
  // tile's per-group partial sums of z² to `gsum`); 2 = pass 2 (`gsum` holds the complete sums:
  // apply the prox, no state update).
  int mode = 0;
  void* gsum = nullptr;  // ng doubles
};

// Scratch of the row-layout solvers (solve_rows.h), counted in elements of float (an upper bound
// for double). row_newton: 3 double position arrays and 3 double group arrays (64-byte aligned),
// ng + 1 int64 run bounds, then pz (A·row), 2 position arrays, 3 group arrays. row_pg: 5 packed
// tiles, 7 position arrays, 5 group arrays, then 3 int64 per group (original group indices, run
// starts and lengths of the block copies), 3 double position arrays and 5 double group arrays
// (the objective's sums, Q(x0), Q_prev).
inline int64_t row_newton_scratch(int64_t A, int64_t ng, int64_t B) {
  return A * ng * B + 8 * ng * B + 11 * ng + 66;
}
inline int64_t row_pg_scratch(int64_t A, int64_t ng, int64_t B) {
  // T arrays, then int64 and double arrays counted in 4-byte elements (an upper bound for double T)
  return 5 * A * ng * B + 7 * ng * B + 5 * ng + 2 * (3 * ng + 3 * ng * B + 5 * ng) + 64;
}

inline int64_t scratch_elems(int64_t A, int64_t ng, int64_t B, bool wide) {
  // solvers (RAMDA, ProxGen, ProxSSI): P, L, X tiles, then the PG solver's scratch; the exact
  // solves (wide tiles) need at most 3 tiles (fused: P, then the Newton scratch; λ·α = 0: P, L,
  // X, no solver);
  // prox kernels: ng double group sums + a double row, or 2 chunks + ng scales (prox_tile_k);
  // 2 floats per double, an upper bound for double tiles
  const int64_t nt = row_newton_scratch(A, ng, B), pg = row_pg_scratch(A, ng, B);
  const int64_t tot = A * ng * B;
  const int64_t solver = wide ? (tot + nt > 3 * tot ? tot + nt : 3 * tot) : 3 * tot + (nt > pg ? nt : pg);
  const int64_t prox = 2 * ng + 2 * ng * B + ng * B + 2 * (B + 1024) + ng + 64;
  return solver > prox ? solver : prox;
}

using TileFn = void (*)(const TileArgs&);

// [0]: float math, [1]: double math
struct KernelTable {
  const char* isa;
  TileFn rmda[2];
  TileFn ramda[2];
  TileFn proxsgd[2];
  TileFn proxgen[2];
  TileFn proxssi[2];
  TileFn dessilbi[2];
  // all elements finite (exponent bits not all ones); finite16 takes the exponent mask
  bool (*finite32)(const uint32_t*, int64_t);
  bool (*finite64)(const uint64_t*, int64_t);
  bool (*finite16)(const uint16_t*, int64_t, uint16_t);
};

KernelTable kernels_default();
KernelTable kernels_avx2();
KernelTable kernels_avx512();

}  // namespace cpu
}  // namespace structsparse
