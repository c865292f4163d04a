// DessiLBI (docs/math.md; reference.dessilbi_step without magnitude scaling): momentum and W
// update from the old Γ, Z += (lr/ν)·(W_old − Γ), then Γ = κ·prox(Z), the closed-form group prox.
// Kernel body and paths: kernels.cuh; interface: launch.h.
#include "kernels.cuh"

namespace structsparse {
namespace cuda {

namespace {
template <typename T>
using Op = DessiLbiOp<T>;
}  // namespace

cudaError_t launch_dessilbi_f32(const StepParams& p, cudaStream_t stream) {
  return launch_step<float, Op<float>>(p, stream);
}

cudaError_t launch_dessilbi_f64(const StepParams& p, cudaStream_t stream) {
  return launch_step<double, Op<double>>(p, stream);
}

}  // namespace cuda
}  // namespace structsparse
