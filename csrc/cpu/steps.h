// The CPU implementations of the structsparse ops (csrc/cpu/steps.cpp), declared for their
// registration with the dispatcher (csrc/cpu/ops.cpp). Arguments: the op schemas in
// csrc/library.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <string>

namespace structsparse {
namespace cpu {

void rmda_step(at::TensorList params, at::TensorList grads, at::TensorList anchors, at::TensorList grad_sums,
               at::IntArrayRef steps, at::ArrayRef<double> alphas, at::IntArrayRef views, double lr, double c,
               c10::string_view reg, at::ArrayRef<double> reg_params);

void rmda_step_sharded(at::TensorList params, at::TensorList grads, at::TensorList anchors, at::TensorList grad_sums,
                       at::IntArrayRef steps, at::ArrayRef<double> alphas, at::IntArrayRef views, double lr, double c,
                       c10::string_view reg, at::ArrayRef<double> reg_params, at::IntArrayRef split,
                       at::ArrayRef<double> group_weights, int64_t phase, at::Tensor sums);

void ramda_step(at::TensorList params, at::TensorList grads, at::TensorList anchors, at::TensorList grad_sums,
                at::TensorList sq_grad_sums, at::IntArrayRef steps, at::ArrayRef<double> alphas,
                at::IntArrayRef views, double lr, double c, double eps, c10::string_view reg,
                at::ArrayRef<double> reg_params, c10::string_view solver, int64_t max_iters, double rtol);

void proxsgd_step(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                  at::IntArrayRef views, double lr, double c, c10::string_view reg, at::ArrayRef<double> reg_params);

void proxsgd_step_sharded(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                          at::IntArrayRef views, double lr, double c, c10::string_view reg,
                          at::ArrayRef<double> reg_params, at::IntArrayRef split, at::ArrayRef<double> group_weights,
                          int64_t phase, at::Tensor sums);

void proxgen_step(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                  at::IntArrayRef steps, at::IntArrayRef views, double lr, double beta1, double beta2, double eps,
                  double weight_decay, c10::string_view reg, at::ArrayRef<double> reg_params,
                  c10::string_view solver, int64_t max_iters, double rtol);

void proxssi_step(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                  at::IntArrayRef steps, at::IntArrayRef views, double lr, double beta1, double beta2, double eps,
                  double weight_decay, c10::string_view reg, at::ArrayRef<double> reg_params);

void dessilbi_step(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, at::TensorList zs,
                   at::TensorList gammas, at::IntArrayRef views, double lr, double kappa, double nu, double momentum,
                   double weight_decay, c10::string_view reg, at::ArrayRef<double> reg_params);

void dessilbi_step_sharded(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                           at::TensorList zs, at::TensorList gammas, at::IntArrayRef views, double lr, double kappa,
                           double nu, double momentum, double weight_decay, c10::string_view reg,
                           at::ArrayRef<double> reg_params, at::IntArrayRef split, at::ArrayRef<double> group_weights,
                           int64_t phase, at::Tensor sums);

bool all_finite(at::TensorList tensors);

// The instruction set the tile kernels were selected for ("default", "avx2", "avx512").
std::string cpu_isa();

}  // namespace cpu
}  // namespace structsparse
