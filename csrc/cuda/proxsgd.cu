// ProxSGD (docs/math.md §5): closed-form group prox of W − lr·b.
// Kernel body and paths: kernels.cuh; interface: launch.h.
#include "kernels.cuh"

namespace structsparse {
namespace cuda {

namespace {
template <typename T>
using Op = ProxSgdOp<T>;
}  // namespace

cudaError_t launch_proxsgd_f32(const StepParams& p, cudaStream_t stream) {
  return launch_step<float, Op<float>>(p, stream);
}

cudaError_t launch_proxsgd_f64(const StepParams& p, cudaStream_t stream) {
  return launch_step<double, Op<double>>(p, stream);
}

}  // namespace cuda
}  // namespace structsparse
