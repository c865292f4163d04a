// Tile kernels of the fused CPU steps. Included once per instruction set by kernels_<isa>.cpp,
// which defines SS_ISA (the namespace) and sets the target flags before including this file.
// No torch or std templates here: only raw pointers and the static inline math of
// csrc/include/structsparse/math.h, so copies compiled for different ISAs never mix at link time.
//
// Every kernel processes one tile (see tile.h) in one pass over memory for the elementwise part;
// groups that need a norm take a second, cache-resident pass over the tile; the solvers
// (solve_rows.h) iterate over the tile in row layout, in cache, through all PG / Newton iterations.

#include "structsparse/math.h"
#include "tile.h"

namespace structsparse {
namespace cpu {
namespace SS_ISA {

namespace {

// Software prefetch of one row segment (n elements) of a strided tile array. A tile with A > 1 is
// A short segments (ng·B elements) a row stride apart, which the hardware prefetchers do not
// follow; the first-touch loops of the narrow (PG) tiles fetch row a + pf_dist(row) while
// computing row a. The wide tiles of the exact solves (TileArgs::wide, see groups_per_tile) do
// without: their long rows are streamed by the hardware prefetchers, and prefetching measured
// slower there (docs/performance.md).
template <typename T>
inline void pf_row(const T* p, int64_t n) {
#if defined(__GNUC__) || defined(__clang__)
  for (int64_t i = 0; i < n; i += int64_t(64 / sizeof(T))) __builtin_prefetch(p + i);
  __builtin_prefetch(p + n - 1);
#endif
}
template <typename T>
inline int64_t pf_dist(int64_t row) {
  const int64_t d = int64_t(4096 / sizeof(T)) / (row > 0 ? row : 1);
  return d < 1 ? 1 : (d > 16 ? 16 : d);
}

template <typename T>
inline Reg<T> make_reg(const TileArgs& t) {
  return Reg<T>{t.reg_kind, T(t.lam), T(t.lam2), T(t.omega), T(t.wg)};
}

// Proximal map of tau·ψ applied to z(a, k) over a tile, in up to two passes.
//   upd(a, k) -> z   first pass: updates the state of element (a, k) and returns z
//   rez(a, k) -> z   second pass: recomputes z from the updated state (no state writes)
//   fin(a, k, x)     stores the prox value x of element (a, k)
//   pfw              null, or an array (row stride t.w_rs) that fin reads and upd does not (RMDA's W):
//                    one-pass tiles of one row prefetch it chunk by chunk in the first pass, so the
//                    second pass does not start a cold stream (a gain with 1 thread; measured in
//                    docs/performance.md)
// Rows are processed in chunks of whole groups through a small buffer so that every loop is a
// plain vectorizable loop. The squares z² are taken and summed in double and the norm is the
// double sqrt rounded to T once, as the reference's group norms are: the norm then hardly depends
// on the summation order (tiles, row blocks, ranks of a sharded tensor), and a float group's
// squares cannot overflow (float z² did from |z| = 1.8e19 on; a double one still can from 1.3e154,
// and shrink_scale then takes the limit of an infinite norm). scratch (see scratch_elems):
// ng + row doubles, then row + ng T (or 2 chunks of T and the ng scales).
// The first-pass loops carry `#pragma GCC ivdep`: iteration k touches element k of each array only
// (no loop-carried dependence). Without it GCC could not vectorize DessiLBI's first pass (three
// stores: too many run-time alias checks to version the loop) and ran it scalar.
template <int KIND, typename T, typename Upd, typename Rez, typename Fin>
inline void prox_tile_k(const TileArgs& t, const Reg<T>& reg, T tau, T* scr, Upd upd, Rez rez, Fin fin,
                        const T* pfw) {
  const int64_t A = t.A, ng = t.ng, B = t.B, row = ng * B;
  if constexpr (KIND == REG_NONE) {
    for (int64_t a = 0; a < A; ++a)
      for (int64_t k = 0; k < row; ++k) fin(a, k, upd(a, k));
    return;
  } else {
    constexpr bool sgl = KIND == REG_SPARSE_GROUP_LASSO;
    const T t1 = tau * reg.lam;  // SGL soft threshold
    if (A * B == 1 && t.mode == 0) {  // one element per group: elementwise
      for (int64_t k = 0; k < row; ++k) {
        T z = upd(0, k);
        T y = sgl ? soft_threshold(z, t1) : z;
        fin(0, k, y * group_prox_scale_k<KIND>(reg, tau, std::fabs(y)));  // the norm of one element
      }
      return;
    }
    double* __restrict dscr = reinterpret_cast<double*>(scr);
    if (A > 1 || t.mode != 0) {
      // Many rows: per-position sums over the rows (vectorized along the row), reduced per group
      // once; the scale is expanded to positions once.
      double* __restrict gs = t.mode == 1 ? static_cast<double*>(t.gsum) : dscr;
      double* __restrict acc = dscr + ng;
      T* __restrict sx = reinterpret_cast<T*>(acc + row);
      T* __restrict sg = sx + row;  // the groups' scales
      if (t.mode != 2) {
        for (int64_t k = 0; k < row; ++k) acc[k] = 0.0;
        for (int64_t a = 0; a < A; ++a)
#pragma GCC ivdep
          for (int64_t k = 0; k < row; ++k) {
            T z = upd(a, k);
            const double y = double(sgl ? soft_threshold(z, t1) : z);
            acc[k] += y * y;
          }
        if (B == 1) {
          for (int64_t j = 0; j < ng; ++j) gs[j] = acc[j];
        } else {
          for (int64_t j = 0; j < ng; ++j) gs[j] = lane_sum<double>(B, [&](int64_t b) { return acc[j * B + b]; });
        }
        if (t.mode == 1) return;
      } else {
        gs = static_cast<double*>(t.gsum);  // the complete sums
      }
      // The scales in a plain loop over the groups (it vectorizes; every row block of a streamed
      // job computes them again), then expanded to positions: a little faster than one loop per
      // group with its B positions inside.
      for (int64_t j = 0; j < ng; ++j) sg[j] = group_prox_scale_k<KIND>(reg, tau, T(std::sqrt(gs[j])));
      const T* __restrict sp = sx;
      if (B == 1) {
        sp = sg;
      } else {
        for (int64_t j = 0; j < ng; ++j)
          for (int64_t b = 0; b < B; ++b) sx[j * B + b] = sg[j];
      }
      for (int64_t a = 0; a < A; ++a)
        for (int64_t k = 0; k < row; ++k) {
          T z = rez(a, k);
          T y = sgl ? soft_threshold(z, t1) : z;
          fin(a, k, y * sp[k]);
        }
      return;
    }
    const int64_t CH = B >= 1024 ? B : B * (1024 / B);  // whole groups per chunk
    double* __restrict gs = dscr;
    T* __restrict zb = reinterpret_cast<T*>(dscr + ng);
    T* __restrict sb = zb + CH;
    T* __restrict sg = sb + CH;  // the groups' scales
    for (int64_t j = 0; j < ng; ++j) gs[j] = 0.0;
    for (int64_t a = 0; a < A; ++a)
      for (int64_t c0 = 0; c0 < row; c0 += CH) {
        const int64_t cnt = row - c0 < CH ? row - c0 : CH;
        if (pfw != nullptr) pf_row(pfw + a * t.w_rs + c0, cnt);
#pragma GCC ivdep
        for (int64_t k = 0; k < cnt; ++k) {
          T z = upd(a, c0 + k);
          zb[k] = sgl ? soft_threshold(z, t1) : z;  // y, squared in double below
        }
        double* __restrict g = gs + c0 / B;
        if (B == 1) {
          for (int64_t k = 0; k < cnt; ++k) g[k] += double(zb[k]) * double(zb[k]);
        } else {
          for (int64_t jj = 0; jj < cnt / B; ++jj)
            g[jj] += lane_sum<double>(B, [&](int64_t b) { return double(zb[jj * B + b]) * double(zb[jj * B + b]); });
        }
      }
    for (int64_t j = 0; j < ng; ++j) sg[j] = group_prox_scale_k<KIND>(reg, tau, T(std::sqrt(gs[j])));
    for (int64_t a = 0; a < A; ++a)
      for (int64_t c0 = 0; c0 < row; c0 += CH) {
        const int64_t cnt = row - c0 < CH ? row - c0 : CH;
        const T* __restrict sc;
        if (B == 1) {
          sc = sg + c0;
        } else {
          for (int64_t jj = 0; jj < cnt / B; ++jj)
            for (int64_t b = 0; b < B; ++b) sb[jj * B + b] = sg[c0 / B + jj];
          sc = sb;
        }
        for (int64_t k = 0; k < cnt; ++k) {
          T z = rez(a, c0 + k);
          T y = sgl ? soft_threshold(z, t1) : z;
          fin(a, c0 + k, y * sc[k]);
        }
      }
  }
}

template <typename T, typename Upd, typename Rez, typename Fin>
inline void prox_tile(const TileArgs& t, const Reg<T>& reg, T tau, T* scr, Upd upd, Rez rez, Fin fin,
                      const T* pfw = nullptr) {
  switch (reg.kind) {
    case REG_GROUP_LASSO:
      return prox_tile_k<REG_GROUP_LASSO>(t, reg, tau, scr, upd, rez, fin, pfw);
    case REG_SPARSE_GROUP_LASSO:
      return prox_tile_k<REG_SPARSE_GROUP_LASSO>(t, reg, tau, scr, upd, rez, fin, pfw);
    case REG_GROUP_MCP:
      return prox_tile_k<REG_GROUP_MCP>(t, reg, tau, scr, upd, rez, fin, pfw);
    default:
      return prox_tile_k<REG_NONE>(t, reg, tau, scr, upd, rez, fin, pfw);
  }
}

#include "solve_rows.h"

// Threshold T = a·λ·w_g of the exact group-LASSO solve.
template <typename T>
inline T exact_thr(const TileArgs& t, T a) {
  return T(double(a) * t.lam * t.wg);
}

// Subproblem of every group of a tile (row layout): lin, P, w0, x0 views; result into x (rows of
// ng·B); scr: the larger of row_newton_scratch and row_pg_scratch (tile.h).
template <typename T>
inline void solve_tile(const TileArgs& t, const Reg<T>& reg, T a, RowView<T> lin, RowView<T> P, RowView<T> w0,
                       RowView<T> x0, T* x, T* scr) {
  if (t.exact && reg.kind == REG_SPARSE_GROUP_LASSO)
    row_exact_sgl<T>(t.A, t.ng, t.B, reg, a, lin, P, w0, x, scr);
  else if (t.exact && reg.kind == REG_GROUP_MCP)
    row_exact_gmcp<T>(t.A, t.ng, t.B, reg, a, lin, P, w0, x, scr);
  else if (t.exact)
    row_newton<T>(t.A, t.ng, t.B, exact_thr<T>(t, a), lin, P, w0, x, scr);
  else
    row_pg<T>(t.A, t.ng, t.B, reg, a, lin, P, w0, x0, x, scr, t.max_iters, T(t.rtol));
}

// ---------------------------------------------------------------------------------------------
// RMDA (docs/math.md §3). sc: [s, sqrt(t), c, tau = α/sqrt(t)]. s0 = anchor W0, s1 = grad_sum V.
// ---------------------------------------------------------------------------------------------
template <typename T>
void rmda_tile(const TileArgs& t) {
  T* __restrict W = static_cast<T*>(t.w);
  const T* __restrict Gr = static_cast<const T*>(t.g);
  const T* __restrict W0 = static_cast<const T*>(t.s0);
  T* __restrict V = static_cast<T*>(t.s1);
  const int64_t wrs = t.w_rs, grs = t.g_rs, srs = t.s_rs;
  // 1/sqrt(t) rounded once: z = W0 − V·(1/sqrt t) (the reference divides; ≤ 1 ulp apart)
  const T s = T(t.sc[0]), isqt = T(1.0 / t.sc[1]), c = T(t.sc[2]), one_c = T(1.0 - t.sc[2]), tau = T(t.sc[3]);
  prox_tile<T>(
      t, make_reg<T>(t), tau, static_cast<T*>(t.scratch),
      [=](int64_t a, int64_t k) {
        T v = V[a * srs + k] + s * Gr[a * grs + k];
        V[a * srs + k] = v;
        return W0[a * srs + k] - v * isqt;
      },
      [=](int64_t a, int64_t k) { return W0[a * srs + k] - V[a * srs + k] * isqt; },
      [=](int64_t a, int64_t k, T x) { W[a * wrs + k] = W[a * wrs + k] * one_c + c * x; }, W);
}

// ---------------------------------------------------------------------------------------------
// ProxSGD (docs/math.md §5). sc: [lr, c]. s0 = momentum buffer b.
// ---------------------------------------------------------------------------------------------
template <typename T>
void proxsgd_tile(const TileArgs& t) {
  T* __restrict W = static_cast<T*>(t.w);
  const T* __restrict Gr = static_cast<const T*>(t.g);
  T* __restrict Bf = static_cast<T*>(t.s0);
  const int64_t wrs = t.w_rs, grs = t.g_rs, srs = t.s_rs;
  const T lr = T(t.sc[0]), c = T(t.sc[1]), one_c = T(1.0 - t.sc[1]);
  prox_tile<T>(
      t, make_reg<T>(t), lr, static_cast<T*>(t.scratch),
      [=](int64_t a, int64_t k) {
        T b = Bf[a * srs + k] * one_c + c * Gr[a * grs + k];
        Bf[a * srs + k] = b;
        return W[a * wrs + k] - lr * b;
      },
      [=](int64_t a, int64_t k) { return W[a * wrs + k] - lr * Bf[a * srs + k]; },
      [=](int64_t a, int64_t k, T x) { W[a * wrs + k] = x; });
}

// Start sums of the fused exact solves over NR (1 or 2) rows in one sweep, after the rows' state
// update stored their P (row q at p + q·oz): pzf(q, k, pk) gives the pz = P⊙W0 − lin of element k
// of the sweep's row q (SGL: soft-thresholded at t1 here); the sweep stores it (z + q·oz) and
// accumulates Newton's start sums per position (Σ pz² in double, max P, Σ y² and Σ y²/P with
// y = pz/P in T; solve_rows.h newton_start_row), row 0's terms first: the sums of NR one-row
// sweeps, bitwise, with 1/NR of the accumulators' loads and stores.
template <int NR, bool SGL, typename T, typename Pz>
inline void exact_start_rows(int64_t n, Pz pzf, T t1, const T* __restrict p, T* __restrict z, int64_t oz,
                             double* __restrict acc, T* __restrict pm, T* __restrict sy, T* __restrict sc) {
#pragma GCC ivdep
  for (int64_t k = 0; k < n; ++k) {
    double a = acc[k];
    T m = pm[k], y = sy[k], c = sc[k];
    // unrolled before the vectorizer runs (GCC's size limit on complete unrolling left the two-row
    // body a loop, and the outer loop then scalar)
#pragma GCC unroll 2
    for (int q = 0; q < NR; ++q) {
      const T pk = p[q * oz + k];
      T zz = pzf(q, k, pk);
      if (SGL) zz = soft_threshold(zz, t1);
      z[q * oz + k] = zz;
      a += double(zz) * double(zz);
      m = pk > m ? pk : m;
      newton_start_add(pk, zz, y, c);  // Newton's start sums (math.h)
    }
    acc[k] = a;
    pm[k] = m;
    sy[k] = y;
    sc[k] = c;
  }
}
// The state pass and the start sums in one loop over NR rows (the form the Adam solves run
// faster in): elem(q, k, pk, zz) updates the state of element k of the sweep's row q and gives its
// P and pz; the sweep stores both, the sums as exact_start_rows.
template <int NR, bool SGL, typename T, typename Elem>
inline void exact_state_rows(int64_t n, Elem elem, T t1, T* __restrict p, T* __restrict z, int64_t oz,
                             double* __restrict acc, T* __restrict pm, T* __restrict sy, T* __restrict sc) {
#pragma GCC ivdep
  for (int64_t k = 0; k < n; ++k) {
    double a = acc[k];
    T m = pm[k], y = sy[k], c = sc[k];
#pragma GCC unroll 2
    for (int q = 0; q < NR; ++q) {
      T pk, zz;
      elem(q, k, pk, zz);
      if (SGL) zz = soft_threshold(zz, t1);
      p[q * oz + k] = pk;
      z[q * oz + k] = zz;
      a += double(zz) * double(zz);
      m = pk > m ? pk : m;
      newton_start_add(pk, zz, y, c);
    }
    acc[k] = a;
    pm[k] = m;
    sy[k] = y;
    sc[k] = c;
  }
}
// RAMDA's new iterate from the subproblem's solution x: W ← (1 − c)·W + c·x.
template <typename T>
inline T ramda_mix(T w, T x, T one_c, T c) {
  return ss_fma(w, one_c, c * x);
}
// Final pass of the fused exact solves: x = newton_x (math.h) into w (RAMDA: ramda_mix).
template <typename T, bool AVG>
inline void newton_x_row(int64_t n, T* __restrict w, const T* __restrict p, const T* __restrict z,
                         const T* __restrict r, T thr, T one_c, T c) {
  for (int64_t k = 0; k < n; ++k) {
    const T x = newton_x(p[k], z[k], r[k], thr);
    w[k] = AVG ? ramda_mix(w[k], x, one_c, c) : x;
  }
}

// Fused exact solve of a tile (thr > 0; group LASSO, or sparse group LASSO with SGL: pz
// soft-thresholded at t1 elementwise, then the group-LASSO solve on it, docs/solvers.md). The
// state pass walks the rows two at a time in chunks of CH positions: state(a, k0, n, p) updates
// the state of elements [k0, k0 + n) of row a and stores their P at p, for both rows, then
// exact_start_rows takes pzf(a, k, pk) (the pz of element k of row a, its state updated) and
// accumulates the start sums into ns (the first pass of row_newton); Newton on every group;
// fin(a, p, z, r) writes row a's result (newton_x_row). P: a tile of scratch, then the Newton
// scratch at scr. Bitwise the same as the unfused path (same operations, same order). The state
// update in loops of its own, over a chunk held in L1: the cube root's (RAMDA) and the square
// root's (ProxGen, ProxSSI) long dependency chains then overlap across iterations, which they did
// not in one loop with the start sums (docs/performance.md).
template <bool SGL, typename T, typename State, typename Pz, typename Fin>
inline void exact_fused(const TileArgs& t, T thr, T t1, T* P, T* scr, State state, Pz pzf, Fin fin) {
  constexpr int64_t CH = 512;
  const int64_t A = t.A, row = t.ng * t.B;
  NewtonScratch<T> ns(scr, A, t.ng, t.B);
  zero(ns.acc1, row);
  zero(ns.sy, row);
  zero(ns.sc, row);
  zero(ns.pm, row);
  for (int64_t a0 = 0; a0 < A; a0 += 2) {
    const bool two = a0 + 1 < A;
    for (int64_t c0 = 0; c0 < row; c0 += CH) {
      const int64_t n = row - c0 < CH ? row - c0 : CH;
      const int64_t o = a0 * row + c0;
      state(a0, c0, n, P + o);
      if (two) state(a0 + 1, c0, n, P + o + row);
      const auto rows_pz = [&](int q, int64_t k, T pk) { return pzf(a0 + q, c0 + k, pk); };
      if (two)
        exact_start_rows<2, SGL, T>(n, rows_pz, t1, P + o, ns.pz + o, row, ns.acc1 + c0, ns.pm + c0, ns.sy + c0,
                                    ns.sc + c0);
      else
        exact_start_rows<1, SGL, T>(n, rows_pz, t1, P + o, ns.pz + o, row, ns.acc1 + c0, ns.pm + c0, ns.sy + c0,
                                    ns.sc + c0);
    }
  }
  newton_roots<T>(A, t.ng, t.B, thr, {P, row}, ns.pz, row, ns);
  for (int64_t a = 0; a < A; ++a) fin(a, P + a * row, ns.pz + a * row, ns.rpos);
}
// exact_fused with the state pass and the start sums in one loop (exact_state_rows; elem as there,
// rows two at a time): ProxGen and ProxSSI, whose square root and division took more time split.
template <bool SGL, typename T, typename Elem, typename Fin>
inline void exact_fused_elem(const TileArgs& t, T thr, T t1, T* P, T* scr, Elem elem, Fin fin) {
  const int64_t A = t.A, row = t.ng * t.B;
  NewtonScratch<T> ns(scr, A, t.ng, t.B);
  zero(ns.acc1, row);
  zero(ns.sy, row);
  zero(ns.sc, row);
  zero(ns.pm, row);
  int64_t a0 = 0;
  const auto rows_elem = [&](int q, int64_t k, T& pk, T& zz) { elem(a0 + q, k, pk, zz); };
  for (; a0 + 1 < A; a0 += 2)
    exact_state_rows<2, SGL, T>(row, rows_elem, t1, P + a0 * row, ns.pz + a0 * row, row, ns.acc1, ns.pm, ns.sy,
                                ns.sc);
  if (a0 < A)
    exact_state_rows<1, SGL, T>(row, rows_elem, t1, P + a0 * row, ns.pz + a0 * row, row, ns.acc1, ns.pm, ns.sy,
                                ns.sc);
  newton_roots<T>(A, t.ng, t.B, thr, {P, row}, ns.pz, row, ns);
  for (int64_t a = 0; a < A; ++a) fin(a, P + a * row, ns.pz + a * row, ns.rpos);
}
// Whether a tile takes exact_fused (group LASSO or sparse group LASSO, exact, threshold > 0), and
// its thresholds: thr (the group part) and t1 (SGL's elementwise part) for the step a.
template <typename T>
inline bool exact_fused_thr(const TileArgs& t, const Reg<T>& reg, T a, T& thr, T& t1) {
  if (!t.exact) return false;
  if (reg.kind == REG_GROUP_LASSO) {
    thr = exact_thr<T>(t, a);
    t1 = T(0);
  } else if (reg.kind == REG_SPARSE_GROUP_LASSO) {
    thr = a * (reg.lam2 * reg.wg);  // as row_exact_sgl
    t1 = a * reg.lam;
  } else {
    return false;
  }
  return thr > T(0);
}

// ---------------------------------------------------------------------------------------------
// RAMDA (docs/math.md §4). sc: [s, c, eps, α]. s0 = W0, s1 = V, s2 = U.
// ---------------------------------------------------------------------------------------------
// The state update of one element, every path: V ← V + s·g, U ← U + s·g² (one fma each); returns
// P = cbrt(U) + ε. The multiply-adds here, in adam_elem, pz and math.h's Newton terms are explicit
// fmas: fewer instructions, and every ISA variant rounds alike (the build has -ffp-contract=off).
template <typename T>
inline T ramda_state(T g, T s, T eps, T& v, T& u) {
  v = ss_fma(s, g, v);
  u = ss_fma(s * g, g, u);
  return cbrt_nonneg(u) + eps;
}
// ramda_state over n elements, P into p: the state first, then the roots in a loop of their own,
// without cbrt_nonneg's scaling selects when no u of the chunk needs them (bitwise the same).
template <typename T>
inline void ramda_state_chunk(int64_t n, const T* __restrict g, T* __restrict v, T* __restrict u, T* __restrict p,
                              T s, T eps) {
  int scales = 0;
  for (int64_t k = 0; k < n; ++k) {
    const T gk = g[k];
    v[k] = ss_fma(s, gk, v[k]);
    const T uu = ss_fma(s * gk, gk, u[k]);
    u[k] = uu;
    scales |= int(cbrt_scales(uu));
  }
  if constexpr (sizeof(T) == sizeof(double)) {  // the library's cube root (scalar)
    for (int64_t i = 0; i < n; ++i) p[i] = cbrt_nonneg(u[i]) + eps;
  } else if (scales) {
    for (int64_t k = 0; k < n; ++k) p[k] = cbrt_nonneg(u[k]) + eps;
  } else {
    for (int64_t k = 0; k < n; ++k) p[k] = cbrt_nonneg_unscaled(u[k]) + eps;
  }
}
template <typename T>
void ramda_tile(const TileArgs& t) {
  T* __restrict W = static_cast<T*>(t.w);
  const T* __restrict Gr = static_cast<const T*>(t.g);
  const T* __restrict W0 = static_cast<const T*>(t.s0);
  T* __restrict V = static_cast<T*>(t.s1);
  T* __restrict U = static_cast<T*>(t.s2);
  const int64_t A = t.A, row = t.ng * t.B, wrs = t.w_rs, grs = t.g_rs, srs = t.s_rs;
  const T s = T(t.sc[0]), c = T(t.sc[1]), one_c = T(1.0 - t.sc[1]), eps = T(t.sc[2]);
  const Reg<T> reg = make_reg<T>(t);
  if (reg.kind == REG_NONE) {
    for (int64_t a = 0; a < A; ++a) {
      T* __restrict w = W + a * wrs;
      const T* __restrict g = Gr + a * grs;
      const T* __restrict w0 = W0 + a * srs;
      T* __restrict v = V + a * srs;
      T* __restrict u = U + a * srs;
      for (int64_t k = 0; k < row; ++k) {
        T vv = v[k], uu = u[k];
        const T p = ramda_state(g[k], s, eps, vv, uu);
        v[k] = vv;
        u[k] = uu;
        w[k] = ramda_mix(w[k], w0[k] - vv / p, one_c, c);
      }
    }
    return;
  }
  const int64_t tot = A * row;
  T* P = static_cast<T*>(t.scratch);  // row layout (stride row)
  T* X = P + tot;
  const int64_t pd = pf_dist<T>(row);
  T thr, t1;
  if (exact_fused_thr<T>(t, reg, T(t.sc[3]), thr, t1)) {  // pz = P⊙W0 − V
    const auto state = [&](int64_t a, int64_t k0, int64_t n, T* p) {
      ramda_state_chunk<T>(n, Gr + a * grs + k0, V + a * srs + k0, U + a * srs + k0, p, s, eps);
    };
    const auto pzf = [&](int64_t a, int64_t k, T pk) { return subproblem_pz(pk, W0[a * srs + k], V[a * srs + k]); };
    const auto fin = [&](int64_t a, const T* p, const T* z, const T* r) {
      newton_x_row<T, true>(row, W + a * wrs, p, z, r, thr, one_c, c);
    };
    if (reg.kind == REG_SPARSE_GROUP_LASSO)
      exact_fused<true, T>(t, thr, t1, P, X, state, pzf, fin);
    else
      exact_fused<false, T>(t, thr, t1, P, X, state, pzf, fin);
    return;
  }
  for (int64_t a = 0; a < A; ++a) {
    const T* __restrict g = Gr + a * grs;
    T* __restrict v = V + a * srs;
    T* __restrict u = U + a * srs;
    T* __restrict p = P + a * row;
    if (!t.wide && A > 1 && a + pd < A) {
      const int64_t an = a + pd;
      pf_row(Gr + an * grs, row);
      pf_row(V + an * srs, row);
      pf_row(U + an * srs, row);
      pf_row(W0 + an * srs, row);
      pf_row(W + an * wrs, row);
    }
    ramda_state_chunk<T>(row, g, v, u, p, s, eps);
  }
  solve_tile<T>(t, reg, T(t.sc[3]), {V, srs}, {P, row}, {W0, srs}, {W, wrs}, X, X + tot);
  for (int64_t a = 0; a < A; ++a) {
    T* __restrict w = W + a * wrs;
    const T* __restrict x = X + a * row;
    for (int64_t k = 0; k < row; ++k) w[k] = ramda_mix(w[k], x[k], one_c, c);
  }
}

// ---------------------------------------------------------------------------------------------
// ProxGen and ProxSSI (docs/math.md §5). sc: [lr, β1, β2, ε, wd, bc1, bc2]. s0 = m, s1 = v.
// ---------------------------------------------------------------------------------------------
template <typename T>
struct AdamConsts {
  T b1, b2, omb1, omb2, eps;
  T decay, sq_bc2, lin_scale;  // ProxGen: W·(1 − lr·wd), sqrt(bc2), lr/bc1
  T ssi_step, ssi_decay;       // ProxSSI: −lr·sqrt(bc2)/bc1 (the HF Adam step), −lr·wd
};
// The update of one element, every path: the moments m, v (one fma each), then P (ProxGen
// D = sqrt(v)/sqrt(bc2) + ε, ProxSSI denom = sqrt(v) + ε), the prox's centre w (ProxGen W·(1 − lr·wd),
// ProxSSI the AdamW-updated W) and its linear term li (ProxGen (lr/bc1)·m, ProxSSI 0).
template <bool SSI, typename T>
inline void adam_elem(const AdamConsts<T>& q, T g, T& m, T& v, T& w, T& p, T& li) {
  m = ss_fma(m, q.b1, q.omb1 * g);
  v = ss_fma(v, q.b2, q.omb2 * g * g);
  if (SSI) {
    p = std::sqrt(v) + q.eps;
    w = ss_fma(q.ssi_step, m / p, w);
    w = ss_fma(q.ssi_decay, w, w);
    li = T(0);
  } else {
    w = w * q.decay;
    p = std::sqrt(v) / q.sq_bc2 + q.eps;
    li = m * q.lin_scale;
  }
}
template <typename T, bool SSI>
void adam_prox_tile(const TileArgs& t) {
  T* __restrict W = static_cast<T*>(t.w);
  const T* __restrict Gr = static_cast<const T*>(t.g);
  T* __restrict M = static_cast<T*>(t.s0);
  T* __restrict Vs = static_cast<T*>(t.s1);
  const int64_t A = t.A, row = t.ng * t.B, wrs = t.w_rs, grs = t.g_rs, srs = t.s_rs;
  const double lr_d = t.sc[0], b1_d = t.sc[1], b2_d = t.sc[2], bc1_d = t.sc[5], bc2_d = t.sc[6];
  const AdamConsts<T> q{T(b1_d),
                        T(b2_d),
                        T(1.0 - b1_d),
                        T(1.0 - b2_d),
                        T(t.sc[3]),
                        T(1.0 - lr_d * t.sc[4]),
                        T(std::sqrt(bc2_d)),
                        T(lr_d / bc1_d),
                        T(-lr_d * std::sqrt(bc2_d) / bc1_d),
                        T(-lr_d * t.sc[4])};
  const Reg<T> reg = make_reg<T>(t);
  const bool solve = reg.kind != REG_NONE;
  const int64_t tot = A * row;
  T* P = static_cast<T*>(t.scratch);  // D (ProxGen) or denom (ProxSSI), row layout
  T* L = P + tot;                     // linear term, row layout
  T* X = L + tot;
  T* Y = X + tot;  // solver scratch
  const int64_t pd = pf_dist<T>(row);
  T thr, t1;
  if (solve && exact_fused_thr<T>(t, reg, T(lr_d), thr, t1)) {  // pz = D⊙W − lin (ProxSSI: denom⊙W)
    const auto elem = [&](int64_t a, int64_t k, T& pk, T& zz) {
      const int64_t o = a * srs + k;
      T mm = M[o], vv = Vs[o], ww = W[a * wrs + k], li;
      adam_elem<SSI>(q, Gr[a * grs + k], mm, vv, ww, pk, li);
      M[o] = mm;
      Vs[o] = vv;
      zz = subproblem_pz(pk, ww, li);
    };
    const auto fin = [&](int64_t a, const T* p, const T* z, const T* r) {
      newton_x_row<T, false>(row, W + a * wrs, p, z, r, thr, T(0), T(0));
    };
    if (reg.kind == REG_SPARSE_GROUP_LASSO)
      exact_fused_elem<true, T>(t, thr, t1, P, L, elem, fin);
    else
      exact_fused_elem<false, T>(t, thr, t1, P, L, elem, fin);
    return;
  }
  for (int64_t a = 0; a < A; ++a) {
    T* __restrict w = W + a * wrs;
    const T* __restrict g = Gr + a * grs;
    T* __restrict m = M + a * srs;
    T* __restrict v = Vs + a * srs;
    T* __restrict p = P + a * row;
    T* __restrict l = L + a * row;
    if (!t.wide && A > 1 && a + pd < A) {
      const int64_t an = a + pd;
      pf_row(Gr + an * grs, row);
      pf_row(M + an * srs, row);
      pf_row(Vs + an * srs, row);
      pf_row(W + an * wrs, row);
    }
    for (int64_t k = 0; k < row; ++k) {
      T mm = m[k], vv = v[k], ww = w[k], d, li;
      adam_elem<SSI>(q, g[k], mm, vv, ww, d, li);
      m[k] = mm;
      v[k] = vv;
      if (solve) {
        w[k] = ww;
        p[k] = d;
        l[k] = li;
      } else {
        w[k] = SSI ? ww : ww - li / d;
      }
    }
  }
  if (!solve) return;
  solve_tile<T>(t, reg, T(lr_d), {L, row}, {P, row}, {W, wrs}, {W, wrs}, X, Y);
  for (int64_t a = 0; a < A; ++a) {
    T* __restrict w = W + a * wrs;
    const T* __restrict x = X + a * row;
    for (int64_t k = 0; k < row; ++k) w[k] = x[k];
  }
}

template <typename T>
void proxgen_tile(const TileArgs& t) {
  adam_prox_tile<T, false>(t);
}
template <typename T>
void proxssi_tile(const TileArgs& t) {
  adam_prox_tile<T, true>(t);
}

// ---------------------------------------------------------------------------------------------
// DessiLBI (docs/math.md §6, reference.dessilbi_step without magnitude scaling).
// sc: [lr·κ, lr·κ·wd, lr·κ/ν, lr/ν, κ, μ]. s0 = momentum buffer d, s1 = Z, s2 = Γ (null when the
// tensor is unpaired: heavy-ball SGD scaled by κ). prox of Ω_λ with weight 1, then Γ = κ·prox(Z).
// ---------------------------------------------------------------------------------------------
template <typename T>
void dessilbi_tile(const TileArgs& t) {
  T* __restrict W = static_cast<T*>(t.w);
  const T* __restrict Gr = static_cast<const T*>(t.g);
  T* __restrict D = static_cast<T*>(t.s0);
  T* __restrict Zs = static_cast<T*>(t.s1);
  T* __restrict Ga = static_cast<T*>(t.s2);
  const int64_t wrs = t.w_rs, grs = t.g_rs, srs = t.s_rs;
  const T nlk = T(-t.sc[0]), nlkwd = T(-t.sc[1]), nlkn = T(-t.sc[2]), ln = T(t.sc[3]), kap = T(t.sc[4]);
  const T mu = T(t.sc[5]);
  const bool wd = t.sc[1] != 0.0;
  if (Zs == nullptr) {  // unpaired
    for (int64_t a = 0; a < t.A; ++a) {
      T* __restrict w = W + a * wrs;
      const T* __restrict g = Gr + a * grs;
      T* __restrict d = D + a * srs;
      const int64_t row = t.ng * t.B;
      for (int64_t k = 0; k < row; ++k) {
        T dd = d[k] * mu + g[k];
        d[k] = dd;
        T wo = w[k];
        T ww = wo + nlk * dd;
        if (wd) ww = ww + nlkwd * wo;
        w[k] = ww;
      }
    }
    return;
  }
  prox_tile<T>(
      t, make_reg<T>(t), T(1), static_cast<T*>(t.scratch),
      [=](int64_t a, int64_t k) {
        T dd = D[a * srs + k] * mu + Gr[a * grs + k];
        D[a * srs + k] = dd;
        T wo = W[a * wrs + k];
        T ww = wo + nlk * dd;
        if (wd) ww = ww + nlkwd * wo;
        T r = wo - Ga[a * srs + k];
        W[a * wrs + k] = ww + nlkn * r;
        T z = Zs[a * srs + k] + ln * r;
        Zs[a * srs + k] = z;
        return z;
      },
      [=](int64_t a, int64_t k) { return Zs[a * srs + k]; },
      [=](int64_t a, int64_t k, T x) { Ga[a * srs + k] = x * kap; });
}

// All finite: OR over "exponent bits all ones" (NaN or ±Inf), a branch-free vectorized pass over
// the two halves of the chunk at once: two read streams a core read faster than one (four gain
// nothing more; docs/performance.md).
template <typename U>
inline bool finite_bits(const U* x, int64_t n, U mask) {
  const int64_t h = n / 2;
  const U* y = x + h;
  U bad = 0, bad2 = 0;
  for (int64_t i = 0; i < h; ++i) {
    bad |= U((x[i] & mask) == mask);
    bad2 |= U((y[i] & mask) == mask);
  }
  if (n & 1) bad |= U((x[n - 1] & mask) == mask);
  return (bad | bad2) == 0;
}
bool finite32(const uint32_t* x, int64_t n) {
  return finite_bits<uint32_t>(x, n, 0x7F800000u);
}
bool finite64(const uint64_t* x, int64_t n) {
  return finite_bits<uint64_t>(x, n, 0x7FF0000000000000ull);
}
bool finite16(const uint16_t* x, int64_t n, uint16_t mask) {
  return finite_bits<uint16_t>(x, n, mask);
}

}  // namespace
}  // namespace SS_ISA

KernelTable SS_TABLE_FN() {
  KernelTable k;
  k.isa = SS_ISA_NAME;
  k.rmda[0] = &SS_ISA::rmda_tile<float>;
  k.rmda[1] = &SS_ISA::rmda_tile<double>;
  k.ramda[0] = &SS_ISA::ramda_tile<float>;
  k.ramda[1] = &SS_ISA::ramda_tile<double>;
  k.proxsgd[0] = &SS_ISA::proxsgd_tile<float>;
  k.proxsgd[1] = &SS_ISA::proxsgd_tile<double>;
  k.proxgen[0] = &SS_ISA::proxgen_tile<float>;
  k.proxgen[1] = &SS_ISA::proxgen_tile<double>;
  k.proxssi[0] = &SS_ISA::proxssi_tile<float>;
  k.proxssi[1] = &SS_ISA::proxssi_tile<double>;
  k.dessilbi[0] = &SS_ISA::dessilbi_tile<float>;
  k.dessilbi[1] = &SS_ISA::dessilbi_tile<double>;
  k.finite32 = &SS_ISA::finite32;
  k.finite64 = &SS_ISA::finite64;
  k.finite16 = &SS_ISA::finite16;
  return k;
}

}  // namespace cpu
}  // namespace structsparse
