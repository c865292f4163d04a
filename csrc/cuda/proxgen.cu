// ProxGen (docs/math.md §5): AdamW base, weighted-prox subproblem per group (Newton or PG).
// Kernel body and paths: kernels.cuh; interface: launch.h.
#include "kernels.cuh"

namespace structsparse {
namespace cuda {

namespace {
template <typename T>
using Op = AdamProxOp<T, false>;
}  // namespace

cudaError_t launch_proxgen_f32(const StepParams& p, cudaStream_t stream) {
  return launch_step<float, Op<float>>(p, stream);
}

cudaError_t launch_proxgen_f64(const StepParams& p, cudaStream_t stream) {
  return launch_step<double, Op<double>>(p, stream);
}

}  // namespace cuda
}  // namespace structsparse
