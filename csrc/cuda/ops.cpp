// CUDA implementations of the structsparse ops (schemas in csrc/library.cpp), compiled only in a
// CUDA build (setup.py). This is the torch glue: it validates a bucket, fills the plain params
// structs of csrc/cuda/launch.h from the tensors and calls the launchers on the current stream.
//
// Per bucket: one launch per math dtype present (float for fp32/bf16/fp16 parameters, double for
// fp64). Gradients are read in their own dtype; a non-contiguous gradient is made contiguous; a
// non-contiguous parameter is stepped in a contiguous copy that is copied back. State tensors
// must be contiguous and of the math dtype. The tensor descriptors travel to the device in one
// pinned, stream-ordered copy.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/launch.h"
#include "structsparse/math.h"
#include "structsparse/overlap.h"

namespace structsparse {
namespace cuda {
namespace {

using LaunchFn = cudaError_t (*)(const StepParams&, cudaStream_t);

struct Common {
  int reg_kind = REG_NONE;
  double lam = 0, lam2 = 0, omega = 1;
  int exact = 0;
  int64_t max_iters = 0;
  double rtol = 0;
};

int parse_reg(c10::string_view reg) {
  if (reg == "none") return REG_NONE;
  if (reg == "group_lasso") return REG_GROUP_LASSO;
  if (reg == "sparse_group_lasso") return REG_SPARSE_GROUP_LASSO;
  if (reg == "group_mcp") return REG_GROUP_MCP;
  TORCH_CHECK(false, "structsparse: reg: unknown regularizer kind '", std::string(reg), "'");
}

void set_reg(Common& cm, c10::string_view reg, at::ArrayRef<double> rp) {
  cm.reg_kind = parse_reg(reg);
  TORCH_CHECK(rp.size() == 3, "structsparse: reg_params must be [lam, lam2, omega], got ", rp.size(), " values");
  cm.lam = rp[0];
  cm.lam2 = rp[1];
  cm.omega = rp[2];
}

void set_solver(const char* op, Common& cm, c10::string_view solver, int64_t max_iters, double rtol) {
  TORCH_CHECK(solver == "pg" || solver == "exact", op, ": solver must be 'pg' or 'exact', got '",
              std::string(solver), "'");
  cm.exact = solver == "exact";
  TORCH_CHECK(max_iters >= 0, op, ": max_iters must be >= 0");
  cm.max_iters = max_iters;
  cm.rtol = rtol;
}

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return DT_F32;
    case at::kDouble:
      return DT_F64;
    case at::kBFloat16:
      return DT_BF16;
    case at::kHalf:
      return DT_F16;
    default:
      return -1;
  }
}

// Validates a bucket, plans it and launches it (one launch per math dtype). `scal(i, sc)` fills
// the per-tensor scalars; `solver`: the algorithm solves a subproblem per group.
template <typename Scal>
void run_bucket(const char* op, at::TensorList params, at::TensorList grads, std::vector<at::TensorList> states,
                at::IntArrayRef views, const Common& cm, bool solver, LaunchFn f32, LaunchFn f64, Scal scal) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n, op, ": got ", n, " params but ", grads.size(), " grads");
  for (auto& s : states) TORCH_CHECK(s.size() == n, op, ": state list of length ", s.size(), " for ", n, " params");
  TORCH_CHECK(views.size() == 3 * n, op, ": views must hold 3 sizes [A, G, B] per tensor");
  if (n == 0) return;
  const at::Device dev = params[0].device();
  c10::cuda::CUDAGuard guard(dev);
  std::vector<TensorDesc> desc[2];  // [0]: float math, [1]: double math
  std::vector<at::Tensor> keep;      // contiguous grads / parameter copies alive until launched
  std::vector<std::pair<at::Tensor, at::Tensor>> copy_back;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    TORCH_CHECK(p.is_cuda() && p.device() == dev, op, ": params[", i, "] is not a CUDA tensor on ", dev);
    TORCH_CHECK(g.is_cuda() && g.device() == dev && g.sizes() == p.sizes(), op, ": grads[", i,
                "] must be a CUDA tensor on ", dev, " of shape ", p.sizes());
    TORCH_CHECK_VALUE(p.is_contiguous() || !may_overlap(p.dim(), p.sizes().data(), p.strides().data()), op,
                ": params[", i, "] (shape ", p.sizes(), ", strides ", p.strides(),
                ") may hold several elements at one memory location (an expanded or overlapping view): the step "
                "writes it in place; pass a parameter that owns its memory (e.g. .clone())");
    const int wdt = dtype_code(p.scalar_type()), gdt = dtype_code(g.scalar_type());
    TORCH_CHECK(wdt >= 0, op, ": params[", i, "] has unsupported dtype ", p.scalar_type());
    TORCH_CHECK(gdt >= 0, op, ": grads[", i, "] has unsupported dtype ", g.scalar_type());
    const bool dbl = wdt == DT_F64;
    const auto acc = dbl ? at::kDouble : at::kFloat;
    TensorDesc d;
    std::memset(&d, 0, sizeof(d));
    void* s[3] = {nullptr, nullptr, nullptr};
    for (size_t k = 0; k < states.size(); ++k) {
      const at::Tensor& st = states[k][i];
      TORCH_CHECK(st.is_cuda() && st.device() == dev && st.is_contiguous() && st.scalar_type() == acc &&
                      st.numel() == p.numel(),
                  op, ": state tensor ", k, " of params[", i, "] must be a contiguous ", acc, " tensor on ", dev,
                  " with ", p.numel(), " elements");
      s[k] = st.data_ptr();
    }
    d.A = views[3 * i];
    d.G = views[3 * i + 1];
    d.B = views[3 * i + 2];
    TORCH_CHECK(d.A >= 0 && d.G >= 0 && d.B >= 0 && d.A * d.G * d.B == p.numel(), op, ": views of params[", i,
                "] do not match its ", p.numel(), " elements");
    if (p.numel() == 0) continue;
    at::Tensor gc = g.contiguous();
    at::Tensor pc = p;
    if (!p.is_contiguous()) {
      pc = p.contiguous();
      copy_back.emplace_back(p, pc);
    }
    keep.push_back(gc);
    keep.push_back(pc);
    d.w = pc.data_ptr();
    d.g = gc.data_ptr();
    d.s0 = s[0];
    d.s1 = s[1];
    d.s2 = s[2];
    d.w_dtype = wdt;
    d.g_dtype = gdt;
    d.wg = std::sqrt(static_cast<double>(d.A * d.B));
    scal(i, d.sc);
    desc[dbl ? 1 : 0].push_back(d);
  }
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev.index()).stream();
  for (int m = 0; m < 2; ++m) {
    std::vector<TensorDesc>& ds = desc[m];
    if (ds.empty()) continue;
    StepParams p;
    std::memset(&p, 0, sizeof(p));
    int64_t ws = 0;
    p.num_items = plan_bucket(ds.data(), static_cast<int>(ds.size()), cm.reg_kind, solver, &ws);
    if (p.num_items == 0) continue;
    const int64_t bytes = static_cast<int64_t>(ds.size() * sizeof(TensorDesc));
    at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    std::memcpy(host.data_ptr(), ds.data(), bytes);
    at::Tensor table = host.to(dev, /*non_blocking=*/true);
    at::Tensor work;
    if (ws > 0) work = at::empty({ws}, at::TensorOptions().dtype(m ? at::kDouble : at::kFloat).device(dev));
    p.tensors = static_cast<const TensorDesc*>(table.data_ptr());
    p.num_tensors = static_cast<int>(ds.size());
    p.reg_kind = cm.reg_kind;
    p.lam = cm.lam;
    p.lam2 = cm.lam2;
    p.omega = cm.omega;
    p.exact = cm.exact;
    p.max_iters = cm.max_iters;
    p.rtol = cm.rtol;
    p.workspace = ws > 0 ? work.data_ptr() : nullptr;
    const cudaError_t err = (m ? f64 : f32)(p, stream);
    TORCH_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
  }
  for (auto& pr : copy_back) pr.first.copy_(pr.second);
}

// ---------------------------------------------------------------------------------------------
// Ops
// ---------------------------------------------------------------------------------------------

void rmda_step(at::TensorList params, at::TensorList grads, at::TensorList anchors, at::TensorList grad_sums,
               at::IntArrayRef steps, at::ArrayRef<double> alphas, at::IntArrayRef views, double lr, double c,
               c10::string_view reg, at::ArrayRef<double> reg_params) {
  TORCH_CHECK(steps.size() == params.size() && alphas.size() == params.size(),
              "rmda_step: steps and alphas need one value per param");
  Common cm;
  set_reg(cm, reg, reg_params);
  run_bucket("rmda_step", params, grads, {anchors, grad_sums}, views, cm, false, launch_rmda_f32, launch_rmda_f64,
             [&](size_t i, double* sc) {
               const double sqt = std::sqrt(static_cast<double>(steps[i]));
               sc[0] = lr * sqt;
               sc[1] = sqt;
               sc[2] = c;
               sc[3] = alphas[i] / sqt;
             });
}

void ramda_step(at::TensorList params, at::TensorList grads, at::TensorList anchors, at::TensorList grad_sums,
                at::TensorList sq_grad_sums, at::IntArrayRef steps, at::ArrayRef<double> alphas,
                at::IntArrayRef views, double lr, double c, double eps, c10::string_view reg,
                at::ArrayRef<double> reg_params, c10::string_view solver, int64_t max_iters, double rtol) {
  TORCH_CHECK(steps.size() == params.size() && alphas.size() == params.size(),
              "ramda_step: steps and alphas need one value per param");
  Common cm;
  set_reg(cm, reg, reg_params);
  set_solver("ramda_step", cm, solver, max_iters, rtol);
  run_bucket("ramda_step", params, grads, {anchors, grad_sums, sq_grad_sums}, views, cm, true, launch_ramda_f32,
             launch_ramda_f64, [&](size_t i, double* sc) {
               sc[0] = lr * std::sqrt(static_cast<double>(steps[i]));
               sc[1] = c;
               sc[2] = eps;
               sc[3] = alphas[i];
             });
}

void proxsgd_step(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                  at::IntArrayRef views, double lr, double c, c10::string_view reg, at::ArrayRef<double> reg_params) {
  Common cm;
  set_reg(cm, reg, reg_params);
  run_bucket("proxsgd_step", params, grads, {momentum_buffers}, views, cm, false, launch_proxsgd_f32,
             launch_proxsgd_f64, [&](size_t, double* sc) {
               sc[0] = lr;
               sc[1] = c;
             });
}

void adam_prox(const char* op, LaunchFn f32, LaunchFn f64, at::TensorList params, at::TensorList grads,
               at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::IntArrayRef steps, at::IntArrayRef views,
               double lr, double beta1, double beta2, double eps, double weight_decay, const Common& cm) {
  TORCH_CHECK(steps.size() == params.size(), op, ": steps needs one value per param");
  run_bucket(op, params, grads, {exp_avgs, exp_avg_sqs}, views, cm, true, f32, f64, [&](size_t i, double* sc) {
    const double t = static_cast<double>(steps[i]);
    sc[0] = lr;
    sc[1] = beta1;
    sc[2] = beta2;
    sc[3] = eps;
    sc[4] = weight_decay;
    sc[5] = 1.0 - std::pow(beta1, t);
    sc[6] = 1.0 - std::pow(beta2, t);
  });
}

void proxgen_step(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                  at::IntArrayRef steps, at::IntArrayRef views, double lr, double beta1, double beta2, double eps,
                  double weight_decay, c10::string_view reg, at::ArrayRef<double> reg_params,
                  c10::string_view solver, int64_t max_iters, double rtol) {
  Common cm;
  set_reg(cm, reg, reg_params);
  set_solver("proxgen_step", cm, solver, max_iters, rtol);
  adam_prox("proxgen_step", launch_proxgen_f32, launch_proxgen_f64, params, grads, exp_avgs, exp_avg_sqs, steps,
            views, lr, beta1, beta2, eps, weight_decay, cm);
}

void proxssi_step(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                  at::IntArrayRef steps, at::IntArrayRef views, double lr, double beta1, double beta2, double eps,
                  double weight_decay, c10::string_view reg, at::ArrayRef<double> reg_params) {
  Common cm;
  set_reg(cm, reg, reg_params);
  cm.exact = 1;
  adam_prox("proxssi_step", launch_proxssi_f32, launch_proxssi_f64, params, grads, exp_avgs, exp_avg_sqs, steps,
            views, lr, beta1, beta2, eps, weight_decay, cm);
}

void dessilbi_step(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, at::TensorList zs,
                   at::TensorList gammas, at::IntArrayRef views, double lr, double kappa, double nu, double momentum,
                   double weight_decay, c10::string_view reg, at::ArrayRef<double> reg_params) {
  Common cm;
  set_reg(cm, reg, reg_params);
  TORCH_CHECK(cm.reg_kind == REG_NONE || cm.reg_kind == REG_GROUP_LASSO,
              "dessilbi_step: reg must be 'none' or 'group_lasso' (L1 = group LASSO by element)");
  const bool paired = cm.reg_kind != REG_NONE;
  TORCH_CHECK(paired ? (zs.size() == params.size() && gammas.size() == params.size())
                     : (zs.empty() && gammas.empty()),
              "dessilbi_step: zs and gammas must match params when reg is given, and be empty otherwise");
  TORCH_CHECK(nu > 0, "dessilbi_step: nu must be > 0");
  std::vector<at::TensorList> states{momentum_buffers};
  if (paired) {
    states.push_back(zs);
    states.push_back(gammas);
  }
  run_bucket("dessilbi_step", params, grads, states, views, cm, false, launch_dessilbi_f32, launch_dessilbi_f64,
             [&](size_t, double* sc) {
               sc[0] = lr * kappa;
               sc[1] = lr * kappa * weight_decay;
               sc[2] = lr * kappa / nu;
               sc[3] = lr / nu;
               sc[4] = kappa;
               sc[5] = momentum;
             });
}

}  // namespace

TORCH_LIBRARY_IMPL(structsparse, CUDA, m) {
  m.impl("rmda_step", &rmda_step);
  m.impl("ramda_step", &ramda_step);
  m.impl("proxsgd_step", &proxsgd_step);
  m.impl("proxgen_step", &proxgen_step);
  m.impl("proxssi_step", &proxssi_step);
  m.impl("dessilbi_step", &dessilbi_step);
}

}  // namespace cuda
}  // namespace structsparse
