// RMDA (docs/math.md §3): closed-form group prox of W0 − V/sqrt(t).
// Kernel body and paths: kernels.cuh; interface: launch.h.
#include "kernels.cuh"

namespace structsparse {
namespace cuda {

namespace {
template <typename T>
using Op = RmdaOp<T>;
}  // namespace

cudaError_t launch_rmda_f32(const StepParams& p, cudaStream_t stream) {
  return launch_step<float, Op<float>>(p, stream);
}

cudaError_t launch_rmda_f64(const StepParams& p, cudaStream_t stream) {
  return launch_step<double, Op<double>>(p, stream);
}

}  // namespace cuda
}  // namespace structsparse
