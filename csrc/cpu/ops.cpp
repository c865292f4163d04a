// The CPU dispatch key of the structsparse ops: the kernels of csrc/cpu/steps.cpp registered under
// the schemas of csrc/library.cpp (the CUDA ones are registered in csrc/cuda/ops.cpp).
#include <torch/library.h>

#include "steps.h"

namespace structsparse {
namespace cpu {

TORCH_LIBRARY_IMPL(structsparse, CPU, m) {
  m.impl("all_finite", &all_finite);
  m.impl("rmda_step", &rmda_step);
  m.impl("ramda_step", &ramda_step);
  m.impl("proxsgd_step", &proxsgd_step);
  m.impl("proxgen_step", &proxgen_step);
  m.impl("proxssi_step", &proxssi_step);
  m.impl("dessilbi_step", &dessilbi_step);
  m.impl("rmda_step_sharded", &rmda_step_sharded);
  m.impl("proxsgd_step_sharded", &proxsgd_step_sharded);
  m.impl("dessilbi_step_sharded", &dessilbi_step_sharded);
}

}  // namespace cpu
}  // namespace structsparse
