// Interface of the CUDA kernels of structsparse (csrc/cuda/*.cu): the params struct of one bucket,
// the host-side planning of work items, and the plain C++ launch functions. No torch headers: the
// torch glue (csrc/cuda/ops.cpp) fills these structs from tensors; the host emulation test
// (tests/cuda_host/emulate.cu) fills them from files.
//
// A bucket is a list of tensors, each viewed as [A, G, B] (docs/math.md §1; group j = x[:, j, :],
// n = A·B elements). Each tensor gets a *path* and a number of *work items*; one launch covers
// every work item of the bucket, a block finds its tensor by binary search over `item0`.
//
//   PATH_ELEM    n == 1 or no regularizer: one thread per element (ELEM_PER_ITEM per item)
//   PATH_WARP    n <= WARP_CAP: a warp owns a group, the group's arrays in shared memory
//                (WARPS_PER_BLOCK groups per item)
//   PATH_BLOCK   n <= BLOCK_CAP: the block owns a group, arrays in shared memory (1 group per item)
//   PATH_STREAM  larger groups: the block owns a group in two phases (partial sums, then apply);
//                closed-form proxes recompute their input from the updated state in the second
//                phase; iterative solvers keep the group's arrays in a global workspace (L2).
//
// Reductions are fixed-order (warp butterflies, then warps in index order): no atomics, results
// are bit-identical run to run.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace structsparse {
namespace cuda {

enum DType : int { DT_F32 = 0, DT_F64 = 1, DT_BF16 = 2, DT_F16 = 3 };
enum Path : int { PATH_ELEM = 0, PATH_WARP = 1, PATH_BLOCK = 2, PATH_STREAM = 3 };

constexpr int BLOCK_THREADS = 256;
constexpr int WARPS_PER_BLOCK = BLOCK_THREADS / 32;
constexpr int64_t ELEM_PER_ITEM = 4 * BLOCK_THREADS;
constexpr int SOLVER_ARRAYS = 5;  // lin, P, w0, x0, x
constexpr int64_t BLOCK_CAP = 1024;
constexpr int64_t WARP_CAP = BLOCK_CAP / WARPS_PER_BLOCK;

// One tensor of a bucket. Parameter and gradient are contiguous, of dtype w_dtype / g_dtype;
// state tensors are contiguous and of the math dtype (float for fp32/bf16/fp16, double for fp64).
struct TensorDesc {
  void* w;
  const void* g;
  void* s0;  // RMDA/RAMDA: anchor W0 | ProxSGD, DessiLBI: momentum buffer | ProxGen/SSI: exp_avg
  void* s1;  // RMDA/RAMDA: grad_sum V | ProxGen/SSI: exp_avg_sq | DessiLBI: Z (null: unpaired)
  void* s2;  // RAMDA: sq_grad_sum U | DessiLBI: Γ (null: unpaired)
  int w_dtype, g_dtype, path, pad_;
  int64_t A, G, B;
  int64_t item0;   // first work item of this tensor
  int64_t ws_off;  // PATH_STREAM with a solver: offset (elements) of its arrays in the workspace
  double wg;       // group weight sqrt(A·B)
  // Per-tensor scalars: RMDA [s, sqrt(t), c, α/sqrt(t)]; RAMDA [s, c, ε, α]; ProxSGD [lr, c];
  // ProxGen/ProxSSI [lr, β1, β2, ε, wd, bc1, bc2]; DessiLBI [lr·κ, lr·κ·wd, lr·κ/ν, lr/ν, κ, μ].
  double sc[8];
};

struct StepParams {
  const TensorDesc* tensors;  // device array of num_tensors descriptors (tensors with items only)
  int num_tensors;
  int reg_kind;  // structsparse::RegKind
  double lam, lam2, omega;
  int exact;  // 1: Newton ("exact"), 0: proximal gradient ("pg")
  int64_t max_iters;
  double rtol;
  int64_t num_items;
  void* workspace;  // math-dtype elements, ws_elems of the plan
};

// Assigns path, item0 and ws_off of every descriptor (A, G, B set), in order; returns the number
// of work items and the workspace size (elements of the math dtype). `solver`: RAMDA, ProxGen,
// ProxSSI (subproblem solved per group); RMDA/ProxSGD/DessiLBI have a closed-form prox.
inline int64_t plan_bucket(TensorDesc* d, int n, int reg_kind, bool solver, int64_t* ws_elems) {
  int64_t items = 0, ws = 0;
  for (int i = 0; i < n; ++i) {
    const int64_t gsize = d[i].A * d[i].B, numel = gsize * d[i].G;
    d[i].item0 = items;
    d[i].ws_off = 0;
    int64_t it;
    if (numel == 0) {
      d[i].path = PATH_ELEM;
      it = 0;
    } else if (reg_kind == 0 || gsize == 1) {
      d[i].path = PATH_ELEM;
      it = (numel + ELEM_PER_ITEM - 1) / ELEM_PER_ITEM;
    } else if (gsize <= WARP_CAP) {
      d[i].path = PATH_WARP;
      it = (d[i].G + WARPS_PER_BLOCK - 1) / WARPS_PER_BLOCK;
    } else if (gsize <= BLOCK_CAP) {
      d[i].path = PATH_BLOCK;
      it = d[i].G;
    } else {
      d[i].path = PATH_STREAM;
      it = d[i].G;
      if (solver) {
        d[i].ws_off = ws;
        ws += SOLVER_ARRAYS * numel;
      }
    }
    items += it;
  }
  *ws_elems = ws;
  return items;
}

// Launchers: one kernel launch for the whole bucket on `stream` (nothing when num_items == 0).
// f32: float math and state (fp32, bf16, fp16 parameters); f64: double everything.
cudaError_t launch_rmda_f32(const StepParams& p, cudaStream_t stream);
cudaError_t launch_rmda_f64(const StepParams& p, cudaStream_t stream);
cudaError_t launch_ramda_f32(const StepParams& p, cudaStream_t stream);
cudaError_t launch_ramda_f64(const StepParams& p, cudaStream_t stream);
cudaError_t launch_proxsgd_f32(const StepParams& p, cudaStream_t stream);
cudaError_t launch_proxsgd_f64(const StepParams& p, cudaStream_t stream);
cudaError_t launch_proxgen_f32(const StepParams& p, cudaStream_t stream);
cudaError_t launch_proxgen_f64(const StepParams& p, cudaStream_t stream);
cudaError_t launch_proxssi_f32(const StepParams& p, cudaStream_t stream);
cudaError_t launch_proxssi_f64(const StepParams& p, cudaStream_t stream);
cudaError_t launch_dessilbi_f32(const StepParams& p, cudaStream_t stream);
cudaError_t launch_dessilbi_f64(const StepParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace structsparse
