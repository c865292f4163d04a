// ProxSSI (docs/math.md §5): HF AdamW step, then the weighted group prox by Newton.
// Kernel body and paths: kernels.cuh; interface: launch.h.
#include "kernels.cuh"

namespace structsparse {
namespace cuda {

namespace {
template <typename T>
using Op = AdamProxOp<T, true>;
}  // namespace

cudaError_t launch_proxssi_f32(const StepParams& p, cudaStream_t stream) {
  return launch_step<float, Op<float>>(p, stream);
}

cudaError_t launch_proxssi_f64(const StepParams& p, cudaStream_t stream) {
  return launch_step<double, Op<double>>(p, stream);
}

}  // namespace cuda
}  // namespace structsparse
