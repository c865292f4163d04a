// The fused steps on CUDA, shared by the per-algorithm .cu files (each instantiates its
// launchers) and by the host emulation test (tests/cuda_host/emulate.cu), which runs the same
// per-element and per-group code on the CPU with a one-lane "team".
//
// Every function below the Team types is __host__ __device__ and written for a *team* of lanes
// that owns one group: lane l handles the group's elements l, l + size, l + 2·size, ...; team
// reductions (sum, max) return the same value on every lane, so control flow stays uniform. The
// math is that of csrc/include/structsparse/math.h (and of structsparse/backends/reference.py):
// the same prox maps, screening, Newton and PG stopping rules, per group.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "launch.h"
#include "structsparse/math.h"

// Member functions: __host__ __device__ inline (SS_FN is for free functions, it says static).
#define SS_MFN inline STRUCTSPARSE_HD

namespace structsparse {
namespace cuda {

// ---------------------------------------------------------------------------------------------
// Loads and stores of parameters / gradients in their own dtype (math in T)
// ---------------------------------------------------------------------------------------------
template <typename T>
SS_FN T ld(const void* p, int dt, int64_t k) {
  switch (dt) {
    case DT_F32:
      return T(static_cast<const float*>(p)[k]);
    case DT_F64:
      return T(static_cast<const double*>(p)[k]);
    case DT_BF16:
      return T(__bfloat162float(static_cast<const __nv_bfloat16*>(p)[k]));
    default:
      return T(__half2float(static_cast<const __half*>(p)[k]));
  }
}

template <typename T>
SS_FN void st(void* p, int dt, int64_t k, T x) {
  switch (dt) {
    case DT_F32:
      static_cast<float*>(p)[k] = float(x);
      return;
    case DT_F64:
      static_cast<double*>(p)[k] = double(x);
      return;
    case DT_BF16:
      static_cast<__nv_bfloat16*>(p)[k] = __float2bfloat16_rn(float(x));
      return;
    default:
      static_cast<__half*>(p)[k] = __float2half_rn(float(x));
      return;
  }
}

// Flat index of element i of group j (i = a·B + b).
SS_FN int64_t elem_index(const TensorDesc& d, int64_t j, int64_t i) {
  const int64_t a = i / d.B, b = i - a * d.B;
  return (a * d.G + j) * d.B + b;
}

template <typename T>
SS_FN Reg<T> make_reg(const StepParams& p, const TensorDesc& d) {
  return Reg<T>{p.reg_kind, T(p.lam), T(p.lam2), T(p.omega), T(d.wg)};
}

// ---------------------------------------------------------------------------------------------
// Teams
// ---------------------------------------------------------------------------------------------

// One lane (host emulation).
struct HostTeam {
  static constexpr int lane = 0, size = 1;
  template <typename T>
  SS_MFN T sum(T v) {
    return v;
  }
  template <typename T>
  SS_MFN void sum3(T& a, T& b, T& c) {}
  template <typename T>
  SS_MFN T max(T v) {
    return v;
  }
};

#if defined(__CUDACC__)
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  // xor butterfly: every lane adds the same pairs (commutatively), so all lanes agree bitwise
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int o = 16; o > 0; o >>= 1) {
    T w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

// A warp owns a group.
struct WarpTeam {
  int lane;
  static constexpr int size = 32;
  template <typename T>
  __device__ T sum(T v) {
    return warp_sum(v);
  }
  template <typename T>
  __device__ void sum3(T& a, T& b, T& c) {
    a = warp_sum(a);
    b = warp_sum(b);
    c = warp_sum(c);
  }
  template <typename T>
  __device__ T max(T v) {
    return warp_max(v);
  }
};

// The block owns a group: warp butterflies, then the warps' values added in index order.
// `red` is shared scratch of 3·WARPS_PER_BLOCK doubles (sum3 of double sums: the PG objective).
template <typename T>
struct BlockTeam {
  int lane;
  static constexpr int size = BLOCK_THREADS;
  T* red;
  __device__ T sum(T v) {
    v = warp_sum(v);
    if ((lane & 31) == 0) red[lane >> 5] = v;
    __syncthreads();
    T s = red[0];
    for (int k = 1; k < WARPS_PER_BLOCK; ++k) s += red[k];
    __syncthreads();
    return s;
  }
  template <typename U>
  __device__ void sum3(U& a, U& b, U& c) {
    U* r = reinterpret_cast<U*>(red);  // 8-byte aligned (smem_bytes)
    a = warp_sum(a);
    b = warp_sum(b);
    c = warp_sum(c);
    if ((lane & 31) == 0) {
      r[lane >> 5] = a;
      r[WARPS_PER_BLOCK + (lane >> 5)] = b;
      r[2 * WARPS_PER_BLOCK + (lane >> 5)] = c;
    }
    __syncthreads();
    a = r[0];
    b = r[WARPS_PER_BLOCK];
    c = r[2 * WARPS_PER_BLOCK];
    for (int k = 1; k < WARPS_PER_BLOCK; ++k) {
      a += r[k];
      b += r[WARPS_PER_BLOCK + k];
      c += r[2 * WARPS_PER_BLOCK + k];
    }
    __syncthreads();
  }
  __device__ T max(T v) {
    v = warp_max(v);
    if ((lane & 31) == 0) red[lane >> 5] = v;
    __syncthreads();
    T m = red[0];
    for (int k = 1; k < WARPS_PER_BLOCK; ++k) m = red[k] > m ? red[k] : m;
    __syncthreads();
    return m;
  }
};
#endif

// ---------------------------------------------------------------------------------------------
// Algorithms: per-element state update (load), and the write of the result (store).
// Closed-form ops (RMDA, ProxSGD, DessiLBI): load returns z, the prox input, with prox weight tau().
// Solver ops (RAMDA, ProxGen, ProxSSI): load returns the subproblem's (lin, P, w0, x0) of
//   min_X ⟨lin, X − w0⟩ + ½ Σ P (X − w0)² + a()·ψ(X)   (warm start x0);  store(x0, x) writes W.
// ---------------------------------------------------------------------------------------------

template <typename T>
struct RmdaOp {  // sc: [s, sqrt(t), c, α/sqrt(t)]; s0 = W0, s1 = V
  static constexpr bool kSolver = false;
  T s, sqt, c, one_c, tau_;
  SS_MFN explicit RmdaOp(const TensorDesc& d)
      : s(T(d.sc[0])), sqt(T(d.sc[1])), c(T(d.sc[2])), one_c(T(1.0 - d.sc[2])), tau_(T(d.sc[3])) {}
  SS_MFN T tau() const { return tau_; }
  SS_MFN T load(const TensorDesc& d, int64_t k) const {
    T* V = static_cast<T*>(d.s1);
    T v = V[k] + s * ld<T>(d.g, d.g_dtype, k);
    V[k] = v;
    return static_cast<const T*>(d.s0)[k] - v / sqt;
  }
  SS_MFN T reload(const TensorDesc& d, int64_t k) const {
    return static_cast<const T*>(d.s0)[k] - static_cast<const T*>(d.s1)[k] / sqt;
  }
  SS_MFN void store(const TensorDesc& d, int64_t k, T x) const {
    st<T>(d.w, d.w_dtype, k, ld<T>(d.w, d.w_dtype, k) * one_c + c * x);
  }
};

template <typename T>
struct ProxSgdOp {  // sc: [lr, c]; s0 = momentum buffer
  static constexpr bool kSolver = false;
  T lr, c, one_c;
  SS_MFN explicit ProxSgdOp(const TensorDesc& d) : lr(T(d.sc[0])), c(T(d.sc[1])), one_c(T(1.0 - d.sc[1])) {}
  SS_MFN T tau() const { return lr; }
  SS_MFN T load(const TensorDesc& d, int64_t k) const {
    T* Bf = static_cast<T*>(d.s0);
    T b = Bf[k] * one_c + c * ld<T>(d.g, d.g_dtype, k);
    Bf[k] = b;
    return ld<T>(d.w, d.w_dtype, k) - lr * b;
  }
  SS_MFN T reload(const TensorDesc& d, int64_t k) const {
    return ld<T>(d.w, d.w_dtype, k) - lr * static_cast<const T*>(d.s0)[k];
  }
  SS_MFN void store(const TensorDesc& d, int64_t k, T x) const { st<T>(d.w, d.w_dtype, k, x); }
};

// DessiLBI (reference.dessilbi_step without magnitude scaling). sc: [lr·κ, lr·κ·wd, lr·κ/ν, lr/ν, κ, μ];
// s0 = momentum buffer d, s1 = Z, s2 = Γ (both null for an unpaired tensor: heavy-ball SGD scaled
// by κ). load updates d, W (from the old Γ) and Z and returns Z; the prox (weight 1) of Z goes to
// Γ = κ·prox(Z), so W is written in the first pass only and reload reads Z back.
template <typename T>
struct DessiLbiOp {
  static constexpr bool kSolver = false;
  T nlk, nlkwd, nlkn, ln, kap, mu;
  bool wd;
  SS_MFN explicit DessiLbiOp(const TensorDesc& d)
      : nlk(T(-d.sc[0])),
        nlkwd(T(-d.sc[1])),
        nlkn(T(-d.sc[2])),
        ln(T(d.sc[3])),
        kap(T(d.sc[4])),
        mu(T(d.sc[5])),
        wd(d.sc[1] != 0.0) {}
  SS_MFN T tau() const { return T(1); }
  SS_MFN T load(const TensorDesc& d, int64_t k) const {
    T* D = static_cast<T*>(d.s0);
    const T dd = D[k] * mu + ld<T>(d.g, d.g_dtype, k);
    D[k] = dd;
    const T wo = ld<T>(d.w, d.w_dtype, k);
    T w = wo + nlk * dd;
    if (wd) w = w + nlkwd * wo;
    if (d.s1 == nullptr) {  // unpaired: no regularizer, store() has nothing to write
      st<T>(d.w, d.w_dtype, k, w);
      return T(0);
    }
    T* Z = static_cast<T*>(d.s1);
    const T r = wo - static_cast<const T*>(d.s2)[k];
    st<T>(d.w, d.w_dtype, k, w + nlkn * r);
    const T z = Z[k] + ln * r;
    Z[k] = z;
    return z;
  }
  SS_MFN T reload(const TensorDesc& d, int64_t k) const { return static_cast<const T*>(d.s1)[k]; }
  SS_MFN void store(const TensorDesc& d, int64_t k, T x) const {
    if (d.s2 != nullptr) static_cast<T*>(d.s2)[k] = x * kap;
  }
};

template <typename T>
struct RamdaOp {  // sc: [s, c, ε, α]; s0 = W0, s1 = V, s2 = U
  static constexpr bool kSolver = true;
  T s, c, one_c, eps, alpha;
  SS_MFN explicit RamdaOp(const TensorDesc& d)
      : s(T(d.sc[0])), c(T(d.sc[1])), one_c(T(1.0 - d.sc[1])), eps(T(d.sc[2])), alpha(T(d.sc[3])) {}
  SS_MFN T a() const { return alpha; }
  SS_MFN void load(const TensorDesc& d, int64_t k, T& lin, T& P, T& w0, T& x0) const {
    T* V = static_cast<T*>(d.s1);
    T* U = static_cast<T*>(d.s2);
    const T g = ld<T>(d.g, d.g_dtype, k);
    const T v = V[k] + s * g;
    const T u = U[k] + s * (g * g);
    V[k] = v;
    U[k] = u;
    P = cbrt_nonneg(u) + eps;
    lin = v;
    w0 = static_cast<const T*>(d.s0)[k];
    x0 = ld<T>(d.w, d.w_dtype, k);
  }
  SS_MFN void store(const TensorDesc& d, int64_t k, T x0, T x) const {
    st<T>(d.w, d.w_dtype, k, x0 * one_c + c * x);
  }
};

// ProxGen (SSI = false) and ProxSSI (SSI = true). sc: [lr, β1, β2, ε, wd, bc1, bc2]; s0 = m, s1 = v.
template <typename T, bool SSI>
struct AdamProxOp {
  static constexpr bool kSolver = true;
  T lr, b1, b2, omb1, omb2, eps, decay, sq_bc2, lin_scale, ssi_step, ssi_decay;
  SS_MFN explicit AdamProxOp(const TensorDesc& d)
      : lr(T(d.sc[0])),
        b1(T(d.sc[1])),
        b2(T(d.sc[2])),
        omb1(T(1.0 - d.sc[1])),
        omb2(T(1.0 - d.sc[2])),
        eps(T(d.sc[3])),
        decay(T(1.0 - d.sc[0] * d.sc[4])),
        sq_bc2(T(std::sqrt(d.sc[6]))),
        lin_scale(T(d.sc[0] / d.sc[5])),
        ssi_step(T(-d.sc[0] * std::sqrt(d.sc[6]) / d.sc[5])),
        ssi_decay(T(-d.sc[0] * d.sc[4])) {}
  SS_MFN T a() const { return lr; }
  SS_MFN void load(const TensorDesc& d, int64_t k, T& lin, T& P, T& w0, T& x0) const {
    T* M = static_cast<T*>(d.s0);
    T* Vs = static_cast<T*>(d.s1);
    const T g = ld<T>(d.g, d.g_dtype, k);
    const T m = M[k] * b1 + omb1 * g;
    const T v = Vs[k] * b2 + omb2 * (g * g);
    M[k] = m;
    Vs[k] = v;
    if (SSI) {
      const T den = std::sqrt(v) + eps;
      T w = ld<T>(d.w, d.w_dtype, k) + ssi_step * (m / den);
      w = w + ssi_decay * w;
      lin = T(0);
      P = den;
      w0 = x0 = w;
    } else {
      const T w = ld<T>(d.w, d.w_dtype, k) * decay;
      P = std::sqrt(v) / sq_bc2 + eps;
      lin = m * lin_scale;
      w0 = x0 = w;
    }
  }
  SS_MFN void store(const TensorDesc& d, int64_t k, T, T x) const { st<T>(d.w, d.w_dtype, k, x); }
};

// ---------------------------------------------------------------------------------------------
// Closed-form prox of one group by a team. buf: n elements (on chip) or nullptr (PATH_STREAM:
// the second phase recomputes the prox input from the updated state).
// ---------------------------------------------------------------------------------------------
template <typename T, typename Op, typename Team>
SS_FN void closed_group(Team& tm, const StepParams& p, const TensorDesc& d, const Op& op, int64_t j, T* buf) {
  const Reg<T> reg = make_reg<T>(p, d);
  const int64_t n = d.A * d.B;
  const T tau = op.tau();
  const T t1 = tau * reg.lam;
  const bool sgl = reg.kind == REG_SPARSE_GROUP_LASSO;
  T part = T(0);
  for (int64_t i = tm.lane; i < n; i += tm.size) {
    const T z = op.load(d, elem_index(d, j, i));
    const T y = sgl ? soft_threshold(z, t1) : z;
    if (buf) buf[i] = y;
    part += y * y;
  }
  const T scale = group_prox_scale(reg, tau, T(std::sqrt(tm.sum(part))));
  for (int64_t i = tm.lane; i < n; i += tm.size) {
    const int64_t k = elem_index(d, j, i);
    T y;
    if (buf) {
      y = buf[i];
    } else {
      const T z = op.reload(d, k);
      y = sgl ? soft_threshold(z, t1) : z;
    }
    op.store(d, k, y * scale);
  }
}

// ---------------------------------------------------------------------------------------------
// Subproblem solvers of one group by a team (arrays of n elements; lane-private indices, so no
// barriers are needed beyond those inside the reductions)
// ---------------------------------------------------------------------------------------------

// Screening and Newton of the group-LASSO exact solve (math.h's rule) on a given vector pz (in x),
// thr > 0: x ← pz_i·r/(P_i r + thr), 0 when screened. part, sy, sc, pm: the lane's partial sums of
// pz², the start sums (newton_start_add) and its max of P. Shared by group LASSO and SGL.
template <typename T, typename Team>
SS_FN void team_newton_pz(Team& tm, T thr, const T* P, T* x, int64_t n, T part, T sy, T sc, T pm) {
  tm.sum3(part, sy, sc);
  const T pz_norm = std::sqrt(part);
  if (screened(pz_norm, thr)) {
    for (int64_t i = tm.lane; i < n; i += tm.size) x[i] = T(0);
    return;
  }
  const T pmax = tm.max(pm);  // P > 0, so 0 is a neutral start
  T r = newton_start(pz_norm, thr, pmax, sy, sc);
  const T tol = T(NEWTON_ULPS) * Eps<T>::value;
  for (int it = 0; it < NEWTON_MAX_ITERS; ++it) {
    T s1 = T(0), s2 = T(0), s3 = T(0);
    for (int64_t i = tm.lane; i < n; i += tm.size) {
      T t1, t2, t3;
      newton_terms(P[i], x[i], r, thr, t1, t2, t3);
      s1 += t1;
      s2 += t2;
      s3 += t3;
    }
    tm.sum3(s1, s2, s3);
    bool stop;
    r = newton_next(r, s1, s2, s3, tol, stop);
    if (stop) break;
  }
  for (int64_t i = tm.lane; i < n; i += tm.size) x[i] = newton_x(P[i], x[i], r, thr);
}

// Exact solve for group LASSO (math.h group_newton): screening, then Newton by math.h's rule.
template <typename T, typename Team>
SS_FN void team_newton(Team& tm, T thr, const T* lin, const T* P, const T* w0, T* x, int64_t n) {
  if (thr == T(0)) {
    for (int64_t i = tm.lane; i < n; i += tm.size) x[i] = w0[i] - lin[i] / P[i];
    return;
  }
  T part = T(0), sy = T(0), sc = T(0), pm = T(0);
  for (int64_t i = tm.lane; i < n; i += tm.size) {
    const T v = subproblem_pz(P[i], w0[i], lin[i]);
    x[i] = v;
    part += v * v;
    newton_start_add(P[i], v, sy, sc);
    pm = P[i] > pm ? P[i] : pm;
  }
  team_newton_pz(tm, thr, P, x, n, part, sy, sc, pm);
}

// Exact sparse-group-LASSO solve (the rule of csrc/cpu/solve_rows.h row_exact_sgl, docs/solvers.md):
// u = soft(pz, a·λ1) elementwise, then group LASSO's screening and Newton on u with T = a·λ2·w_g.
template <typename T, typename Team>
SS_FN void team_exact_sgl(Team& tm, const Reg<T>& reg, T a, const T* lin, const T* P, const T* w0, T* x,
                          int64_t n) {
  const T t1 = a * reg.lam, thr = a * (reg.lam2 * reg.wg);
  if (thr == T(0)) {
    for (int64_t i = tm.lane; i < n; i += tm.size)
      x[i] = soft_threshold(subproblem_pz(P[i], w0[i], lin[i]), t1) / P[i];
    return;
  }
  T part = T(0), sy = T(0), sc = T(0), pm = T(0);
  for (int64_t i = tm.lane; i < n; i += tm.size) {
    const T u = soft_threshold(subproblem_pz(P[i], w0[i], lin[i]), t1);
    x[i] = u;
    part += u * u;
    newton_start_add(P[i], u, sy, sc);
    pm = P[i] > pm ? P[i] : pm;
  }
  team_newton_pz(tm, thr, P, x, n, part, sy, sc, pm);
}

// Exact group-MCP solve (the rule of csrc/cpu/solve_rows.h row_exact_gmcp and reference.py
// exact_group_mcp, docs/solvers.md): T = a·λ_g, c = a/ω_g, P' = P − c, Newton on s by math.h
// gmcp_next (convex groups, min P ≥ c: K^(-1/2) − 1/T; the others: K − T²) from
// s_L = (‖pz‖/T − 1)/max P'; convex groups take x(s) (0 when screened), the others the candidate
// of least objective (double) among 0, x(s) and Z. One-element groups: math.h mcp_weighted.
// Sums in double, as on the CPU; x holds pz until the result is written.
template <typename T, typename Team>
SS_FN void team_exact_gmcp(Team& tm, const Reg<T>& reg, T a, const T* lin, const T* P, const T* w0, T* x,
                           int64_t n) {
  const T lam_g = reg.lam * reg.wg, om_g = reg.omega * reg.wg;
  const T thr = a * lam_g;
  if (thr == T(0) || n == 1) {
    for (int64_t i = tm.lane; i < n; i += tm.size)
      x[i] = thr == T(0) ? w0[i] - lin[i] / P[i]
                         : mcp_weighted(P[i], subproblem_pz(P[i], w0[i], lin[i]), a, lam_g, om_g);
    return;
  }
  const T c = a / om_g, smax = T(1) / c;
  double k = 0.0, f0 = 0.0, unused = 0.0;
  T pmx = T(0), pmn = Huge<T>::value;  // P > 0: neutral starts of the max and the min
  for (int64_t i = tm.lane; i < n; i += tm.size) {
    const T pz = subproblem_pz(P[i], w0[i], lin[i]);
    x[i] = pz;
    const double zd = double(pz);
    k += zd * zd;
    f0 += zd * (zd / double(P[i]));
    pmx = P[i] > pmx ? P[i] : pmx;
    pmn = P[i] < pmn ? P[i] : pmn;
  }
  tm.sum3(k, f0, unused);
  f0 *= 0.5;
  const T mx = tm.max(pmx), mn = -tm.max(-pmn);
  const bool convex = mn >= c;
  const T pzn = T(std::sqrt(k));
  const T ppmax = mx - c;
  T s = ppmax > T(0) ? (pzn / thr - T(1)) / ppmax : smax;
  s = s < T(0) ? T(0) : (s > smax ? smax : s);
  const bool kept = pzn > thr;
  if (kept && s < smax) {
    const T tol = T(NEWTON_ULPS) * Eps<T>::value;
    for (int it = 0; it < NEWTON_MAX_ITERS; ++it) {
      double k1 = 0.0, dk = 0.0, u3 = 0.0;
      for (int64_t i = tm.lane; i < n; i += tm.size) {
        const T pp = P[i] - c;
        const T den = T(1) + pp * s;
        const T q2 = x[i] * x[i] / (den * den);
        k1 += double(q2);
        dk += double(q2 * pp / den);
      }
      tm.sum3(k1, dk, u3);
      bool going;
      s = gmcp_next(s, k1, dk, double(thr), convex, tol, smax, going);
      if (!going) break;
    }
  }
  if (!kept) s = T(-1);  // screened: x(s) = 0
  int choice = 0;        // 0: x(s); 1: Z; 2: 0
  if (!convex) {
    double g1 = 0.0, g2 = 0.0, g3 = 0.0;
    for (int64_t i = tm.lane; i < n; i += tm.size) {
      const T xk = s >= T(0) ? x[i] * s / (T(1) + (P[i] - c) * s) : T(0);
      const double pd = double(P[i]), zd = double(x[i]) / pd, d = double(xk) - zd;
      g1 += pd * d * d;
      g2 += double(xk) * double(xk);
      g3 += zd * zd;
    }
    tm.sum3(g1, g2, g3);
    const double ad = double(a), lgd = double(lam_g), ogd = double(om_g);
    const double fx = 0.5 * g1 + ad * mcp_value(std::sqrt(g2), lgd, ogd);
    const double fz = ad * mcp_value(std::sqrt(g3), lgd, ogd);
    const bool use_x = fx < f0;
    const double best = use_x ? fx : f0;
    choice = fz < best ? 1 : (use_x ? 0 : 2);
  }
  for (int64_t i = tm.lane; i < n; i += tm.size) {
    const T pz = x[i];
    x[i] = choice == 1 ? pz / P[i] : (choice == 2 || s < T(0) ? T(0) : pz * s / (T(1) + (P[i] - c) * s));
  }
}

// The exact solve of one group by regularizer kind (solver="exact"; ProxSSI).
template <typename T, typename Team>
SS_FN void team_exact(Team& tm, const Reg<T>& reg, T a, double lam, double wg, const T* lin, const T* P,
                      const T* w0, T* x, int64_t n) {
  switch (reg.kind) {
    case REG_SPARSE_GROUP_LASSO:
      team_exact_sgl<T>(tm, reg, a, lin, P, w0, x, n);
      return;
    case REG_GROUP_MCP:
      team_exact_gmcp<T>(tm, reg, a, lin, P, w0, x, n);
      return;
    default:
      team_newton<T>(tm, T(double(a) * lam * wg), lin, P, w0, x, n);
  }
}

// Subproblem objective Q(x) of one group, in double for every T (math.h group_objective).
template <typename T, typename Team>
SS_FN double team_objective(Team& tm, const Reg<T>& reg, T a, const T* lin, const T* P, const T* w0, const T* x,
                            int64_t n) {
  double sm = 0.0, n2 = 0.0, l1 = 0.0;
  for (int64_t i = tm.lane; i < n; i += tm.size) {
    const double xd = double(x[i]), dd = xd - double(w0[i]);
    sm += double(lin[i]) * dd + 0.5 * double(P[i]) * dd * dd;
    n2 += xd * xd;
    l1 += std::fabs(xd);
  }
  tm.sum3(sm, n2, l1);
  return sm + double(a) * group_value(reg_double(reg), std::sqrt(n2), l1);
}

// Screened proximal gradient (math.h group_pg, RAMDA Algorithm 2) with the per-group stopping
// rule: stop when (Q_prev − Q)/(|Q| + 1) < rtol after ≥ 2 iterations or after max_iters; a
// result worse than the warm start x0 is replaced by x0.
template <typename T, typename Team>
SS_FN void team_pg(Team& tm, const Reg<T>& reg, T a, const T* lin, const T* P, const T* w0, const T* x0, T* x,
                   int64_t n, int64_t max_iters, T rtol) {
  if (n == 0) return;
  T pm = T(0);
  for (int64_t i = tm.lane; i < n; i += tm.size) pm = P[i] > pm ? P[i] : pm;
  T eta = T(1) / tm.max(pm);
  if (reg.kind == REG_GROUP_MCP) eta = eta / T(2);
  if (reg.kind == REG_GROUP_LASSO) {
    T part = T(0);
    for (int64_t i = tm.lane; i < n; i += tm.size) {
      const T v = subproblem_pz(P[i], w0[i], lin[i]);
      part += v * v;
    }
    if (screened(T(std::sqrt(tm.sum(part))), a * (reg.lam * reg.wg))) {
      for (int64_t i = tm.lane; i < n; i += tm.size) x[i] = T(0);
      return;
    }
  }
  const double q0 = team_objective(tm, reg, a, lin, P, w0, x0, n);
  for (int64_t i = tm.lane; i < n; i += tm.size) x[i] = x0[i];
  double q_prev = q0;
  const T tau = eta * a;
  const T t1 = tau * reg.lam;
  const bool sgl = reg.kind == REG_SPARSE_GROUP_LASSO;
  for (int64_t j = 1; j <= max_iters; ++j) {
    // gradient step (kept in x), soft threshold for SGL, and the norm for the group shrink
    T part = T(0);
    for (int64_t i = tm.lane; i < n; i += tm.size) {
      T y = x[i] - eta * (lin[i] + P[i] * (x[i] - w0[i]));
      if (sgl) y = soft_threshold(y, t1);
      x[i] = y;
      part += y * y;
    }
    const T scale = group_prox_scale(reg, tau, T(std::sqrt(tm.sum(part))));
    for (int64_t i = tm.lane; i < n; i += tm.size) x[i] = x[i] * scale;
    const double q = team_objective(tm, reg, a, lin, P, w0, x, n);
    const bool done = j >= 2 && (q_prev - q) / (std::fabs(q) + 1.0) < double(rtol);
    q_prev = q;
    if (done) break;
  }
  if (q_prev > q0)
    for (int64_t i = tm.lane; i < n; i += tm.size) x[i] = x0[i];
}

// ---------------------------------------------------------------------------------------------
// PATH_ELEM: one element (no regularizer, or one-element groups), by one thread
// ---------------------------------------------------------------------------------------------
template <typename T, typename Op>
SS_FN void elem_step(const StepParams& p, const TensorDesc& d, const Op& op, int64_t k) {
  const Reg<T> reg = make_reg<T>(p, d);
  if constexpr (Op::kSolver) {
    T lin, P, w0, x0, x, y;
    op.load(d, k, lin, P, w0, x0);
    if (reg.kind == REG_NONE) {
      x = w0 - lin / P;
    } else if (p.exact && reg.kind == REG_GROUP_LASSO) {
      group_newton<T>(T(double(op.a()) * p.lam * d.wg), &lin, &P, &w0, &x, 1);
    } else if (p.exact) {  // SGL and MCP of one element: the team solves with one lane
      HostTeam one;
      team_exact<T>(one, reg, op.a(), p.lam, d.wg, &lin, &P, &w0, &x, 1);
    } else {
      group_pg<T>(reg, op.a(), &lin, &P, &w0, &x0, &x, &y, 1, p.max_iters, T(p.rtol));
    }
    op.store(d, k, x0, x);
  } else {
    const T z = op.load(d, k);
    if (reg.kind == REG_NONE) {
      op.store(d, k, z);
      return;
    }
    const T tau = op.tau();
    const T y = reg.kind == REG_SPARSE_GROUP_LASSO ? soft_threshold(z, tau * reg.lam) : z;
    op.store(d, k, y * group_prox_scale(reg, tau, T(std::fabs(y))));
  }
}

// Subproblem of one group by a team: state update into the arrays, solve, write back.
// arr: SOLVER_ARRAYS·n elements laid out [lin | P | w0 | x0 | x] (shared or global memory).
template <typename T, typename Op, typename Team>
SS_FN void solver_group(Team& tm, const StepParams& p, const TensorDesc& d, const Op& op, int64_t j, T* arr,
                        int64_t stride) {
  const Reg<T> reg = make_reg<T>(p, d);
  const int64_t n = d.A * d.B;
  T* lin = arr;
  T* P = arr + stride;
  T* w0 = arr + 2 * stride;
  T* x0 = arr + 3 * stride;
  T* x = arr + 4 * stride;
  for (int64_t i = tm.lane; i < n; i += tm.size) op.load(d, elem_index(d, j, i), lin[i], P[i], w0[i], x0[i]);
  if (p.exact)
    team_exact<T>(tm, reg, op.a(), p.lam, d.wg, lin, P, w0, x, n);
  else
    team_pg<T>(tm, reg, op.a(), lin, P, w0, x0, x, n, p.max_iters, T(p.rtol));
  for (int64_t i = tm.lane; i < n; i += tm.size) op.store(d, elem_index(d, j, i), x0[i], x[i]);
}

template <typename T, typename Op, typename Team>
SS_FN void group_step(Team& tm, const StepParams& p, const TensorDesc& d, const Op& op, int64_t j, T* arr,
                      int64_t stride) {
  if constexpr (Op::kSolver)
    solver_group<T>(tm, p, d, op, j, arr, stride);
  else
    closed_group<T>(tm, p, d, op, j, arr);
}

// Workspace arrays of group j of a PATH_STREAM tensor (solvers); nullptr for closed forms.
template <typename T, typename Op>
SS_FN T* stream_arrays(const StepParams& p, const TensorDesc& d, int64_t j, int64_t* stride) {
  *stride = d.A * d.G * d.B;
  if constexpr (Op::kSolver)
    return static_cast<T*>(p.workspace) + d.ws_off + j * d.A * d.B;
  else
    return nullptr;
}

// Tensor owning work item `item`: last descriptor with item0 <= item.
SS_FN int find_tensor(const StepParams& p, int64_t item) {
  int lo = 0, hi = p.num_tensors;  // answer in [lo, hi)
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (p.tensors[mid].item0 <= item)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

// ---------------------------------------------------------------------------------------------
// The kernel: one launch per bucket, a block per work item (grid-stride over items)
// ---------------------------------------------------------------------------------------------
#if defined(__CUDACC__)
template <typename T>
constexpr size_t smem_bytes() {
  // the team's reduction scratch after the arrays, 8-byte aligned, room for 3 doubles per warp
  return (sizeof(T) * SOLVER_ARRAYS * BLOCK_CAP + 7) / 8 * 8 + sizeof(double) * 3 * WARPS_PER_BLOCK;
}

template <typename T, typename Op>
__global__ void __launch_bounds__(BLOCK_THREADS) step_kernel(const StepParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  const int tid = threadIdx.x;
  for (int64_t item = blockIdx.x; item < p.num_items; item += gridDim.x) {
    const TensorDesc& d = p.tensors[find_tensor(p, item)];
    const Op op(d);
    const int64_t li = item - d.item0;
    switch (d.path) {
      case PATH_ELEM: {
        const int64_t numel = d.A * d.G * d.B;
        const int64_t k0 = li * ELEM_PER_ITEM;
        const int64_t k1 = k0 + ELEM_PER_ITEM < numel ? k0 + ELEM_PER_ITEM : numel;
        for (int64_t k = k0 + tid; k < k1; k += BLOCK_THREADS) elem_step<T>(p, d, op, k);
        break;
      }
      case PATH_WARP: {
        const int w = tid >> 5;
        const int64_t j = li * WARPS_PER_BLOCK + w;
        if (j < d.G) {
          WarpTeam tm{tid & 31};
          group_step<T>(tm, p, d, op, j, smem + w * SOLVER_ARRAYS * WARP_CAP, WARP_CAP);
        }
        break;
      }
      case PATH_BLOCK: {
        BlockTeam<T> tm{tid, smem + SOLVER_ARRAYS * BLOCK_CAP};
        group_step<T>(tm, p, d, op, li, smem, BLOCK_CAP);
        break;
      }
      default: {  // PATH_STREAM
        BlockTeam<T> tm{tid, smem + SOLVER_ARRAYS * BLOCK_CAP};
        int64_t stride;
        T* arr = stream_arrays<T, Op>(p, d, li, &stride);
        group_step<T>(tm, p, d, op, li, arr, stride);
        break;
      }
    }
    __syncthreads();  // shared memory is reused by the next item
  }
}

template <typename T, typename Op>
cudaError_t launch_step(const StepParams& p, cudaStream_t stream) {
  if (p.num_items <= 0) return cudaSuccess;
  const int64_t max_grid = int64_t(1) << 20;
  const unsigned grid = static_cast<unsigned>(p.num_items < max_grid ? p.num_items : max_grid);
  step_kernel<T, Op><<<grid, BLOCK_THREADS, smem_bytes<T>(), stream>>>(p);
  return cudaGetLastError();
}
#endif

}  // namespace cuda
}  // namespace structsparse
