// The torch glue: op schemas of structsparse (torch.library), registered once here. Kernels are
// registered per device elsewhere (csrc/cpu/ops.cpp: CPU; csrc/cuda/ops.cpp: CUDA) under these
// names; structsparse/ops.py registers the fake (meta) implementations for torch.compile.
//
// Every step op takes one bucket: parallel lists of tensors, per-tensor scalars as lists, the
// [A, G, B] view of every tensor flattened into `views` (3 ints per tensor, docs/math.md §1), and the
// param group's scalars. `reg` is "none", "group_lasso" (also L1), "sparse_group_lasso" or
// "group_mcp"; reg_params = [lam (λ, or λ1 for SGL), lam2 (λ2 for SGL), omega (MCP)].
// The ops mutate the parameters and state in place and return nothing.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "steps.h"  // structsparse::cpu::cpu_isa

TORCH_LIBRARY(structsparse, m) {
  m.def(
      "rmda_step(Tensor(a!)[] params, Tensor[] grads, Tensor[] anchors, Tensor(b!)[] grad_sums, "
      "SymInt[] steps, float[] alphas, int[] views, float lr, float c, str reg, float[] reg_params) -> ()");
  m.def(
      "ramda_step(Tensor(a!)[] params, Tensor[] grads, Tensor[] anchors, Tensor(b!)[] grad_sums, "
      "Tensor(c!)[] sq_grad_sums, SymInt[] steps, float[] alphas, int[] views, float lr, float c, float eps, "
      "str reg, float[] reg_params, str solver, int max_iters, float rtol) -> ()");
  m.def(
      "proxsgd_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, int[] views, "
      "float lr, float c, str reg, float[] reg_params) -> ()");
  m.def(
      "proxgen_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "SymInt[] steps, int[] views, float lr, float beta1, float beta2, float eps, float weight_decay, "
      "str reg, float[] reg_params, str solver, int max_iters, float rtol) -> ()");
  m.def(
      "proxssi_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "SymInt[] steps, int[] views, float lr, float beta1, float beta2, float eps, float weight_decay, "
      "str reg, float[] reg_params) -> ()");
  // DessiLBI (docs/math.md §6) without magnitude scaling; reg "none" (unpaired: zs, gammas empty) or
  // "group_lasso" (L1 = element grouping), reg_params[0] = λ.
  m.def(
      "dessilbi_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, Tensor(c!)[] zs, "
      "Tensor(d!)[] gammas, int[] views, float lr, float kappa, float nu, float momentum, float weight_decay, "
      "str reg, float[] reg_params) -> ()");
  // Sharded twins of the streamed prox steps (FSDP2; csrc/cpu/steps.cpp, Shard): the plain op's
  // arguments, then split (1 per param whose groups span ranks), group_weights (w_g of the global
  // shape, per param), phase (1: state update + per-group partial sums into `sums`, float64, G per
  // split param; 2: the prox from the all-reduced `sums`, and the whole step of unsplit params).
  m.def(
      "rmda_step_sharded(Tensor(a!)[] params, Tensor[] grads, Tensor[] anchors, Tensor(b!)[] grad_sums, "
      "SymInt[] steps, float[] alphas, int[] views, float lr, float c, str reg, float[] reg_params, int[] split, "
      "float[] group_weights, int phase, Tensor(c!) sums) -> ()");
  m.def(
      "proxsgd_step_sharded(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, int[] views, "
      "float lr, float c, str reg, float[] reg_params, int[] split, float[] group_weights, int phase, "
      "Tensor(c!) sums) -> ()");
  m.def(
      "dessilbi_step_sharded(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
      "Tensor(c!)[] zs, Tensor(d!)[] gammas, int[] views, float lr, float kappa, float nu, float momentum, "
      "float weight_decay, str reg, float[] reg_params, int[] split, float[] group_weights, int phase, "
      "Tensor(e!) sums) -> ()");
  // True when every element of every tensor is finite (the optimizers' skip_nonfinite check).
  m.def("all_finite(Tensor[] tensors) -> bool");
  // The instruction set the CPU tile kernels were selected for ("default", "avx2", "avx512").
  m.def("cpu_isa() -> str", &structsparse::cpu::cpu_isa);
}

// A Python module with no functions: importing structsparse._C loads the library, which
// registers the ops above (torch.ops.structsparse.*).
static struct PyModuleDef structsparse_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr,
                                                    nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  return PyModule_Create(&structsparse_c_module);
}
