// Host emulation of the CUDA step kernels (csrc/cuda/kernels.cuh) for tests without a GPU.
//
// Runs the kernels' own per-element (elem_step) and per-group (group_step: closed-form prox,
// Newton, PG) code on the CPU with a one-lane team, over a bucket planned by the kernels'
// plan_bucket, with the same paths (elementwise / warp- and block-sized groups in an on-chip-sized
// buffer / large groups in the global workspace layout). No CUDA runtime calls. What it does not
// exercise: warp/block reductions with more than one lane, barriers, the launch itself.
//
// Usage: emulate DIR. DIR/job.txt:
//   algo(rmda|ramda|proxsgd|proxgen|proxssi|dessilbi) dbl reg_kind lam lam2 omega exact max_iters rtol n
//   then per tensor: A G B w_dtype g_dtype sc0 .. sc7
// Arrays (raw, little endian): DIR/w<i>.bin (w_dtype), g<i>.bin (g_dtype), s<k>_<i>.bin (math
// dtype, k < number of state tensors: DessiLBI has 3 (d, Z, Γ) with a regularizer and 1 (d)
// without). Results overwrite w<i>.bin and s<k>_<i>.bin.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "../../csrc/cuda/kernels.cuh"

using namespace structsparse;
using namespace structsparse::cuda;

static std::vector<char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(2);
  }
  return std::vector<char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

static void write_file(const std::string& path, const std::vector<char>& data) {
  std::ofstream f(path, std::ios::binary);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
}

template <typename T, typename Op>
static void emulate(const StepParams& p, TensorDesc* d, int n) {
  std::vector<T> smem(SOLVER_ARRAYS * BLOCK_CAP);
  for (int ti = 0; ti < n; ++ti) {
    const TensorDesc& t = d[ti];
    const Op op(t);
    const int64_t numel = t.A * t.G * t.B;
    if (numel == 0) continue;
    HostTeam tm;
    switch (t.path) {
      case PATH_ELEM:
        for (int64_t k = 0; k < numel; ++k) elem_step<T>(p, t, op, k);
        break;
      case PATH_WARP:
        for (int64_t j = 0; j < t.G; ++j) group_step<T>(tm, p, t, op, j, smem.data(), WARP_CAP);
        break;
      case PATH_BLOCK:
        for (int64_t j = 0; j < t.G; ++j) group_step<T>(tm, p, t, op, j, smem.data(), BLOCK_CAP);
        break;
      default:
        for (int64_t j = 0; j < t.G; ++j) {
          int64_t stride;
          T* arr = stream_arrays<T, Op>(p, t, j, &stride);
          group_step<T>(tm, p, t, op, j, arr, stride);
        }
    }
  }
}

template <typename T>
using ProxGenOp = AdamProxOp<T, false>;
template <typename T>
using ProxSsiOp = AdamProxOp<T, true>;

template <template <typename> class Op>
static void run(int dbl, const StepParams& p, TensorDesc* d, int n) {
  if (dbl)
    emulate<double, Op<double>>(p, d, n);
  else
    emulate<float, Op<float>>(p, d, n);
}

static size_t dsize(int dt) { return dt == DT_F64 ? 8 : dt == DT_F32 ? 4 : 2; }

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: emulate DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  std::ifstream job(dir + "/job.txt");
  std::string algo;
  int dbl, n;
  StepParams p{};
  job >> algo >> dbl >> p.reg_kind >> p.lam >> p.lam2 >> p.omega >> p.exact >> p.max_iters >> p.rtol >> n;
  if (!job) {
    std::fprintf(stderr, "bad job.txt\n");
    return 2;
  }
  const int nstate = algo == "ramda"      ? 3
                     : algo == "proxsgd"  ? 1
                     : algo == "dessilbi" ? (p.reg_kind == REG_NONE ? 1 : 3)
                                          : 2;
  const bool solver = algo == "ramda" || algo == "proxgen" || algo == "proxssi";
  const size_t ts = dbl ? 8 : 4;
  std::vector<TensorDesc> d(n);
  std::vector<std::vector<char>> w(n), g(n), s(n * 3);
  for (int i = 0; i < n; ++i) {
    TensorDesc& t = d[i];
    t = TensorDesc{};
    job >> t.A >> t.G >> t.B >> t.w_dtype >> t.g_dtype;
    for (double& x : t.sc) job >> x;
    const int64_t numel = t.A * t.G * t.B;
    t.wg = std::sqrt(double(t.A * t.B));
    w[i] = read_file(dir + "/w" + std::to_string(i) + ".bin");
    g[i] = read_file(dir + "/g" + std::to_string(i) + ".bin");
    if (w[i].size() != numel * dsize(t.w_dtype) || g[i].size() != numel * dsize(t.g_dtype)) {
      std::fprintf(stderr, "tensor %d: size mismatch\n", i);
      return 2;
    }
    t.w = w[i].data();
    t.g = g[i].data();
    void** sp[3] = {&t.s0, &t.s1, &t.s2};
    for (int k = 0; k < nstate; ++k) {
      auto& buf = s[i * 3 + k];
      buf = read_file(dir + "/s" + std::to_string(k) + "_" + std::to_string(i) + ".bin");
      if (buf.size() != numel * ts) {
        std::fprintf(stderr, "tensor %d state %d: size mismatch\n", i, k);
        return 2;
      }
      *sp[k] = buf.data();
    }
  }
  int64_t ws = 0;
  p.num_items = plan_bucket(d.data(), n, p.reg_kind, solver, &ws);
  p.tensors = d.data();
  p.num_tensors = n;
  std::vector<double> work(ws > 0 ? ws : 1);  // double storage is aligned for either math dtype
  p.workspace = work.data();
  std::printf("items %lld workspace %lld paths", (long long)p.num_items, (long long)ws);
  for (int i = 0; i < n; ++i) std::printf(" %d", d[i].path);
  std::printf("\n");
  if (algo == "rmda")
    run<RmdaOp>(dbl, p, d.data(), n);
  else if (algo == "proxsgd")
    run<ProxSgdOp>(dbl, p, d.data(), n);
  else if (algo == "ramda")
    run<RamdaOp>(dbl, p, d.data(), n);
  else if (algo == "proxgen")
    run<ProxGenOp>(dbl, p, d.data(), n);
  else if (algo == "proxssi")
    run<ProxSsiOp>(dbl, p, d.data(), n);
  else if (algo == "dessilbi")
    run<DessiLbiOp>(dbl, p, d.data(), n);
  else {
    std::fprintf(stderr, "unknown algo %s\n", algo.c_str());
    return 2;
  }
  for (int i = 0; i < n; ++i) {
    write_file(dir + "/w" + std::to_string(i) + ".bin", w[i]);
    for (int k = 0; k < nstate; ++k)
      write_file(dir + "/s" + std::to_string(k) + "_" + std::to_string(i) + ".bin", s[i * 3 + k]);
  }
  return 0;
}
