// Device-agnostic math of structsparse (docs/math.md §2–§5), shared by the CPU and CUDA kernels.
//
// Everything here is plain C++ on scalars and raw pointers: no torch headers, so the CUDA
// kernels can include it with nvcc alone. Functions are `static inline` (internal linkage): the
// CPU build compiles them into several translation units with different instruction-set flags,
// and internal linkage keeps the linker from mixing those copies.
//
// The formulas follow structsparse/backends/reference.py exactly (the oracle); where the order
// of floating-point operations matters it is the reference's order.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define STRUCTSPARSE_HD __host__ __device__
#else
#define STRUCTSPARSE_HD
#endif

#define SS_FN static inline STRUCTSPARSE_HD

namespace structsparse {

// Regularizer kinds (the per-group prox maps of docs/math.md §2).
enum RegKind : int {
  REG_NONE = 0,
  REG_GROUP_LASSO = 1,         // GroupLasso and L1 (L1 = group LASSO with one element per group)
  REG_SPARSE_GROUP_LASSO = 2,  // λ1‖·‖₁ + λ2 Σ w_g ‖·‖₂
  REG_GROUP_MCP = 3,           // GroupMCP and MCP
};

// Newton on φ(r) stops when a step is below NEWTON_ULPS ulps of r, or after NEWTON_MAX_ITERS.
constexpr int NEWTON_MAX_ITERS = 50;
constexpr double NEWTON_ULPS = 4.0;

template <typename T>
struct Eps;
template <>
struct Eps<float> {
  static constexpr float value = 1.1920928955078125e-07f;
};
template <>
struct Eps<double> {
  static constexpr double value = 2.220446049250313e-16;
};
// The largest finite value: `x <= Huge<T>::value` is false for ±inf above it and for NaN.
template <typename T>
struct Huge;
template <>
struct Huge<float> {
  static constexpr float value = 3.40282346638528859812e+38f;
};
template <>
struct Huge<double> {
  static constexpr double value = 1.79769313486231570815e+308;
};

// A regularizer applied to one tensor: kind, weights and the group weight w_g = sqrt(|g|).
template <typename T>
struct Reg {
  int kind;
  T lam;    // λ (group LASSO, MCP) or λ1 (sparse group LASSO)
  T lam2;   // λ2 (sparse group LASSO)
  T omega;  // ω (MCP)
  T wg;     // group weight sqrt(A·B)
};

template <typename T>
SS_FN T ss_max(T a, T b) {
  return a > b ? a : b;
}
template <typename T>
SS_FN T ss_min(T a, T b) {
  return a < b ? a : b;
}
// a·b + c rounded once. The build has no FMA contraction (every ISA variant rounds alike); the hot
// loops of the CPU solvers write their multiply-adds with this instead (one instruction on the
// AVX2/AVX-512 variants, a correctly rounded library call on the baseline one).
template <typename T>
SS_FN T ss_fma(T a, T b, T c) {
  return std::fma(a, b, c);
}

// ---------------------------------------------------------------------------------------------
// Scalar maps
// ---------------------------------------------------------------------------------------------

// Group shrink factor: x_g = z_g · n/(n + thr), n = max(‖z_g‖ − thr, 0); 0 when n + thr = 0.
// A norm beyond the type's range (its sum of squares overflowed) takes the limit 1, not inf/inf.
template <typename T>
SS_FN T shrink_scale(T norm, T thr) {
  T n = ss_max(norm - thr, T(0));
  T den = n + thr;
  return den > T(0) ? (norm <= Huge<T>::value ? n / den : T(1)) : T(0);
}

// Soft threshold sign(x)·max(|x| − t, 0) (sign(0) = 0).
template <typename T>
SS_FN T soft_threshold(T x, T t) {
  T m = ss_max(std::fabs(x) - t, T(0));
  return x > T(0) ? m : (x < T(0) ? -m : T(0));
}

// Prox of tau·MCP_{lam,omega} on a norm rho ≥ 0: the firm threshold while omega > tau, else the
// hard threshold at lam·sqrt(tau·omega) (regularizers._firm_threshold).
template <typename T>
SS_FN T mcp_prox_norm(T rho, T tau, T lam, T omega) {
  if (omega > tau) {
    T safe = T(1) - tau / omega;
    if (rho <= tau * lam) return T(0);
    if (rho <= omega * lam) return (rho - tau * lam) / safe;
    return rho;
  }
  return rho > lam * std::sqrt(tau * omega) ? rho : T(0);
}

// MCP_{lam,omega}(rho) for rho ≥ 0.
template <typename T>
SS_FN T mcp_value(T rho, T lam, T omega) {
  return rho <= omega * lam ? lam * rho - rho * rho / (T(2) * omega) : omega * lam * lam / T(2);
}

// Multiplier of a group under prox_{tau·ψ}, given the norm of its (soft-thresholded for SGL)
// values. MCP: new norm / rho. KIND known at compile time (vectorizable loops).
template <int KIND, typename T>
SS_FN T group_prox_scale_k(const Reg<T>& reg, T tau, T norm) {
  if constexpr (KIND == REG_GROUP_LASSO) {
    return shrink_scale(norm, tau * (reg.lam * reg.wg));
  } else if constexpr (KIND == REG_SPARSE_GROUP_LASSO) {
    return shrink_scale(norm, tau * (reg.lam2 * reg.wg));
  } else if constexpr (KIND == REG_GROUP_MCP) {
    T nn = mcp_prox_norm(norm, tau, reg.lam * reg.wg, reg.omega * reg.wg);
    // an infinite norm (overflowed sum of squares) takes the limit 1, as in shrink_scale
    return norm > T(0) ? (norm <= Huge<T>::value ? nn / norm : T(1)) : T(0);
  } else {
    return T(1);
  }
}

template <typename T>
SS_FN T group_prox_scale(const Reg<T>& reg, T tau, T norm) {
  switch (reg.kind) {
    case REG_GROUP_LASSO:
      return group_prox_scale_k<REG_GROUP_LASSO>(reg, tau, norm);
    case REG_SPARSE_GROUP_LASSO:
      return group_prox_scale_k<REG_SPARSE_GROUP_LASSO>(reg, tau, norm);
    case REG_GROUP_MCP:
      return group_prox_scale_k<REG_GROUP_MCP>(reg, tau, norm);
    default:
      return T(1);
  }
}

// ψ restricted to one group from its norm (and its L1 norm for SGL).
template <typename T>
SS_FN T group_value(const Reg<T>& reg, T norm, T l1) {
  switch (reg.kind) {
    case REG_GROUP_LASSO:
      return reg.lam * reg.wg * norm;
    case REG_SPARSE_GROUP_LASSO:
      return reg.lam * l1 + reg.lam2 * reg.wg * norm;
    case REG_GROUP_MCP:
      return mcp_value(norm, reg.lam * reg.wg, reg.omega * reg.wg);
    default:
      return T(0);
  }
}

// The subproblem's pz = P⊙W0 − lin of one element (docs/math.md §4; one fma), in every solver's screening
// and Newton's sums.
template <typename T>
SS_FN T subproblem_pz(T p, T w0, T lin) {
  return ss_fma(p, w0, -lin);
}

// Exact screening (docs/math.md §4): W̃_g = 0 iff ‖P⊙W0 − V‖_g ≤ T_g.
template <typename T>
SS_FN bool screened(T pz_norm, T thr) {
  return pz_norm <= thr;
}

// Exact weighted solve of one element for MCP (one-element groups): argmin_x ½P(x − z)² + a·MCP(x)
// with pz = P·z, the unweighted prox of (a/P)·MCP at z. P > a/ω (strongly convex): the firm
// threshold; P ≤ a/ω (concave on |x| ≤ ωλ: the minimum is 0 or z): z iff |pz| > λ·sqrt(a·ω·P).
template <typename T>
SS_FN T mcp_weighted(T p, T pz, T a, T lam, T omega) {
  const T c = a / omega;
  const T z = pz / p;
  if (p > c) {
    if (std::fabs(pz) <= a * lam) return T(0);
    if (std::fabs(z) <= omega * lam) return soft_threshold(pz, a * lam) / (p - c);
    return z;
  }
  return std::fabs(pz) > lam * std::sqrt(a * omega * p) ? z : T(0);
}

// Exact group-MCP solve (docs/solvers.md): with T = a·λ_g, c = a/ω_g, P' = P − c, the candidate
// x(s)_i = pz_i·s/(1 + P'_i s), s in [0, 1/c], and K(s) = Σ pz_i²/(1 + P'_i s)² (convex in s).
// One Newton step on s from the group's sums k = K and dk = −K'/2 = Σ q²·P'/(1 + P' s):
// convex groups (min P ≥ c) on the Moré–Sorensen form K^(-1/2) − 1/T, the others on K − T²
// (no overshoot of the first root of a convex K). Sets going = false when the group is done.
template <typename T>
SS_FN T gmcp_next(T s, double k, double dk, double thr, bool convex, T tol, T smax, bool& going) {
  const double delta = convex ? k * (std::sqrt(k) / thr - 1.0) / dk : (k - thr * thr) / (2.0 * dk);
  going = dk > 0.0 && std::fabs(delta) > double(tol) * double(s);
  if (!going) return s;
  T sn = T(double(s) + delta);
  sn = sn < T(0) ? T(0) : (sn > smax ? smax : sn);
  going = sn < smax;
  return sn;
}

// ---------------------------------------------------------------------------------------------
// Newton's rule of the exact group-LASSO solve (solver="exact"; docs/math.md §4), shared by the CPU rows
// (csrc/cpu/solve_rows.h newton_roots), group_newton below and the CUDA teams (team_newton), and
// mirrored in the Triton kernel (triton_kernels/step.py _newton_*).
// With pz = P⊙W0 − lin, T = a·λ·w_g and q_i = pz_i/(P_i r + T), the root r > 0 of φ(r) = S(r) − 1,
// S = Σ q², gives x_i = pz_i·r/(P_i r + T) (screened groups, ‖pz‖ ≤ T, are 0). Newton runs on the
// Moré–Sorensen form ψ(r) = S^(-1/2) − 1, concave and increasing, so from a point left of the root
// it climbs without overshoot: δ = S(√S − 1)/D, D = Σ q²·P/(P r + T) (newton_next).
//
// The start (newton_start with the y sums) is the larger of two lower bounds of the root:
// r₀ = max(0, (‖pz‖ − T)/max P), and R − c̄ with y = pz/P, c_i = T/P_i, R² = Σ y² and
// c̄ = Σ y² c/R²: S(r) = Σ y²/(r + c)² ≥ R²/(r + c̄)² (Jensen: 1/(r + c)² is convex in c), so
// S(R − c̄) ≥ 1. R − c̄ is the root to first order in the spread of c; summed in a narrow type it may
// land a few ulps right of the root, where the step is negative (taken, never below 0).
//
// The stop: a step below NEWTON_ULPS ulps of r, or, after a step δ > 0, an a-priori bound of the
// error left below that (NEWTON_MAX_ITERS max). With H = Σ q²·(T/(P r + T))², ψ' = S^(-3/2)·D and,
// since P/(P r + T) = (1 − T/(P r + T))/r and S ≥ 1 left of the root, |ψ''| ≤ 3H/r² between r and
// the root (H and 1/r² only fall as r grows). The error after the step is then e ≤ K(δ + e)² with
// K = 1.5·H·S^(3/2)/(r²·D), so e ≤ 2Kδ² when Kδ ≤ 1/8. When T is small against P·r (ψ nearly
// linear) one step from R − c̄ lands within the bound: typically every group of a tile stops after
// one pass over its elements.
// A step δ < 0 (r right of the root r*, where S < 1: the start R − c̄ summed in a narrow type may
// land there) lands left of r*, by e = |ψ''(ξ)|·(r − r*)²/(2ψ'(r)) ≤ K_R·δ² with ξ in [r*, r] and
// r − r* ≤ |δ|. There |ψ''| = 3·S^(-1/2)·Var_w((1 − t)/ξ) ≤ 3H·S^(-3/2)/ξ² (w = q²/S, t = T/(Pξ + T)),
// S(ξ) ≥ S(r), and for ξ ≤ r, H(ξ) ≤ H(r)·(r/ξ)⁴: K_R = 1.5·H/(r²·D)·(r/(r + δ))⁶. The group stops
// after the step when |δ| ≤ r/8 and 2·K_R·δ² ≤ tol·(r + δ), the margin of the positive case.
// Without this stop, start sums over a few thousand rows that land a few ulps right of the root
// cost the tile a second pass that ends at the same r + δ.
// ---------------------------------------------------------------------------------------------

// Newton start r₀ = max(0, (‖P⊙Z‖ − T)/max P), φ(r₀) ≥ 0.
template <typename T>
SS_FN T newton_start(T pz_norm, T thr, T pmax) {
  return ss_max((pz_norm - thr) / pmax, T(0));
}
// The larger of r₀ and R − c̄ given sy = Σ y² and sc = Σ y²/P (y = pz/P) in the sum type S. A NaN
// R − c̄ (P with zeros) keeps r₀, and so does an infinite one (sums of huge y overflowed).
template <typename T, typename S>
SS_FN T newton_start(T pz_norm, T thr, T pmax, S sy, S sc) {
  const T r0 = newton_start(pz_norm, thr, pmax);
  const T r1 = T(std::sqrt(sy) - S(thr) * sc / sy);
  return r1 > r0 && r1 <= Huge<T>::value ? r1 : r0;
}
// Adds one element's terms to the start sums: sy += y², sc += y²/P (y = pz/P; the second an fma).
template <typename T>
SS_FN void newton_start_add(T p, T pz, T& sy, T& sc) {
  const T ip = T(1) / p;
  const T y = pz * ip;
  const T ty = y * y;
  sy += ty;
  sc = ss_fma(ty, ip, sc);
}
// One element's terms of Newton's sums at r: q², q²·P/(P r + T), q²·(T/(P r + T))².
template <typename T>
SS_FN void newton_terms(T p, T pz, T r, T thr, T& t1, T& t2, T& t3) {
  const T inv = T(1) / ss_fma(p, r, thr);
  const T q = pz * inv;
  const T q2 = q * q;
  const T ti = thr * inv;  // in (0, 1]
  t1 = q2;
  t2 = q2 * p * inv;
  t3 = q2 * ti * ti;
}
// The solution of one element from its group's root r: x = pz·r/(P·r + T), 0 for a screened group.
template <typename T>
SS_FN T newton_x(T p, T pz, T r, T thr) {
  return r > T(0) ? pz * r / ss_fma(p, r, thr) : T(0);
}
// The Newton step from r given the group's sums s1 = S, s2 = D, s3 = H at r (in the sum type S):
// returns the next r and sets stop when the group is done (then r itself when the step was below
// the tolerance, r + δ when the error bound after it was).
template <typename T, typename S>
SS_FN T newton_next(T r, S s1, S s2, S s3, T tol, bool& stop) {
  const T delta = T(s1 * (std::sqrt(s1) - S(1)) / s2);
  stop = !(std::fabs(delta) > tol * r);
  if (stop) return r;
  const S r0 = S(r), d = S(delta);
  if (delta < T(0)) {  // right of the root: lands left of it, by at most K_R·δ² (the bound above)
    const T rn = ss_max(r + delta, T(0));
    if (-d <= S(0.125) * r0) {
      const S c = r0 / (r0 + d), c2 = c * c;
      const S KR = S(1.5) * s3 / (r0 * r0 * s2) * (c2 * c2 * c2);
      stop = S(2) * KR * d * d <= S(tol) * S(rn);
    }
    return rn;
  }
  const T rn = r + delta;
  // the bound above (r0 = 0 gives K = inf: no stop)
  const S K = S(1.5) * s3 * s1 * std::sqrt(s1) / (r0 * r0 * s2);
  stop = K * d <= S(0.125) && S(2) * K * d * d <= S(tol) * S(rn);
  return rn;
}

// Cube root, P = cbrt(U) + ε. float: bit-trick start of u^(-1/3), three division-free Newton
// steps y ← y·(4/3 − (u/3)·y³) (one fmaf each), c = u·y², then one Newton step
// c ← c − (c³ − u)·y²/3 whose residual c³ − u is computed exactly enough with two fmaf (c² split
// into c·c and its rounding error). The start's i/3 is taken in float (exact to 2^-24 of i, far
// inside the start's own 3 % error): the signed int32 division took GCC a multiply-high sequence
// per vector. Branch-free, no division, no double: vectorizes (with -fno-trapping-math; fmaf is
// an instruction on the AVX2/AVX-512 variants).
// Small u (below 2^-96) is scaled by 2^96 first and c by 2^-32 after (factors that are 1
// otherwise), a subnormal u through its bits (u·2^149 as an integer: float(bits)·2^-53), so that
// no float operation takes or makes a subnormal: on Intel cores every such operation is a
// microcode assist of about a hundred cycles (timings in docs/performance.md).
// Against the correctly rounded cube root (the double cube root rounded): ≤ 1 ulp always; every
// positive subnormal: 1 misrounded; every float in [2^-126, 2^-96): 80 misrounded of 251.7 M;
// every 7th float bit pattern in [2^-96, 2^128): 92 of 268.4 M.
// double: the library cbrt.
// The bit-trick start and the Newton steps of cbrt_nonneg for a positive normal uu (no scaling).
SS_FN float cbrt_core(float uu) {
  int32_t i;
  std::memcpy(&i, &uu, 4);
  i = 0x54a2fa8c - int32_t(float(i) * (1.0f / 3.0f));
  float y;
  std::memcpy(&y, &i, 4);
  const float u3 = uu * (1.0f / 3.0f);
  y = y * fmaf(-u3, y * y * y, 4.0f / 3.0f);
  y = y * fmaf(-u3, y * y * y, 4.0f / 3.0f);
  y = y * fmaf(-u3, y * y * y, 4.0f / 3.0f);
  float c = uu * y * y;
  const float c2 = c * c;
  const float c2_lo = fmaf(c, c, -c2);
  const float res = fmaf(c2, c, -uu) + c2_lo * c;
  return c - res * (y * y) * (1.0f / 3.0f);
}
SS_FN float cbrt_nonneg(float u) {
  int32_t iu;
  std::memcpy(&iu, &u, 4);
  const bool pos = u > 0.0f;
  const bool small = iu < 0x0F800000;  // with pos: u < 2^-96
  const bool sub = iu < 0x00800000;    // with pos: u subnormal
  const float m = sub ? float(iu) : u;
  const float f = sub ? 1.11022302e-16f : (small ? 7.92281625e28f : 1.0f);  // 2^-53, 2^96
  const float scale_out = small ? 2.32830644e-10f : 1.0f;                  // 2^-32
  const float uu = pos ? m * f : 1.0f;
  const float c = cbrt_core(uu);
  return pos ? c * scale_out : 0.0f;
}
// Whether cbrt_nonneg scales u (0 < u < 2^-96). Where it does not, cbrt_nonneg_unscaled(u) is
// cbrt_nonneg(u), bitwise, with about a third fewer instructions (no scaling selects): callers
// that check a block of u first take it for the whole block.
SS_FN bool cbrt_scales(float u) {
  return u > 0.0f && u < 0x1p-96f;
}
SS_FN float cbrt_nonneg_unscaled(float u) {
  const bool pos = u > 0.0f;
  const float c = cbrt_core(pos ? u : 1.0f);
  return pos ? c : 0.0f;
}
SS_FN double cbrt_nonneg(double u) {
  return std::cbrt(u);
}
SS_FN bool cbrt_scales(double) {
  return false;
}
SS_FN double cbrt_nonneg_unscaled(double u) {
  return std::cbrt(u);
}

// ---------------------------------------------------------------------------------------------
// Deterministic sums over arrays: 16 lanes (i mod 16) combined by a fixed tree, so the result
// depends only on the data, never on threads; the fixed-width inner loop vectorizes.
// ---------------------------------------------------------------------------------------------

constexpr int LANES = 16;

template <typename T>
SS_FN T lanes_combine(T* acc) {
  for (int w = LANES / 2; w > 0; w /= 2)
    for (int k = 0; k < w; ++k) acc[k] += acc[k + w];
  return acc[0];
}

// Σ_i f(i) for i in [0, n); f may write (e.g. store y[i]).
template <typename T, typename F>
SS_FN T lane_sum(int64_t n, F f) {
  T acc[LANES];
  for (int k = 0; k < LANES; ++k) acc[k] = T(0);
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int k = 0; k < LANES; ++k) acc[k] += f(i + k);
  for (int k = 0; i + k < n; ++k) acc[k] += f(i + k);
  return lanes_combine(acc);
}

// Three sums at once: f(i, a, b, c) adds its terms to a, b, c.
template <typename T, typename F>
SS_FN void lane_sum3(int64_t n, F f, T& s1, T& s2, T& s3) {
  T a[LANES], b[LANES], c[LANES];
  for (int k = 0; k < LANES; ++k) a[k] = b[k] = c[k] = T(0);
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int k = 0; k < LANES; ++k) f(i + k, a[k], b[k], c[k]);
  for (int k = 0; i + k < n; ++k) f(i + k, a[k], b[k], c[k]);
  s1 = lanes_combine(a);
  s2 = lanes_combine(b);
  s3 = lanes_combine(c);
}

template <typename T>
SS_FN T array_max(const T* x, int64_t n) {
  T m = n > 0 ? x[0] : T(1);
  for (int64_t i = 1; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// ---------------------------------------------------------------------------------------------
// Subproblem of one group (docs/math.md §4):  min_X ⟨L, X − W0⟩ + ½ Σ P (X − W0)² + a·ψ(X)
// Arrays of n contiguous elements. `pz` and `y` are scratch of n elements.
// ---------------------------------------------------------------------------------------------

// Prox of the regularizer (weight tau) of one group: y (input, overwritten for SGL) → x.
template <typename T>
SS_FN void group_prox(const Reg<T>& reg, T tau, T* y, T* x, int64_t n) {
  if (reg.kind == REG_NONE) {
    for (int64_t i = 0; i < n; ++i) x[i] = y[i];
    return;
  }
  T norm2;
  if (reg.kind == REG_SPARSE_GROUP_LASSO) {
    T t1 = tau * reg.lam;
    norm2 = lane_sum<T>(n, [&](int64_t i) {
      T v = soft_threshold(y[i], t1);
      y[i] = v;
      return v * v;
    });
  } else {
    norm2 = lane_sum<T>(n, [&](int64_t i) { return y[i] * y[i]; });
  }
  T scale = group_prox_scale(reg, tau, std::sqrt(norm2));
  for (int64_t i = 0; i < n; ++i) x[i] = y[i] * scale;
}

// A regularizer's parameters in double (the PG objective's ψ term).
template <typename T>
SS_FN Reg<double> reg_double(const Reg<T>& reg) {
  return Reg<double>{reg.kind, double(reg.lam), double(reg.lam2), double(reg.omega), double(reg.wg)};
}

// Subproblem objective Q(X) of one group, in double for every T: the PG stopping rule compares
// consecutive Q to rtol (1e-8 by default, below float's resolution), and Q rounded in float let
// that rounding decide when a group stops (reference.py subproblem_objective).
template <typename T>
SS_FN double group_objective(const Reg<T>& reg, T a, const T* lin, const T* P, const T* w0, const T* x,
                             int64_t n) {
  double smooth, n2, l1;
  lane_sum3<double>(
      n,
      [&](int64_t i, double& s, double& q, double& l) {
        const double xd = double(x[i]), d = xd - double(w0[i]);
        s += double(lin[i]) * d + 0.5 * double(P[i]) * d * d;
        q += xd * xd;
        l += std::fabs(xd);
      },
      smooth, n2, l1);
  return smooth + double(a) * group_value(reg_double(reg), std::sqrt(n2), l1);
}

// Exact solve for group LASSO (solver="exact"): screening, then Newton (the rule above).
// thr = a·λ·w_g. Writes x; uses x as scratch for P⊙Z.
template <typename T>
SS_FN void group_newton(T thr, const T* lin, const T* P, const T* w0, T* x, int64_t n) {
  if (thr == T(0)) {
    for (int64_t i = 0; i < n; ++i) x[i] = w0[i] - lin[i] / P[i];
    return;
  }
  T pz2, sy, sc;
  lane_sum3<T>(
      n,
      [&](int64_t i, T& s1, T& s2, T& s3) {
        const T v = subproblem_pz(P[i], w0[i], lin[i]);
        x[i] = v;
        s1 += v * v;
        newton_start_add(P[i], v, s2, s3);
      },
      pz2, sy, sc);
  T pz_norm = std::sqrt(pz2);
  if (screened(pz_norm, thr)) {
    for (int64_t i = 0; i < n; ++i) x[i] = T(0);
    return;
  }
  T r = newton_start(pz_norm, thr, array_max(P, n), sy, sc);
  const T tol = T(NEWTON_ULPS) * Eps<T>::value;
  for (int it = 0; it < NEWTON_MAX_ITERS; ++it) {
    T s1, s2, s3;
    lane_sum3<T>(
        n,
        [&](int64_t i, T& a1, T& a2, T& a3) {
          T t1, t2, t3;
          newton_terms(P[i], x[i], r, thr, t1, t2, t3);
          a1 += t1;
          a2 += t2;
          a3 += t3;
        },
        s1, s2, s3);
    bool stop;
    r = newton_next(r, s1, s2, s3, tol, stop);
    if (stop) break;
  }
  for (int64_t i = 0; i < n; ++i) x[i] = newton_x(P[i], x[i], r, thr);
}

// Screened proximal gradient of one group (solver="pg", RAMDA Algorithm 2), per-group stopping
// rule: stop when (Q_prev − Q)/(|Q| + 1) < rtol after ≥ 2 iterations or after max_iters; a
// result worse than the warm start x0 is replaced by x0. y is scratch.
template <typename T>
SS_FN void group_pg(const Reg<T>& reg, T a, const T* lin, const T* P, const T* w0, const T* x0, T* x,
                    T* y, int64_t n, int64_t max_iters, T rtol) {
  if (n == 0) return;
  T pmax = array_max(P, n);
  T eta = T(1) / pmax;
  if (reg.kind == REG_GROUP_MCP) eta = eta / T(2);
  if (reg.kind == REG_GROUP_LASSO) {
    T pz2 = lane_sum<T>(n, [&](int64_t i) {
      T v = subproblem_pz(P[i], w0[i], lin[i]);
      return v * v;
    });
    if (screened(std::sqrt(pz2), a * (reg.lam * reg.wg))) {
      for (int64_t i = 0; i < n; ++i) x[i] = T(0);
      return;
    }
  }
  const double q0 = group_objective(reg, a, lin, P, w0, x0, n);
  for (int64_t i = 0; i < n; ++i) x[i] = x0[i];
  double q_prev = q0;
  T tau = eta * a;
  for (int64_t j = 1; j <= max_iters; ++j) {
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] - eta * (lin[i] + P[i] * (x[i] - w0[i]));
    group_prox(reg, tau, y, x, n);
    const double q = group_objective(reg, a, lin, P, w0, x, n);
    const bool done = j >= 2 && (q_prev - q) / (std::fabs(q) + 1.0) < double(rtol);
    q_prev = q;
    if (done) break;
  }
  if (q_prev > q0)
    for (int64_t i = 0; i < n; ++i) x[i] = x0[i];
}

}  // namespace structsparse
