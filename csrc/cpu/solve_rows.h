// Subproblem solvers of docs/math.md §4 over a tile in row layout (included by kernels_impl.h inside the
// per-ISA namespace; no torch here).
//
// A tile holds groups [j0, j0 + ng) of all A rows of the [A, G, B] view. Row a of an array is the
// ng·B contiguous elements (a, j, b); element (a, k) of a view {p, rs} is p[a·rs + k], k = j·B + b.
// The group j of the tile is the A·B elements {(a, j·B + b)}: a strided column of the tile. The
// solvers never gather groups: every pass walks the tile in memory order, accumulating per
// position k (vectorized along the row) and reducing the B positions of each group once per pass,
// with the per-group scalars (r of Newton, η and τ of PG, stop flags) expanded back to positions.
// Each group follows exactly its own sequence of iterations (a converged group is frozen), so the
// result is the per-group solve of math.h; only the order of the sums differs.
#pragma once

template <typename T>
struct RowView {
  const T* p;
  int64_t rs;
};

namespace rows {

// out[j] = Σ_b acc[j·B + b] (lanes combined in a fixed order, in T), stored as O.
template <typename T, typename O>
inline void reduce_pos(const T* acc, int64_t ng, int64_t B, O* out) {
  if (B == 1) {
    for (int64_t j = 0; j < ng; ++j) out[j] = O(acc[j]);
    return;
  }
  for (int64_t j = 0; j < ng; ++j) out[j] = O(lane_sum<T>(B, [&](int64_t b) { return acc[j * B + b]; }));
}

template <typename T>
inline void max_pos(const T* acc, int64_t ng, int64_t B, T* out) {
  if (B < 2 * LANES) {
    for (int64_t j = 0; j < ng; ++j) {
      T m = acc[j * B];
      for (int64_t b = 1; b < B; ++b) m = acc[j * B + b] > m ? acc[j * B + b] : m;
      out[j] = m;
    }
    return;
  }
  for (int64_t j = 0; j < ng; ++j) {  // LANES independent maxima (vectorizes), then combined
    const T* a = acc + j * B;
    T m[LANES];
    for (int k = 0; k < LANES; ++k) m[k] = a[k];
    int64_t b = LANES;
    for (; b + LANES <= B; b += LANES)
      for (int k = 0; k < LANES; ++k) m[k] = a[b + k] > m[k] ? a[b + k] : m[k];
    for (; b < B; ++b) m[0] = a[b] > m[0] ? a[b] : m[0];
    T r = m[0];
    for (int k = 1; k < LANES; ++k) r = m[k] > r ? m[k] : r;
    out[j] = r;
  }
}

template <typename T>
inline void expand(const T* g, int64_t ng, int64_t B, T* pos) {
  if (B == 1) {
    for (int64_t j = 0; j < ng; ++j) pos[j] = g[j];
    return;
  }
  for (int64_t j = 0; j < ng; ++j)
    for (int64_t b = 0; b < B; ++b) pos[j * B + b] = g[j];
}

}  // namespace rows

// Row loops (restrict-qualified parameters: these vectorize along the row).
// PG's pass 0: Σ (P⊙W0 − lin)² and max P per position.
template <typename T>
inline void pz_row(int64_t n, const T* __restrict l, const T* __restrict p, const T* __restrict w, T* __restrict s2,
                   T* __restrict pm) {
  for (int64_t k = 0; k < n; ++k) {
    const T v = subproblem_pz(p[k], w[k], l[k]);
    s2[k] += v * v;
    pm[k] = p[k] > pm[k] ? p[k] : pm[k];
  }
}
// Newton's start sums (the state pass of an exact solve; the fused state passes of kernels_impl.h
// repeat these lines): pz (math.h subproblem_pz), Σ pz² (screening, in double), max P, and math.h's
// newton_start_add in T (Σ y² and Σ y²/P with y = pz/P; in double the loop does not vectorize).
template <typename T>
inline void newton_start_row(int64_t n, const T* __restrict l, const T* __restrict p, const T* __restrict w,
                             T* __restrict z, double* __restrict s, T* __restrict pm, T* __restrict sy,
                             T* __restrict sc) {
  for (int64_t k = 0; k < n; ++k) {
    const T pk = p[k];
    const T zz = subproblem_pz(pk, w[k], l[k]);
    z[k] = zz;
    s[k] += double(zz) * double(zz);
    pm[k] = pk > pm[k] ? pk : pm[k];
    newton_start_add(pk, zz, sy[k], sc[k]);
  }
}
template <typename T>
inline void newton_row(int64_t n, const T* __restrict p, const T* __restrict z, const T* __restrict r, T thr,
                       double* __restrict s1, double* __restrict s2, double* __restrict s3) {
  for (int64_t k = 0; k < n; ++k) {
    T t1, t2, t3;
    newton_terms(p[k], z[k], r[k], thr, t1, t2, t3);
    s1[k] += double(t1);
    s2[k] += double(t2);
    s3[k] += double(t3);
  }
}
// newton_row over two rows (row a at offset 0, row a + 1 at offset op in p and oz in z) in one
// sweep: each position's sums take the two rows' terms added in T, then converted (one rounding
// more than two newton_row calls; half the conversions and double adds). The terms are positive,
// so a float tile's sums carry at most 2^-24 more relative error, whatever the group's size (a
// float accumulation would grow with it), of the order of the terms' own rounding (q and q² are
// rounded in float). A little faster than a double add per row (docs/performance.md).
template <typename T>
inline void newton_row2(int64_t n, int64_t op, int64_t oz, const T* __restrict p, const T* __restrict z,
                        const T* __restrict r, T thr, double* __restrict s1, double* __restrict s2,
                        double* __restrict s3) {
  for (int64_t k = 0; k < n; ++k) {
    T a1, a2, a3, b1, b2, b3;
    newton_terms(p[k], z[k], r[k], thr, a1, a2, a3);
    newton_terms(p[op + k], z[oz + k], r[k], thr, b1, b2, b3);
    s1[k] += double(a1 + b1);
    s2[k] += double(a2 + b2);
    s3[k] += double(a3 + b3);
  }
}
template <typename T>
inline void newton_final_row(int64_t n, const T* __restrict p, const T* __restrict z, const T* __restrict r, T thr,
                             T* __restrict x) {
  for (int64_t k = 0; k < n; ++k) x[k] = newton_x(p[k], z[k], r[k], thr);
}
// One PG iteration at one position (see row_pg_k): x ← on ? y·sc : x; the objective terms of x
// in double (smooth q = (½P·d)·d + lin·d with d = x − W0, x², |x|: the stopping rule compares
// consecutive Q to rtol, below float's resolution; reference.py subproblem_objective); the next
// step y = x − η(lin + P·d) (SGL: soft threshold t1) and y², in T. q and y are fmas (a few percent
// faster than the plain multiply-adds); fmas in the sums of x² and y² gave nothing.
template <typename T>
struct PgElem {
  T x, y, y2;
  double q, x2, ax;
};
template <bool SGL, typename T>
inline PgElem<T> pg_elem(bool on, T y, T sc, T x, T w, T l, T p, T eta, T t1) {
  PgElem<T> e;
  e.x = on ? y * sc : x;
  const T d = e.x - w;
  const double xd = double(e.x), dd = xd - double(w);  // exact for float T
  e.q = ss_fma(0.5 * double(p) * dd, dd, double(l) * dd);
  e.x2 = xd * xd;
  e.ax = std::fabs(xd);
  T v = ss_fma(-eta, ss_fma(p, d, l), e.x);
  if (SGL) v = soft_threshold(v, t1);
  e.y = v;
  e.y2 = v * v;
  return e;
}
// One PG iteration over a row: the terms summed per position into s1 (smooth), s2 (‖x‖²),
// s3 (‖x‖₁), all three in double, and sy (Σ y² of the next step).
template <bool SGL, typename T>
inline void pg_row(int64_t n, const T* __restrict l, const T* __restrict p, const T* __restrict w, T* __restrict x,
                   T* __restrict y, const T* __restrict sc, const T* __restrict on, const T* __restrict eta,
                   const T* __restrict t1, double* __restrict s1, double* __restrict s2, double* __restrict s3,
                   T* __restrict sy) {
  for (int64_t k = 0; k < n; ++k) {
    const PgElem<T> e = pg_elem<SGL>(on[k] != T(0), y[k], sc[k], x[k], w[k], l[k], p[k], eta[k], SGL ? t1[k] : T(0));
    x[k] = e.x;
    y[k] = e.y;
    s1[k] += e.q;
    s2[k] += e.x2;
    s3[k] += e.ax;
    sy[k] += e.y2;
  }
}
// pg_row over two rows (a at offset 0, a + 1 at offset o1) in one sweep: each position's sums take
// row a's term, then row a + 1's, as two pg_row calls would (bitwise the same), with half the
// accumulator traffic (a quarter less time for RAMDA pg; docs/performance.md).
template <bool SGL, typename T>
inline void pg_row2(int64_t n, int64_t o1, const T* __restrict l, const T* __restrict p, const T* __restrict w,
                    T* __restrict x, T* __restrict y, const T* __restrict sc, const T* __restrict on,
                    const T* __restrict eta, const T* __restrict t1, double* __restrict s1,
                    double* __restrict s2, double* __restrict s3, T* __restrict sy) {
  for (int64_t k = 0; k < n; ++k) {
    const bool onk = on[k] != T(0);
    const T tk = SGL ? t1[k] : T(0);
    const PgElem<T> e0 = pg_elem<SGL>(onk, y[k], sc[k], x[k], w[k], l[k], p[k], eta[k], tk);
    const PgElem<T> e1 = pg_elem<SGL>(onk, y[o1 + k], sc[k], x[o1 + k], w[o1 + k], l[o1 + k], p[o1 + k], eta[k], tk);
    x[k] = e0.x;
    y[k] = e0.y;
    x[o1 + k] = e1.x;
    y[o1 + k] = e1.y;
    s1[k] = (s1[k] + e0.q) + e1.q;
    s2[k] = (s2[k] + e0.x2) + e1.x2;
    s3[k] = (s3[k] + e0.ax) + e1.ax;
    sy[k] = (sy[k] + e0.y2) + e1.y2;
  }
}
template <typename T>
inline void zero(T* __restrict p, int64_t n) {
  for (int64_t k = 0; k < n; ++k) p[k] = T(0);
}
template <typename T>
inline void copy_row(const T* __restrict src, T* __restrict dst, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = src[k];
}
// dst = src for n elements with dst < src (the ranges may overlap): blocks of at most the distance
// are disjoint, and each is copied before the next one's source is overwritten.
template <typename T>
inline void move_down(const T* src, T* dst, int64_t n) {
  const int64_t d = src - dst;
  for (int64_t k = 0; k < n; k += d) copy_row(src + k, dst + k, n - k < d ? n - k : d);
}

// Exact group-LASSO solve (solver="exact"): screening, then Newton by the rule of math.h (start,
// step and stop: newton_start, newton_terms, newton_next), on every group of a tile at once: each
// pass over the tile's rows accumulates the per-position sums, reduced per group in double.
// The solution is x_i = r>0 ? pz_i·r/(P_i r + T) : 0 with pz = P⊙W0 − lin.
//
// Scratch of the Newton solve (row_newton_scratch elements, tile.h): per-position double sums
// (64-byte aligned), then pz (A·row), and per-position / per-group arrays.
template <typename T>
struct NewtonScratch {
  double *acc1, *acc2, *acc3, *g1, *g2, *g3;
  T *sy, *sc;  // the start sums (in acc2, acc3, before Newton's passes)
  int64_t* runs;  // [start, end) group ranges of the running groups, up to ng + 1 values
  T *pz, *pm, *rpos, *gm, *r, *act;
  NewtonScratch(T* scr, int64_t A, int64_t ng, int64_t B) {
    const int64_t row = ng * B;
    acc1 = reinterpret_cast<double*>((reinterpret_cast<uintptr_t>(scr) + 63) & ~uintptr_t(63));
    acc2 = acc1 + row;
    acc3 = acc2 + row;
    g1 = acc3 + row;
    g2 = g1 + ng;
    g3 = g2 + ng;
    runs = reinterpret_cast<int64_t*>(g3 + ng);
    sy = reinterpret_cast<T*>(acc2);
    sc = reinterpret_cast<T*>(acc3);
    pz = reinterpret_cast<T*>(runs + ng + 1);  // P⊙W0 − lin, A·row
    pm = pz + A * row;
    rpos = pm + row;
    gm = rpos + row;
    r = gm + ng;
    act = r + ng;  // 1: Newton still running
  }
};

// Screening and Newton of every group of a tile, thr > 0. On entry ns.acc1, acc2, acc3 and pm hold
// the per-position sums of newton_start_row over the rows; pz is read from {pz, pzs} (rows a·pzs).
// On exit ns.rpos holds r of each position's group (0: screened).
template <typename T>
inline void newton_roots(int64_t A, int64_t ng, int64_t B, T thr, RowView<T> P, const T* pz, int64_t pzs,
                         NewtonScratch<T>& ns) {
  const int64_t row = ng * B;
  double* __restrict acc1 = ns.acc1;
  double* __restrict acc2 = ns.acc2;
  double* __restrict acc3 = ns.acc3;
  double* __restrict g1 = ns.g1;
  double* __restrict g2 = ns.g2;
  double* __restrict g3 = ns.g3;
  T* __restrict rpos = ns.rpos;
  T* __restrict gm = ns.gm;
  T* __restrict r = ns.r;
  T* __restrict act = ns.act;
  rows::reduce_pos(acc1, ng, B, g1);
  rows::reduce_pos(ns.sy, ng, B, g2);  // the start sums (in T)
  rows::reduce_pos(ns.sc, ng, B, g3);
  rows::max_pos(ns.pm, ng, B, gm);
  int64_t n_act = 0;
  for (int64_t j = 0; j < ng; ++j) {
    const T pzn = T(std::sqrt(g1[j]));
    if (screened(pzn, thr)) {
      r[j] = T(0);
      act[j] = T(0);
    } else {
      r[j] = newton_start(pzn, thr, gm[j], g2[j], g3[j]);  // math.h: the larger of two lower bounds
      act[j] = T(1);
      ++n_act;
    }
  }
  const T tol = T(NEWTON_ULPS) * Eps<T>::value;
  for (int it = 0; it < NEWTON_MAX_ITERS && n_act > 0; ++it) {
    rows::expand(r, ng, B, rpos);
    zero(acc1, row);
    zero(acc2, row);
    zero(acc3, row);
    // the positions to sum: every position, or only those of the running groups, as runs of
    // consecutive running groups (the sums of the others are not read), whichever touches less:
    // a run costs its positions plus about a cache line (per row and array), so scattered running
    // groups of B = 1 take the whole row. Rows in the same pairs in every pass, so that a group's
    // sums never depend on which other groups share its tile (nor on this choice).
    // Scattered running groups of B = 1 (a second pass over a large weight) are where the whole
    // row wins; the choice changes no result bit.
    int64_t nr = 0;
    if (n_act < ng) {
      int64_t cost = 0;
      for (int64_t j = 0; j < ng;) {
        if (act[j] == T(0)) {
          ++j;
          continue;
        }
        const int64_t j0 = j;
        while (j < ng && act[j] != T(0)) ++j;
        ns.runs[nr++] = j0 * B;
        ns.runs[nr++] = j * B;
        cost += (j - j0) * B + int64_t(64 / sizeof(T));
      }
      if (cost >= row) nr = 0;
    }
    if (nr == 0) {
      ns.runs[nr++] = 0;
      ns.runs[nr++] = row;
    }
    int64_t a = 0;
    for (; a + 1 < A; a += 2)
      for (int64_t q = 0; q < nr; q += 2) {
        const int64_t k0 = ns.runs[q];
        newton_row2<T>(ns.runs[q + 1] - k0, P.rs, pzs, P.p + a * P.rs + k0, pz + a * pzs + k0, rpos + k0, thr,
                       acc1 + k0, acc2 + k0, acc3 + k0);
      }
    for (; a < A; ++a)
      for (int64_t q = 0; q < nr; q += 2) {
        const int64_t k0 = ns.runs[q];
        newton_row<T>(ns.runs[q + 1] - k0, P.p + a * P.rs + k0, pz + a * pzs + k0, rpos + k0, thr, acc1 + k0,
                      acc2 + k0, acc3 + k0);
      }
    rows::reduce_pos(acc1, ng, B, g1);
    rows::reduce_pos(acc2, ng, B, g2);
    rows::reduce_pos(acc3, ng, B, g3);
    n_act = 0;
    for (int64_t j = 0; j < ng; ++j) {
      if (act[j] == T(0)) continue;
      bool stop;
      r[j] = newton_next(r[j], g1[j], g2[j], g3[j], tol, stop);  // math.h
      if (stop)
        act[j] = T(0);
      else
        ++n_act;
    }
  }
  rows::expand(r, ng, B, rpos);
}

// x: result (contiguous rows of length row); scr: row_newton_scratch elements (tile.h).
template <typename T>
inline void row_newton(int64_t A, int64_t ng, int64_t B, T thr, RowView<T> lin, RowView<T> P, RowView<T> w0, T* x,
                       T* scr) {
  const int64_t row = ng * B;
  if (thr == T(0)) {
    for (int64_t a = 0; a < A; ++a) {
      const T* __restrict l = lin.p + a * lin.rs;
      const T* __restrict p = P.p + a * P.rs;
      const T* __restrict w = w0.p + a * w0.rs;
      T* __restrict xr = x + a * row;
      for (int64_t k = 0; k < row; ++k) xr[k] = w[k] - l[k] / p[k];
    }
    return;
  }
  // Sums in double (per-position accumulators over the rows), like the reference's group sums: the
  // step is stopped at NEWTON_ULPS ulps of r, so s² must carry more than float's rounding.
  NewtonScratch<T> ns(scr, A, ng, B);
  zero(ns.acc1, row);
  zero(ns.sy, row);
  zero(ns.sc, row);
  zero(ns.pm, row);
  for (int64_t a = 0; a < A; ++a)
    newton_start_row<T>(row, lin.p + a * lin.rs, P.p + a * P.rs, w0.p + a * w0.rs, ns.pz + a * row, ns.acc1, ns.pm,
                        ns.sy, ns.sc);
  newton_roots<T>(A, ng, B, thr, P, ns.pz, row, ns);
  for (int64_t a = 0; a < A; ++a) newton_final_row<T>(row, P.p + a * P.rs, ns.pz + a * row, ns.rpos, thr, x + a * row);
}

// Screened proximal gradient (solver="pg", RAMDA Algorithm 2) of every group of the tile, with
// the per-group rule of math.h group_pg: step η = 1/max P (MCP: 1/(2 max P)), stop when
// (Q_prev − Q)/(|Q| + 1) < rtol after ≥ 2 iterations or after max_iters; a group whose result is
// worse than its warm start x0 gets x0 back; group LASSO groups that pass the screening test are 0.
// Groups need very different iteration counts, so the iterating groups are packed into contiguous
// rows (lin, P, W0, x of nc groups, row length nc·B) and repacked whenever half of them have
// stopped: the work is at most about twice Σ_g iterations_g · |g|.
// scr: row_pg_scratch elements (tile.h).

template <int KIND, typename T>
inline void row_pg_k(int64_t A, int64_t ng, int64_t B, const Reg<T>& reg, T a_, RowView<T> lin, RowView<T> P,
                     RowView<T> w0, RowView<T> x0, T* x, T* scr, int64_t max_iters, T rtol) {
  const int64_t row = ng * B, tile = A * row;
  constexpr bool sgl = KIND == REG_SPARSE_GROUP_LASSO;
  T* __restrict Lc = scr;  // packed arrays, rows of nc·B
  T* __restrict Pc = Lc + tile;
  T* __restrict Wc = Pc + tile;
  T* __restrict Xc = Wc + tile;
  T* __restrict Yc = Xc + tile;
  T* __restrict acc1 = Yc + tile;  // pass 0's sums per position: ‖P⊙W0 − lin‖², max P
  T* __restrict acc2 = acc1 + row;
  T* __restrict accy = acc2 + row;  // Σ y² per position of the pending gradient step
  T* __restrict etap = accy + row;
  T* __restrict t1p = etap + row;  // SGL soft threshold τ·λ1 per position
  T* __restrict actp = t1p + row;  // 1 while the group iterates
  T* __restrict scp = actp + row;  // prox scale per position
  T* __restrict p1 = scp + row;    // per group: pass 0's ‖P⊙W0 − lin‖² and max P
  T* __restrict p2 = p1 + ng;
  T* __restrict eta = p2 + ng;     // per packed group:
  T* __restrict act = eta + ng;
  T* __restrict gy = act + ng;  // Σ y² of the pending gradient step
  // original group index of each packed group (int64, 8-byte aligned after the group arrays), then
  // runs of groups copied as one block per row (see runs_of): first packed index, length
  int64_t* orig = reinterpret_cast<int64_t*>(
      (reinterpret_cast<uintptr_t>(gy + ng) + alignof(int64_t) - 1) & ~uintptr_t(alignof(int64_t) - 1));
  int64_t* run0 = orig + ng;
  int64_t* runn = run0 + ng;
  // the objective in double: sums per position, then per packed group Q's sums, Q(x0), Q_prev
  double* __restrict dacc1 = reinterpret_cast<double*>(runn + ng);
  double* __restrict dacc2 = dacc1 + row;
  double* __restrict dacc3 = dacc2 + row;
  double* __restrict g1 = dacc3 + row;
  double* __restrict g2 = g1 + ng;
  double* __restrict g3 = g2 + ng;
  double* __restrict q0 = g3 + ng;
  double* __restrict qp = q0 + ng;
  const Reg<double> reg_d = reg_double(reg);
  // Runs of the groups jj < n with keep(jj) (packed groups, or the tile's groups before packing):
  // consecutive indices and, with same_src, consecutive original groups too; a run is one
  // contiguous block of a row on both sides of a copy (B = 1 tiles otherwise copy one element per
  // group and row).
  auto runs_of = [&](int64_t n, bool same_src, auto keep) -> int64_t {
    int64_t nr = 0;
    for (int64_t jj = 0; jj < n; ++jj) {
      if (!keep(jj)) continue;
      if (nr > 0 && run0[nr - 1] + runn[nr - 1] == jj && (!same_src || orig[jj] == orig[jj - 1] + 1))
        ++runn[nr - 1];
      else {
        run0[nr] = jj;
        runn[nr] = 1;
        ++nr;
      }
    }
    return nr;
  };
  // pass 0: max P, ‖P⊙W0 − lin‖² (group LASSO screening), x = x0
  zero(acc1, row);
  zero(acc2, row);
  for (int64_t a = 0; a < A; ++a) {
    pz_row<T>(row, lin.p + a * lin.rs, P.p + a * P.rs, w0.p + a * w0.rs, acc1, acc2);
    copy_row(x0.p + a * x0.rs, x + a * row, row);
  }
  rows::reduce_pos(acc1, ng, B, p1);
  rows::max_pos(acc2, ng, B, p2);
  const T thr_gl = a_ * (reg.lam * reg.wg);
  auto is_screened = [&](int64_t j) { return KIND == REG_GROUP_LASSO && screened(std::sqrt(p1[j]), thr_gl); };
  if (KIND == REG_GROUP_LASSO) {  // screened groups are exactly 0
    const int64_t nr = runs_of(ng, false, is_screened);
    for (int64_t a = 0; a < A; ++a)
      for (int64_t r = 0; r < nr; ++r) zero(x + a * row + run0[r] * B, runn[r] * B);
  }
  int64_t nc = 0;  // packed (iterating) groups
  for (int64_t j = 0; j < ng; ++j) {
    if (is_screened(j)) continue;
    T e = T(1) / p2[j];
    if (KIND == REG_GROUP_MCP) e = e / T(2);
    eta[nc] = e;
    orig[nc] = j;
    ++nc;
  }
  if (nc == 0) return;
  {  // pack the iterating groups
    const int64_t rc = nc * B;
    const int64_t nr = runs_of(nc, true, [](int64_t) { return true; });
    for (int64_t a = 0; a < A; ++a)
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t so = orig[run0[r]] * B, d = a * rc + run0[r] * B, n = runn[r] * B;
        copy_row(lin.p + a * lin.rs + so, Lc + d, n);
        copy_row(P.p + a * P.rs + so, Pc + d, n);
        copy_row(w0.p + a * w0.rs + so, Wc + d, n);
        copy_row(x + a * row + so, Xc + d, n);
      }
  }
  // One fused pass per iteration: x ← y·scale for the iterating groups (the prox of the previous
  // gradient step; frozen groups keep x), the objective terms of x, and the next gradient step
  // y = x − η(lin + P(x − W0)) (SGL: soft-thresholded) with Σ y². The first pass (nothing on)
  // gives Q(x0) and the first step.
  auto pass = [&]() {
    const int64_t rc = nc * B;
    zero(dacc1, rc);
    zero(dacc2, rc);
    zero(dacc3, rc);
    zero(accy, rc);
    int64_t a = 0;
    for (; a + 1 < A; a += 2) {
      const int64_t o = a * rc;
      pg_row2<sgl, T>(rc, rc, Lc + o, Pc + o, Wc + o, Xc + o, Yc + o, scp, actp, etap, t1p, dacc1, dacc2, dacc3, accy);
    }
    if (a < A) {
      const int64_t o = a * rc;
      pg_row<sgl, T>(rc, Lc + o, Pc + o, Wc + o, Xc + o, Yc + o, scp, actp, etap, t1p, dacc1, dacc2, dacc3, accy);
    }
    rows::reduce_pos(dacc1, nc, B, g1);
    rows::reduce_pos(dacc2, nc, B, g2);
    rows::reduce_pos(dacc3, nc, B, g3);
    rows::reduce_pos(accy, nc, B, gy);
  };
  auto write_back = [&](int64_t nr) {  // the packed groups of runs_of(nc, true, ...) -> x
    const int64_t rc = nc * B;
    for (int64_t a = 0; a < A; ++a)
      for (int64_t r = 0; r < nr; ++r)
        copy_row(Xc + a * rc + run0[r] * B, x + a * row + orig[run0[r]] * B, runn[r] * B);
  };
  auto relayout = [&]() {
    rows::expand(eta, nc, B, etap);
    if (sgl)
      for (int64_t k = 0; k < nc * B; ++k) t1p[k] = etap[k] * a_ * reg.lam;
  };
  relayout();
  zero(actp, nc * B);
  pass();
  for (int64_t jj = 0; jj < nc; ++jj) {
    q0[jj] = qp[jj] = g1[jj] + double(a_) * group_value(reg_d, std::sqrt(g2[jj]), g3[jj]);
    act[jj] = T(1);
  }
  int64_t n_act = nc;
  for (int64_t it = 1; it <= max_iters && n_act > 0; ++it) {
    const int64_t rc = nc * B;
    for (int64_t jj = 0; jj < nc; ++jj) gy[jj] = group_prox_scale_k<KIND>(reg, eta[jj] * a_, T(std::sqrt(gy[jj])));
    rows::expand(gy, nc, B, scp);
    rows::expand(act, nc, B, actp);
    pass();
    n_act = 0;
    for (int64_t jj = 0; jj < nc; ++jj) {
      if (act[jj] == T(0)) continue;
      const double q = g1[jj] + double(a_) * group_value(reg_d, std::sqrt(g2[jj]), g3[jj]);
      const bool done = it >= 2 && (qp[jj] - q) / (std::fabs(q) + 1.0) < double(rtol);
      qp[jj] = q;
      if (done)
        act[jj] = T(0);
      else
        ++n_act;
    }
    if (n_act > 0 && 2 * n_act <= nc) {  // repack: finished groups to x, iterating ones to the front
      write_back(runs_of(nc, true, [&](int64_t jj) { return act[jj] == T(0); }));
      const int64_t nn = n_act, rn = nn * B;
      // x0 fallback of finished groups (their q0/qp are dropped with them)
      for (int64_t jj = 0; jj < nc; ++jj)
        if (act[jj] == T(0) && qp[jj] > q0[jj]) {
          const int64_t so = orig[jj] * B;
          for (int64_t a = 0; a < A; ++a)
            for (int64_t b = 0; b < B; ++b) x[a * row + so + b] = x0.p[a * x0.rs + so + b];
        }
      // in-place compaction, rows in order, runs of consecutive iterating groups moved as blocks:
      // destinations never pass their sources (rn ≤ rc, jj' ≤ jj), so a block's move never
      // overwrites a source not yet moved
      const int64_t nr = runs_of(nc, false, [&](int64_t jj) { return act[jj] != T(0); });
      for (int64_t a = 0; a < A; ++a) {
        int64_t dj = 0;
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t s0 = a * rc + run0[r] * B, d0 = a * rn + dj * B;
          const int64_t n = runn[r] * B;
          if (d0 != s0) {
            move_down(Lc + s0, Lc + d0, n);
            move_down(Pc + s0, Pc + d0, n);
            move_down(Wc + s0, Wc + d0, n);
            move_down(Xc + s0, Xc + d0, n);
            move_down(Yc + s0, Yc + d0, n);
          }
          dj += runn[r];
        }
      }
      int64_t dj = 0;
      for (int64_t jj = 0; jj < nc; ++jj) {
        if (act[jj] == T(0)) continue;
        eta[dj] = eta[jj];
        q0[dj] = q0[jj];
        qp[dj] = qp[jj];
        gy[dj] = gy[jj];
        orig[dj] = orig[jj];
        act[dj] = T(1);
        ++dj;
      }
      nc = nn;
      relayout();
    }
  }
  write_back(runs_of(nc, true, [](int64_t) { return true; }));
  for (int64_t jj = 0; jj < nc; ++jj) {
    if (qp[jj] > q0[jj]) {  // worse than the warm start: keep the warm start
      const int64_t so = orig[jj] * B;
      for (int64_t a = 0; a < A; ++a)
        for (int64_t b = 0; b < B; ++b) x[a * row + so + b] = x0.p[a * x0.rs + so + b];
    }
  }
}

template <typename T>
inline void row_pg(int64_t A, int64_t ng, int64_t B, const Reg<T>& reg, T a_, RowView<T> lin, RowView<T> P,
                   RowView<T> w0, RowView<T> x0, T* x, T* scr, int64_t max_iters, T rtol) {
  switch (reg.kind) {
    case REG_GROUP_LASSO:
      return row_pg_k<REG_GROUP_LASSO>(A, ng, B, reg, a_, lin, P, w0, x0, x, scr, max_iters, rtol);
    case REG_SPARSE_GROUP_LASSO:
      return row_pg_k<REG_SPARSE_GROUP_LASSO>(A, ng, B, reg, a_, lin, P, w0, x0, x, scr, max_iters, rtol);
    case REG_GROUP_MCP:
      return row_pg_k<REG_GROUP_MCP>(A, ng, B, reg, a_, lin, P, w0, x0, x, scr, max_iters, rtol);
    default:
      return row_pg_k<REG_NONE>(A, ng, B, reg, a_, lin, P, w0, x0, x, scr, max_iters, rtol);
  }
}

// Exact sparse-group-LASSO solve (solver="exact"): the ℓ₁ part soft-thresholds pz = P⊙W0 − lin
// elementwise at a·λ1, then the group-LASSO screening and Newton (newton_roots) run on that vector
// with T = a·λ2·w_g (docs/solvers.md). scr: row_newton_scratch elements.
template <typename T>
inline void row_exact_sgl(int64_t A, int64_t ng, int64_t B, const Reg<T>& reg, T a_, RowView<T> lin, RowView<T> P,
                          RowView<T> w0, T* x, T* scr) {
  const int64_t row = ng * B;
  const T t1 = a_ * reg.lam, thr = a_ * (reg.lam2 * reg.wg);
  if (thr == T(0)) {
    for (int64_t a = 0; a < A; ++a) {
      const T* __restrict l = lin.p + a * lin.rs;
      const T* __restrict p = P.p + a * P.rs;
      const T* __restrict w = w0.p + a * w0.rs;
      T* __restrict xr = x + a * row;
      for (int64_t k = 0; k < row; ++k) xr[k] = soft_threshold(subproblem_pz(p[k], w[k], l[k]), t1) / p[k];
    }
    return;
  }
  NewtonScratch<T> ns(scr, A, ng, B);
  zero(ns.acc1, row);
  zero(ns.sy, row);
  zero(ns.sc, row);
  zero(ns.pm, row);
  for (int64_t a = 0; a < A; ++a) {
    const T* __restrict l = lin.p + a * lin.rs;
    const T* __restrict p = P.p + a * P.rs;
    const T* __restrict w = w0.p + a * w0.rs;
    T* __restrict z = ns.pz + a * row;
    double* __restrict s = ns.acc1;
    T* __restrict pm = ns.pm;
    T* __restrict sy = ns.sy;
    T* __restrict sc = ns.sc;
    for (int64_t k = 0; k < row; ++k) {
      const T pk = p[k];
      const T zz = soft_threshold(subproblem_pz(pk, w[k], l[k]), t1);
      z[k] = zz;
      s[k] += double(zz) * double(zz);
      pm[k] = pk > pm[k] ? pk : pm[k];
      newton_start_add(pk, zz, sy[k], sc[k]);
    }
  }
  newton_roots<T>(A, ng, B, thr, P, ns.pz, row, ns);
  for (int64_t a = 0; a < A; ++a) newton_final_row<T>(row, P.p + a * P.rs, ns.pz + a * row, ns.rpos, thr, x + a * row);
}

// Pass 0 of row_exact_gmcp over a row: pz into z, Σ pz² and Σ pz·(pz/P) (in double), max and
// min P per position.
template <typename T>
inline void gmcp_start_row(int64_t n, const T* __restrict l, const T* __restrict p, const T* __restrict w,
                           T* __restrict z, double* __restrict s1, double* __restrict s2, T* __restrict pmax,
                           T* __restrict pmin) {
  for (int64_t k = 0; k < n; ++k) {
    const T pk = p[k];
    const T zz = subproblem_pz(pk, w[k], l[k]);
    z[k] = zz;
    const double zd = double(zz);
    s1[k] += zd * zd;
    s2[k] += zd * (zd / double(pk));
    pmax[k] = pk > pmax[k] ? pk : pmax[k];
    pmin[k] = pk < pmin[k] ? pk : pmin[k];
  }
}
// The last step of row_exact_gmcp over a row: x = Z = pz/P where pick is 1, 0 where it is 2.
template <typename T>
inline void gmcp_pick_row(int64_t n, const T* __restrict p, const T* __restrict z, const T* __restrict pick,
                          T* __restrict x) {
  for (int64_t k = 0; k < n; ++k) {
    const T zk = z[k] / p[k];
    x[k] = pick[k] == T(1) ? zk : (pick[k] == T(2) ? T(0) : x[k]);
  }
}

// Exact group-MCP solve (solver="exact"; the rule of reference.py exact_group_mcp, derivation in
// docs/solvers.md): with T = a·λ_g, c = a/ω_g, P' = P − c, the global minimum is one of 0, Z and
// x(s₁)_i = pz_i·s₁/(1 + P'_i s₁), s₁ the first root of K(s) = Σ pz_i²/(1 + P'_i s)² = T² in
// [0, 1/c] (K is convex). Groups with min P ≥ c are convex: 0 when screened, else x(min(s₁, 1/c)).
// The others compare the objectives of 0, x(s) and Z (double) and keep the smallest (a Newton
// that stopped early can then only lose accuracy, never land on a worse stationary point).
// One-element groups (MCP) take the closed form mcp_weighted. scr: row_newton_scratch elements
// (the Newton scratch's arrays: pz, three double position sums, three double group sums, and its
// run bounds reused as a double group array).
template <typename T>
inline void row_exact_gmcp(int64_t A, int64_t ng, int64_t B, const Reg<T>& reg, T a_, RowView<T> lin, RowView<T> P,
                           RowView<T> w0, T* x, T* scr) {
  const int64_t row = ng * B;
  const T lam_g = reg.lam * reg.wg, om_g = reg.omega * reg.wg;
  const T thr = a_ * lam_g;
  if (thr == T(0) || A * B == 1) {
    for (int64_t a = 0; a < A; ++a) {
      const T* __restrict l = lin.p + a * lin.rs;
      const T* __restrict p = P.p + a * P.rs;
      const T* __restrict w = w0.p + a * w0.rs;
      T* __restrict xr = x + a * row;
      if (thr == T(0))
        for (int64_t k = 0; k < row; ++k) xr[k] = w[k] - l[k] / p[k];
      else
        for (int64_t k = 0; k < row; ++k) xr[k] = mcp_weighted(p[k], subproblem_pz(p[k], w[k], l[k]), a_, lam_g, om_g);
    }
    return;
  }
  const T c = a_ / om_g, smax = T(1) / c;
  NewtonScratch<T> ns(scr, A, ng, B);
  double* __restrict acc1 = ns.acc1;
  double* __restrict acc2 = ns.acc2;
  double* __restrict acc3 = ns.acc3;
  double* __restrict g1 = ns.g1;
  double* __restrict g2 = ns.g2;
  double* __restrict g3 = ns.g3;
  double* __restrict f0 = reinterpret_cast<double*>(ns.runs);  // per group: objective of 0
  T* __restrict pmax = ns.pm;  // per position: max P, then (rpos) min P
  T* __restrict pmin = ns.rpos;
  T* __restrict s = ns.r;       // per group: s
  T* __restrict act = ns.act;   // per group: 1 while Newton runs
  T* __restrict cvx = ns.gm;    // per group: 1 when min P ≥ c
  // pass 0: pz, Σ pz², Σ pz·z (2× the objective of 0), max and min P
  zero(acc1, row);
  zero(acc2, row);
  for (int64_t k = 0; k < row; ++k) {
    pmax[k] = P.p[k];
    pmin[k] = P.p[k];
  }
  for (int64_t a = 0; a < A; ++a)
    gmcp_start_row<T>(row, lin.p + a * lin.rs, P.p + a * P.rs, w0.p + a * w0.rs, ns.pz + a * row, acc1, acc2, pmax,
                      pmin);
  rows::reduce_pos(acc1, ng, B, g1);
  rows::reduce_pos(acc2, ng, B, f0);
  int64_t n_act = 0;
  for (int64_t j = 0; j < ng; ++j) {
    T mx = pmax[j * B], mn = pmin[j * B];
    for (int64_t b = 1; b < B; ++b) {
      mx = pmax[j * B + b] > mx ? pmax[j * B + b] : mx;
      mn = pmin[j * B + b] < mn ? pmin[j * B + b] : mn;
    }
    f0[j] *= 0.5;
    cvx[j] = mn >= c ? T(1) : T(0);
    const T pzn = T(std::sqrt(g1[j]));
    const T ppmax = mx - c;
    T s0 = ppmax > T(0) ? (pzn / thr - T(1)) / ppmax : smax;
    s0 = s0 < T(0) ? T(0) : (s0 > smax ? smax : s0);
    s[j] = s0;
    act[j] = (pzn > thr && s0 < smax) ? T(1) : T(0);  // kept (not screened) and not at 1/c
    if (!(pzn > thr)) s[j] = T(-1);                      // screened: x = 0 (marked by s < 0)
    n_act += act[j] != T(0);
  }
  const T tol = T(NEWTON_ULPS) * Eps<T>::value;
  T* __restrict spos = ns.rpos;  // s per position (pmin is no longer needed)
  for (int it = 0; it < NEWTON_MAX_ITERS && n_act > 0; ++it) {
    rows::expand(s, ng, B, spos);
    zero(acc1, row);
    zero(acc2, row);
    for (int64_t a = 0; a < A; ++a) {
      const T* __restrict p = P.p + a * P.rs;
      const T* __restrict z = ns.pz + a * row;
      for (int64_t k = 0; k < row; ++k) {
        const T pp = p[k] - c;
        const T den = T(1) + pp * spos[k];
        const T q2 = z[k] * z[k] / (den * den);
        acc1[k] += double(q2);
        acc2[k] += double(q2 * pp / den);
      }
    }
    rows::reduce_pos(acc1, ng, B, g1);
    rows::reduce_pos(acc2, ng, B, g2);
    n_act = 0;
    for (int64_t j = 0; j < ng; ++j) {
      if (act[j] == T(0)) continue;
      bool going;
      s[j] = gmcp_next(s[j], g1[j], g2[j], double(thr), cvx[j] != T(0), tol, smax, going);
      act[j] = going ? T(1) : T(0);
      n_act += going;
    }
  }
  // x(s) (0 for screened groups); for nonconvex groups the objectives of x(s) and Z
  rows::expand(s, ng, B, spos);
  zero(acc1, row);
  zero(acc2, row);
  zero(acc3, row);
  for (int64_t a = 0; a < A; ++a) {
    const T* __restrict p = P.p + a * P.rs;
    const T* __restrict z = ns.pz + a * row;
    T* __restrict xr = x + a * row;
    for (int64_t k = 0; k < row; ++k) {
      const T sk = spos[k];
      const T xk = sk >= T(0) ? z[k] * sk / (T(1) + (p[k] - c) * sk) : T(0);
      xr[k] = xk;
      const double pd = double(p[k]), zd = double(z[k]) / pd, d = double(xk) - zd;
      acc1[k] += pd * d * d;
      acc2[k] += double(xk) * double(xk);
      acc3[k] += zd * zd;
    }
  }
  rows::reduce_pos(acc1, ng, B, g1);
  rows::reduce_pos(acc2, ng, B, g2);
  rows::reduce_pos(acc3, ng, B, g3);
  const double ad = double(a_), lgd = double(lam_g), ogd = double(om_g);
  for (int64_t j = 0; j < ng; ++j) {
    act[j] = T(0);  // 0: keep x(s); 1: Z; 2: 0
    if (cvx[j] != T(0)) continue;
    const double fx = 0.5 * g1[j] + ad * mcp_value(std::sqrt(g2[j]), lgd, ogd);
    const double fz = ad * mcp_value(std::sqrt(g3[j]), lgd, ogd);
    const bool use_x = fx < f0[j];
    const double best = use_x ? fx : f0[j];
    act[j] = fz < best ? T(1) : (use_x ? T(0) : T(2));
  }
  int64_t n_other = 0;
  for (int64_t j = 0; j < ng; ++j) n_other += act[j] != T(0);
  if (n_other == 0) return;
  // the groups that take Z or 0, row by row (vectorized, in memory order)
  rows::expand(act, ng, B, spos);
  for (int64_t a = 0; a < A; ++a)
    gmcp_pick_row<T>(row, P.p + a * P.rs, ns.pz + a * row, spos, x + a * row);
}
