// CPU implementations of the structsparse ops (schemas in csrc/library.cpp, registered for the CPU
// dispatch key in csrc/cpu/ops.cpp).
//
// One call per bucket of tensors. Each tensor, viewed as [A, G, B] (docs/math.md §1), is cut into tiles
// of whole groups whose size depends only on (A, G, B), never on the thread count; the tiles of
// all tensors run under at::parallel_for (streamed prox jobs a chunk of about 2^17 elements at a
// time, see run_jobs_t). Every tile is computed by one thread in a fixed order, so results are
// bit-identical for any torch.set_num_threads.
//
// State tensors are contiguous and of the math dtype (fp32 for fp16/bf16 parameters). The
// parameter and gradient are used in place when contiguous and of the math dtype; otherwise the
// tile's elements are gathered into a per-thread buffer (strided / channels_last tensors,
// fp16/bf16 rounding) and the parameter is scattered back: buffers are per tile, never per model.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/Version.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "structsparse/math.h"
#include "structsparse/overlap.h"
#include "steps.h"
#include "tile.h"

namespace structsparse {
namespace cpu {

// ---------------------------------------------------------------------------------------------
// Instruction set of the tile kernels: the best of the compiled variants that ATen reports for
// this CPU (ATen honours ATEN_CPU_CAPABILITY); STRUCTSPARSE_CPU_ISA=default|avx2|avx512 overrides.
// ---------------------------------------------------------------------------------------------
static KernelTable select_kernels() {
  std::string want;
  if (const char* env = std::getenv("STRUCTSPARSE_CPU_ISA")) want = env;
  if (want.empty()) {
#if defined(__x86_64__) || defined(_M_X64)
    const std::string cap = at::get_cpu_capability();  // "AVX512", "AVX2", "DEFAULT", ...
    if (cap.rfind("AVX512", 0) == 0)
      want = "avx512";
    else if (cap == "AVX2")
      want = "avx2";
    else
      want = "default";
#else
    want = "default";
#endif
  }
#if defined(__x86_64__) || defined(_M_X64)
  if (want == "avx512") return kernels_avx512();
  if (want == "avx2") return kernels_avx2();
#endif
  TORCH_CHECK(want == "default" || want == "avx2" || want == "avx512",
              "STRUCTSPARSE_CPU_ISA: expected default, avx2 or avx512, got ", want);
  return kernels_default();
}

static const KernelTable& kernels() {
  static const KernelTable table = select_kernels();
  return table;
}

std::string cpu_isa() {
  return kernels().isa;
}

// ---------------------------------------------------------------------------------------------
// Gather / scatter of one tile row of a non-contiguous or low-precision tensor
// ---------------------------------------------------------------------------------------------
namespace {

template <typename S, typename T, bool LOAD>
void strided_rows(const at::Tensor& x, int64_t flat, int64_t cnt, T* buf) {
  S* base = static_cast<S*>(x.data_ptr());
  if (x.is_contiguous()) {
    S* p = base + flat;
    if (LOAD)
      for (int64_t i = 0; i < cnt; ++i) buf[i] = static_cast<T>(p[i]);
    else
      for (int64_t i = 0; i < cnt; ++i) p[i] = static_cast<S>(buf[i]);
    return;
  }
  const int64_t nd = x.dim();
  auto sizes = x.sizes();
  auto strides = x.strides();
  // the index of the current element, one entry per dimension (any rank)
  c10::SmallVector<int64_t, 8> idx(nd);
  int64_t off = 0, rem = flat;
  for (int64_t d = nd - 1; d >= 0; --d) {
    idx[d] = rem % sizes[d];
    rem /= sizes[d];
    off += idx[d] * strides[d];
  }
  const int64_t last = nd - 1, ls = strides[last], lsz = sizes[last];
  int64_t i = 0;
  while (i < cnt) {
    int64_t run = std::min(cnt - i, lsz - idx[last]);
    S* p = base + off;
    if (LOAD)
      for (int64_t r = 0; r < run; ++r) buf[i + r] = static_cast<T>(p[r * ls]);
    else
      for (int64_t r = 0; r < run; ++r) p[r * ls] = static_cast<S>(buf[i + r]);
    i += run;
    off += run * ls;
    idx[last] += run;
    for (int64_t d = last; d > 0 && idx[d] == sizes[d]; --d) {  // carry
      off -= idx[d] * strides[d];
      idx[d] = 0;
      idx[d - 1] += 1;
      off += strides[d - 1];
    }
  }
}

template <typename T, bool LOAD>
void move_rows(const at::Tensor& x, int64_t flat, int64_t cnt, T* buf) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return strided_rows<float, T, LOAD>(x, flat, cnt, buf);
    case at::kDouble:
      return strided_rows<double, T, LOAD>(x, flat, cnt, buf);
    case at::kBFloat16:
      return strided_rows<c10::BFloat16, T, LOAD>(x, flat, cnt, buf);
    case at::kHalf:
      return strided_rows<c10::Half, T, LOAD>(x, flat, cnt, buf);
    default:
      TORCH_CHECK(false, "structsparse: unsupported dtype ", x.scalar_type());
  }
}

struct Job {
  at::Tensor p, g;
  void* s[3];
  int64_t A, G, B, tg;
  bool wide;  // wide tiles (groups_per_tile)
  bool p_direct, g_direct;
  double sc[8];
  double wg;
};

// A tile: groups [j0, j0 + ng) of rows [a0, a0 + na) (na = A except for streamed jobs).
// pass: 0 one-pass tile, 1/2 the passes of a streamed job (see TileArgs::mode); rb: row block.
struct TileRef {
  int64_t job, j0, ng;
  int64_t a0 = 0, na = -1, rb = 0;
  int pass = 0;
};

// Streaming layout of a prox job with A > 1 (many rows): row blocks of >= kRowsMin rows (at most
// 64 blocks) × column blocks of whole groups, as few as rows of <= kColMin contiguous elements
// allow, of equal widths (no short remainder block: its short row segments are slow). Depends on
// (A, G, B) only.
struct StreamLayout {
  int64_t nrb, rows, cb;
};
// Work is run in chunks of about kChunkElems elements, at least one column block of all rows of a
// job (see run_jobs_t): pass 2 then re-reads its chunk from cache; 2^17 measured best among
// 2^16..2^20 (docs/performance.md).
constexpr int64_t kChunkElems = int64_t(1) << 17;
// Streaming layout: row blocks of >= kRowsMin rows, column blocks of about kColMin elements
// (whole rows for every ResNet50 layer). Both measured best among their neighbours
// (docs/performance.md); fewer row blocks mean fewer tiles per chunk for many threads.
constexpr int64_t kRowsMin = 64;
constexpr int64_t kColMin = 8192;
// Width of the blocks that cut n items into as many blocks of at most `width` as needed, of
// equal widths (no short remainder block).
int64_t even_width(int64_t n, int64_t width) {
  const int64_t nb = (n + width - 1) / width;
  return nb > 1 ? (n + nb - 1) / nb : width;
}
StreamLayout stream_layout(int64_t A, int64_t G, int64_t B) {
  StreamLayout L;
  L.nrb = std::min<int64_t>(64, (A + kRowsMin - 1) / kRowsMin);
  L.rows = (A + L.nrb - 1) / L.nrb;
  L.nrb = (A + L.rows - 1) / L.rows;
  L.cb = even_width(G, std::min<int64_t>(G, std::max<int64_t>(1, kColMin / std::max<int64_t>(B, 1))));
  return L;
}

// Tiles of whole groups (solver kernels, and prox kernels on tensors that are not streamed). Rows
// of a tile with A > 1 are strided segments of ng·B elements; the exact solves (RAMDA/ProxGen
// "exact", ProxSSI) run a few passes over the tile, so they take wide tiles whose rows are long
// enough for the hardware prefetchers (>= 8192 elements, so whole rows of most weights, and a
// tile is then one contiguous block; <= 2^21 elements a tile, the groups split evenly between
// the tiles of a tensor; the one-pass tiles run largest first). Narrower tiles, a larger cap and
// uneven splits measured slower or no faster (docs/performance.md). The scratch of a wide float
// tile is 3 tiles, 24 MiB per thread at the cap. The PG solvers iterate tens of times over a tile
// and keep small, cache-resident tiles (wide tiles measured slower). The tile size never changes
// a result: every group is computed on its own, with sums over the rows in row order.
int64_t groups_per_tile(int64_t A, int64_t G, int64_t B, bool wide) {
  const int64_t n = A * B;
  const int64_t target = 8192;  // solver tiles: 4096..32768 measured alike
  const int64_t cap = wide ? (int64_t(1) << 21) : 98304, row_min = wide ? 8192 : 64;
  int64_t tg = std::max<int64_t>(1, target / n);
  if (A > 1) tg = std::max<int64_t>(tg, (row_min + B - 1) / B);  // rows of >= row_min elements
  if (tg * n > cap) tg = std::max<int64_t>(1, cap / n);
  tg = std::min(tg, G);
  return wide ? even_width(G, tg) : tg;  // wide: as many tiles as the cap needs, of equal widths
}

struct Common {
  int reg_kind = REG_NONE;
  double lam = 0, lam2 = 0, omega = 1;
  int exact = 0;
  int64_t max_iters = 0;
  double rtol = 0;
  // the kernel's pass 1 already writes the parameter (DessiLBI's W update); a gathered parameter
  // must then be scattered back after pass 1 too
  bool w_pass1 = false;
};

// A sharded step (FSDP2, structsparse/distributed.py) of a streamed prox kernel. A tensor whose
// groups are split across ranks (split[i] != 0: its local view [A_loc, G, B] holds a slice of
// every group's rows) needs the global group sums before its prox:
//   phase 1: pass 1 of the split tensors (state update, per-group partial sums of this rank);
//            their sums go to `sums` (float64, G per split tensor, in bucket order);
//   (the caller all-reduces `sums` over the ranks)
//   phase 2: pass 2 of the split tensors from the global sums, then the whole step of the other
//            tensors. Group weights come from the global shapes (wgs, one per tensor).
struct Shard {
  int phase = 0;
  const int64_t* split = nullptr;
  double* sums = nullptr;
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

void set_solver(Common& cm, c10::string_view solver, int64_t max_iters, double rtol) {
  TORCH_CHECK(solver == "pg" || solver == "exact", "structsparse: solver must be 'pg' or 'exact', got '",
              std::string(solver), "'");
  cm.exact = solver == "exact";
  TORCH_CHECK(max_iters >= 0, "structsparse: max_iters must be >= 0");
  cm.max_iters = max_iters;
  cm.rtol = rtol;
}

// The exact (sparse) group-LASSO solves take wide tiles (groups_per_tile); the other exact solves
// run through solve_tile's unfused path, whose scratch (3 tiles and the Newton scratch) is that of
// the solver tiles.
bool wide_tiles(const Common& cm) {
  return cm.exact != 0 && (cm.reg_kind == REG_GROUP_LASSO || cm.reg_kind == REG_SPARSE_GROUP_LASSO);
}

// Validates a bucket and builds its jobs; `scal(i, sc)` fills the per-tensor scalars.
template <typename Scal>
std::vector<Job> make_jobs(const char* op, at::TensorList params, at::TensorList grads,
                           std::vector<at::TensorList> states, at::IntArrayRef views, Scal scal,
                           bool wide_tiles = false) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n, op, ": got ", n, " params but ", grads.size(), " grads");
  for (auto& st : states) TORCH_CHECK(st.size() == n, op, ": state list of length ", st.size(), " for ", n, " params");
  TORCH_CHECK(views.size() == 3 * n, op, ": views must hold 3 sizes [A, G, B] per tensor");
  std::vector<Job> jobs;
  jobs.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    TORCH_CHECK(p.device().is_cpu(), op, ": params[", i, "] is not a CPU tensor");
    TORCH_CHECK(g.device().is_cpu() && g.sizes() == p.sizes(), op, ": grads[", i, "] must be a CPU tensor of shape ",
                p.sizes());
    // contiguous tensors (nearly every parameter) cannot overlap: the test runs on the others only
    TORCH_CHECK_VALUE(p.is_contiguous() || !may_overlap(p.dim(), p.sizes().data(), p.strides().data()), op,
                ": params[", i, "] (shape ", p.sizes(), ", strides ", p.strides(),
                ") may hold several elements at one memory location (an expanded or overlapping view): the step "
                "writes it in place; pass a parameter that owns its memory (e.g. .clone())");
    const auto pt = p.scalar_type();
    TORCH_CHECK(pt == at::kFloat || pt == at::kDouble || pt == at::kBFloat16 || pt == at::kHalf, op, ": params[", i,
                "] has unsupported dtype ", pt);
    const auto acc = pt == at::kDouble ? at::kDouble : at::kFloat;
    Job j;
    for (size_t k = 0; k < 3; ++k) j.s[k] = nullptr;
    for (size_t k = 0; k < states.size(); ++k) {
      const at::Tensor& s = states[k][i];
      TORCH_CHECK(s.device().is_cpu() && s.is_contiguous() && s.scalar_type() == acc && s.numel() == p.numel(), op,
                  ": state tensor ", k, " of params[", i, "] must be a contiguous ", acc, " CPU tensor with ",
                  p.numel(), " elements");
      j.s[k] = s.data_ptr();
    }
    j.A = views[3 * i];
    j.G = views[3 * i + 1];
    j.B = views[3 * i + 2];
    TORCH_CHECK(j.A >= 0 && j.G >= 0 && j.B >= 0 && j.A * j.G * j.B == p.numel(), op, ": views of params[", i,
                "] do not match its ", p.numel(), " elements");
    j.p = p;
    j.g = g;
    j.p_direct = p.is_contiguous() && pt == acc;
    j.g_direct = g.is_contiguous() && g.scalar_type() == acc;
    j.wide = wide_tiles;
    j.tg = p.numel() == 0 ? 0 : groups_per_tile(j.A, j.G, j.B, wide_tiles);
    j.wg = std::sqrt(static_cast<double>(j.A * j.B));
    for (double& x : j.sc) x = 0;
    scal(i, j.sc);
    jobs.push_back(std::move(j));
  }
  return jobs;
}

template <typename T>
void run_tile(const Job& jb, const TileRef& tr, const Common& cm, TileFn fn, std::vector<T>& scr,
              std::vector<T>& wbuf, std::vector<T>& gbuf, double* gsum) {
  const int64_t A = tr.na < 0 ? jb.A : tr.na, ng = tr.ng, B = jb.B, GB = jb.G * jb.B, row = ng * B;
  const int64_t off = tr.a0 * GB + tr.j0 * B;
  // the buffers are sized by the caller (run_jobs_t: every worker, for the list's largest tile)
  TORCH_INTERNAL_ASSERT_DEBUG_ONLY(scr.size() >= static_cast<size_t>(scratch_elems(A, ng, B, jb.wide)));
  TileArgs ta;
  ta.A = A;
  ta.ng = ng;
  ta.B = B;
  ta.s0 = jb.s[0] ? static_cast<T*>(jb.s[0]) + off : nullptr;
  ta.s1 = jb.s[1] ? static_cast<T*>(jb.s[1]) + off : nullptr;
  ta.s2 = jb.s[2] ? static_cast<T*>(jb.s[2]) + off : nullptr;
  ta.s_rs = GB;
  if (jb.p_direct) {
    ta.w = static_cast<T*>(jb.p.data_ptr()) + off;
    ta.w_rs = GB;
  } else {
    TORCH_INTERNAL_ASSERT_DEBUG_ONLY(wbuf.size() >= static_cast<size_t>(A * row));
    for (int64_t a = 0; a < A; ++a) move_rows<T, true>(jb.p, a * GB + off, row, wbuf.data() + a * row);
    ta.w = wbuf.data();
    ta.w_rs = row;
  }
  if (jb.g_direct) {
    ta.g = static_cast<const T*>(jb.g.data_ptr()) + off;
    ta.g_rs = GB;
  } else {
    TORCH_INTERNAL_ASSERT_DEBUG_ONLY(gbuf.size() >= static_cast<size_t>(A * row));
    for (int64_t a = 0; a < A; ++a) move_rows<T, true>(jb.g, a * GB + off, row, gbuf.data() + a * row);
    ta.g = gbuf.data();
    ta.g_rs = row;
  }
  for (int k = 0; k < 8; ++k) ta.sc[k] = jb.sc[k];
  ta.reg_kind = cm.reg_kind;
  ta.lam = cm.lam;
  ta.lam2 = cm.lam2;
  ta.omega = cm.omega;
  ta.wg = jb.wg;
  ta.exact = cm.exact;
  ta.wide = jb.wide;
  ta.max_iters = cm.max_iters;
  ta.rtol = cm.rtol;
  ta.scratch = scr.data();
  ta.mode = tr.pass;
  ta.gsum = gsum;
  fn(ta);
  if (!jb.p_direct && (tr.pass != 1 || cm.w_pass1))
    for (int64_t a = 0; a < A; ++a) move_rows<T, false>(jb.p, a * GB + off, row, wbuf.data() + a * row);
}

template <typename T>
std::vector<T>& tls_buffer(int which) {
  thread_local std::vector<T> bufs[3];
  return bufs[which];
}

// stream: the kernels are prox kernels (RMDA, ProxSGD, DessiLBI) that support the two-pass mode;
// jobs with A > 1 and a regularizer then stream rows in memory order (long contiguous segments)
// instead of tiles of all A rows × a few groups (short strided segments, TLB/prefetch hostile).
// Pass 2 re-reads what pass 1 wrote, so the work is cut into chunks of about kChunkElems elements
// (whole jobs, or column-block ranges of a large job): pass 1 of a chunk, its partial sums
// combined, then its pass 2 while the chunk's state is still in cache. Chunks depend on the shapes
// only, so results stay independent of the thread count.
// Pass 2 of a tile runs on the worker that ran its pass 1 (see run's `owner`), each worker's tiles
// in reverse order (the most recently touched first): the tile's lines are then in that core's
// L2 or the L3 it last filled, not in the other core's L2. Handed out afresh, a pass-2 tile ran
// on the other core about half the time (ProxSGD gains most; docs/performance.md).

template <typename T>
void run_jobs_t(const std::vector<Job>& jobs, const Common& cm, TileFn fn, bool stream, const Shard* sh) {
  // jobs whose groups are split across ranks (sharded steps: phases 1 and 2 below)
  auto split = [&](size_t i) { return sh != nullptr && sh->split[i] != 0 && cm.reg_kind != REG_NONE; };
  std::vector<int64_t> goff(jobs.size() + 1, 0);  // offsets of the jobs' partial sums [nrb][G]
  std::vector<StreamLayout> lay(jobs.size());
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Job& jb = jobs[i];
    goff[i + 1] = goff[i];
    if (jb.p.numel() && (split(i) || (stream && jb.A > 1 && cm.reg_kind != REG_NONE))) {
      lay[i] = stream_layout(jb.A, jb.G, jb.B);
      goff[i + 1] = goff[i] + lay[i].nrb * jb.G;
    }
  }
  // per-row-block group sums, bounded by numel/(16·B). A thread_local of the calling thread: the
  // workers must use this pointer (a thread_local named inside the lambda would be their own).
  thread_local std::vector<double> partial_buf;
  if (partial_buf.size() < static_cast<size_t>(goff.back())) partial_buf.resize(goff.back());
  double* const partial = partial_buf.data();
  auto gsum_of = [&](const TileRef& tr) -> double* {
    if (tr.pass == 0) return nullptr;
    const Job& jb = jobs[tr.job];
    // pass 1 writes row block rb's partial; pass 2 reads the totals kept in row block 0
    return partial + goff[tr.job] + (tr.pass == 1 ? tr.rb * jb.G : 0) + tr.j0;
  };
  // Tiles are handed out dynamically (an atomic counter): tiles cost unequal work (screened groups,
  // PG iteration counts), and which thread computes a tile never changes its result. keep = 1
  // records each tile's worker in `owner`; keep = 2 runs a list of the same tiles (pass 2 of the
  // pass-1 list) on those workers instead, each worker's tiles last first. A worker is the range
  // [b, e) at::parallel_for hands out: the same partition of [0, workers) in both calls, so every
  // tile is run exactly once (one range [0, workers) when the loop runs inline).
  std::vector<int64_t> owner;
  auto run = [&](const std::vector<TileRef>& list, int keep = 0) {
    const int64_t n = static_cast<int64_t>(list.size());
    if (n == 0) return;
    std::atomic<int64_t> next{0};
    const int64_t workers = std::min<int64_t>(at::get_num_threads(), n);
    // Every worker sizes its buffers for the largest tile of the list up front: which worker gets
    // which tile varies from step to step, and a buffer first grown in a later step would show as
    // growth of the peak RSS (24 MiB of a wide exact tile, measured). Buffers only grow.
    size_t need[3] = {0, 0, 0};
    for (const TileRef& tr : list) {
      const Job& jb = jobs[tr.job];
      const int64_t A = tr.na < 0 ? jb.A : tr.na, elems = A * tr.ng * jb.B;
      need[0] = std::max(need[0], static_cast<size_t>(scratch_elems(A, tr.ng, jb.B, jb.wide)));
      if (!jb.p_direct) need[1] = std::max(need[1], static_cast<size_t>(elems));
      if (!jb.g_direct) need[2] = std::max(need[2], static_cast<size_t>(elems));
    }
    if (keep == 1) owner.assign(n, 0);
    TORCH_INTERNAL_ASSERT(keep != 2 || static_cast<int64_t>(owner.size()) == n);
    at::parallel_for(0, workers, 1, [&](int64_t b, int64_t e) {
      for (int k = 0; k < 3; ++k)
        if (tls_buffer<T>(k).size() < need[k]) tls_buffer<T>(k).resize(need[k]);
      auto one = [&](int64_t t) {
        const TileRef& tr = list[t];
        run_tile<T>(jobs[tr.job], tr, cm, fn, tls_buffer<T>(0), tls_buffer<T>(1), tls_buffer<T>(2), gsum_of(tr));
      };
      if (keep == 2) {
        for (int64_t t = n - 1; t >= 0; --t)
          if (owner[t] >= b && owner[t] < e) one(t);
        return;
      }
      for (int64_t t = next.fetch_add(1); t < n; t = next.fetch_add(1)) {
        one(t);
        if (keep == 1) owner[t] = b;
      }
    });
  };
  struct Part {
    size_t job;
    int64_t j0, j1;  // groups of a streamed job whose partial sums are combined
  };
  std::vector<TileRef> p0, p1, p2;  // p0: one-pass tiles (independent: run together at the end)
  std::vector<Part> parts;
  int64_t filled = 0;
  if (sh != nullptr) {
    // Sharded step (see Shard): phase 1 runs pass 1 of the split jobs only and returns their
    // per-group sums; phase 2 takes the all-reduced sums, runs pass 2 of the split jobs, then
    // everything of the other jobs (whole groups on this rank) as in a plain call.
    int64_t so = 0;
    for (size_t i = 0; i < jobs.size(); ++i) {
      if (!split(i)) continue;
      const Job& jb = jobs[i];
      double* base = partial + goff[i];
      if (sh->phase == 2 && jb.p.numel())
        for (int64_t j = 0; j < jb.G; ++j) base[j] = sh->sums[so + j];
      if (jb.p.numel()) {
        const StreamLayout& L = lay[i];
        for (int64_t rb = 0; rb < L.nrb; ++rb)
          for (int64_t j0 = 0; j0 < jb.G; j0 += L.cb) {
            TileRef tr{static_cast<int64_t>(i), j0, std::min(L.cb, jb.G - j0)};
            tr.a0 = rb * L.rows;
            tr.na = std::min(L.rows, jb.A - tr.a0);
            tr.rb = rb;
            tr.pass = sh->phase;
            (sh->phase == 1 ? p1 : p2).push_back(tr);
          }
      }
      so += jb.G;
    }
    if (sh->phase == 1) {
      run(p1);
      so = 0;
      for (size_t i = 0; i < jobs.size(); ++i) {
        if (!split(i)) continue;
        const Job& jb = jobs[i];
        double* out = sh->sums + so;
        so += jb.G;
        if (jb.p.numel() == 0) {
          for (int64_t j = 0; j < jb.G; ++j) out[j] = 0.0;
          continue;
        }
        const double* base = partial + goff[i];
        for (int64_t j = 0; j < jb.G; ++j) {  // row blocks combined in a fixed order
          double acc = base[j];
          for (int64_t rb = 1; rb < lay[i].nrb; ++rb) acc += base[rb * jb.G + j];
          out[j] = acc;
        }
      }
      return;
    }
    run(p2);
    p2.clear();
  }
  auto flush = [&]() {
    if (!p1.empty()) run(p1, 1);
    // totals per group, row blocks combined in a fixed order (deterministic for any thread count)
    for (const Part& pt : parts) {
      const int64_t G = jobs[pt.job].G, nrb = lay[pt.job].nrb;
      double* base = partial + goff[pt.job];
      for (int64_t rb = 1; rb < nrb; ++rb)
        for (int64_t j = pt.j0; j < pt.j1; ++j) base[j] += base[rb * G + j];
    }
    if (!p2.empty()) run(p2, 2);  // p2 holds p1's tiles
    p1.clear();
    p2.clear();
    parts.clear();
    filled = 0;
  };
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Job& jb = jobs[i];
    if (jb.p.numel() == 0 || split(i)) continue;
    if (goff[i + 1] > goff[i]) {
      const StreamLayout& L = lay[i];
      const int64_t col = jb.A * jb.B;  // elements per group
      int64_t span = std::max<int64_t>(1, kChunkElems / std::max<int64_t>(col * L.cb, 1)) * L.cb;
      for (int64_t g0 = 0; g0 < jb.G; g0 += span) {
        const int64_t g1 = std::min(jb.G, g0 + span);
        for (int64_t rb = 0; rb < L.nrb; ++rb)
          for (int64_t j0 = g0; j0 < g1; j0 += L.cb) {
            TileRef tr{static_cast<int64_t>(i), j0, std::min(L.cb, g1 - j0)};
            tr.a0 = rb * L.rows;
            tr.na = std::min(L.rows, jb.A - tr.a0);
            tr.rb = rb;
            tr.pass = 1;
            p1.push_back(tr);
            tr.pass = 2;
            p2.push_back(tr);
          }
        parts.push_back(Part{i, g0, g1});
        filled += (g1 - g0) * col;
        if (filled >= kChunkElems) flush();
      }
      continue;
    }
    for (int64_t j0 = 0; j0 < jb.G; j0 += jb.tg)
      p0.push_back(TileRef{static_cast<int64_t>(i), j0, std::min(jb.tg, jb.G - j0)});
  }
  flush();
  // One-pass tiles largest first: a thread left with a large tile at the end of the list idles the
  // others (the ResNet50 weights grow towards the last layers). Results do not depend on the order.
  std::stable_sort(p0.begin(), p0.end(), [&](const TileRef& a, const TileRef& b) {
    return jobs[a.job].A * a.ng * jobs[a.job].B > jobs[b.job].A * b.ng * jobs[b.job].B;
  });
  run(p0);
}

void run_jobs(const std::vector<Job>& jobs, const Common& cm, const TileFn* fns, bool stream = false,
              const Shard* sh = nullptr) {
  if (jobs.empty()) return;
  const bool dbl = jobs[0].p.scalar_type() == at::kDouble;
  for (const Job& jb : jobs)
    TORCH_CHECK((jb.p.scalar_type() == at::kDouble) == dbl,
                "structsparse: a bucket must not mix float64 with other parameter dtypes");
  if (dbl)
    run_jobs_t<double>(jobs, cm, fns[1], stream, sh);
  else
    run_jobs_t<float>(jobs, cm, fns[0], stream, sh);
}

// Arguments of a *_sharded op (see Shard).
struct ShardArgs {
  at::IntArrayRef split;
  at::ArrayRef<double> group_weights;
  int64_t phase;
  at::Tensor sums;
};

// Validates a sharded call against its jobs, sets the global group weights; nullptr for a plain call.
const Shard* prepare_shard(const char* op, std::vector<Job>& jobs, const ShardArgs* sa, Shard& sh) {
  if (sa == nullptr) return nullptr;
  const size_t n = jobs.size();
  TORCH_CHECK(sa->phase == 1 || sa->phase == 2, op, ": phase must be 1 or 2, got ", sa->phase);
  TORCH_CHECK(sa->split.size() == n && sa->group_weights.size() == n, op,
              ": split and group_weights need one value per param");
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(sa->group_weights[i] > 0, op, ": group_weights[", i, "] must be > 0");
    jobs[i].wg = sa->group_weights[i];
    if (sa->split[i]) total += jobs[i].G;
  }
  const at::Tensor& s = sa->sums;
  TORCH_CHECK(s.device().is_cpu() && s.scalar_type() == at::kDouble && s.is_contiguous() && s.numel() == total, op,
              ": sums must be a contiguous float64 CPU tensor of ", total, " elements (G per split param)");
  sh.phase = static_cast<int>(sa->phase);
  sh.split = sa->split.data();
  sh.sums = static_cast<double*>(s.data_ptr());
  return &sh;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Ops
// ---------------------------------------------------------------------------------------------

static void rmda_impl(at::TensorList params, at::TensorList grads, at::TensorList anchors, at::TensorList grad_sums,
                      at::IntArrayRef steps, at::ArrayRef<double> alphas, at::IntArrayRef views, double lr, double c,
                      c10::string_view reg, at::ArrayRef<double> reg_params, const ShardArgs* sa) {
  TORCH_CHECK(steps.size() == params.size() && alphas.size() == params.size(),
              "rmda_step: steps and alphas need one value per param");
  Common cm;
  set_reg(cm, reg, reg_params);
  auto jobs = make_jobs("rmda_step", params, grads, {anchors, grad_sums}, views, [&](size_t i, double* sc) {
    const double sqt = std::sqrt(static_cast<double>(steps[i]));
    sc[0] = lr * sqt;
    sc[1] = sqt;
    sc[2] = c;
    sc[3] = alphas[i] / sqt;
  });
  Shard sh;
  run_jobs(jobs, cm, kernels().rmda, true, prepare_shard("rmda_step_sharded", jobs, sa, sh));
}

void rmda_step(at::TensorList params, at::TensorList grads, at::TensorList anchors, at::TensorList grad_sums,
               at::IntArrayRef steps, at::ArrayRef<double> alphas, at::IntArrayRef views, double lr, double c,
               c10::string_view reg, at::ArrayRef<double> reg_params) {
  rmda_impl(params, grads, anchors, grad_sums, steps, alphas, views, lr, c, reg, reg_params, nullptr);
}

void rmda_step_sharded(at::TensorList params, at::TensorList grads, at::TensorList anchors, at::TensorList grad_sums,
                       at::IntArrayRef steps, at::ArrayRef<double> alphas, at::IntArrayRef views, double lr, double c,
                       c10::string_view reg, at::ArrayRef<double> reg_params, at::IntArrayRef split,
                       at::ArrayRef<double> group_weights, int64_t phase, at::Tensor sums) {
  ShardArgs sa{split, group_weights, phase, sums};
  rmda_impl(params, grads, anchors, grad_sums, steps, alphas, views, lr, c, reg, reg_params, &sa);
}

void ramda_step(at::TensorList params, at::TensorList grads, at::TensorList anchors, at::TensorList grad_sums,
                at::TensorList sq_grad_sums, at::IntArrayRef steps, at::ArrayRef<double> alphas,
                at::IntArrayRef views, double lr, double c, double eps, c10::string_view reg,
                at::ArrayRef<double> reg_params, c10::string_view solver, int64_t max_iters, double rtol) {
  TORCH_CHECK(steps.size() == params.size() && alphas.size() == params.size(),
              "ramda_step: steps and alphas need one value per param");
  Common cm;
  set_reg(cm, reg, reg_params);
  set_solver(cm, solver, max_iters, rtol);
  auto jobs = make_jobs("ramda_step", params, grads, {anchors, grad_sums, sq_grad_sums}, views,
                        [&](size_t i, double* sc) {
                          sc[0] = lr * std::sqrt(static_cast<double>(steps[i]));
                          sc[1] = c;
                          sc[2] = eps;
                          sc[3] = alphas[i];
                        },
                        wide_tiles(cm));
  run_jobs(jobs, cm, kernels().ramda);
}

static void proxsgd_impl(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                         at::IntArrayRef views, double lr, double c, c10::string_view reg,
                         at::ArrayRef<double> reg_params, const ShardArgs* sa) {
  Common cm;
  set_reg(cm, reg, reg_params);
  auto jobs = make_jobs("proxsgd_step", params, grads, {momentum_buffers}, views, [&](size_t, double* sc) {
    sc[0] = lr;
    sc[1] = c;
  });
  Shard sh;
  run_jobs(jobs, cm, kernels().proxsgd, true, prepare_shard("proxsgd_step_sharded", jobs, sa, sh));
}

void proxsgd_step(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                  at::IntArrayRef views, double lr, double c, c10::string_view reg, at::ArrayRef<double> reg_params) {
  proxsgd_impl(params, grads, momentum_buffers, views, lr, c, reg, reg_params, nullptr);
}

void proxsgd_step_sharded(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                          at::IntArrayRef views, double lr, double c, c10::string_view reg,
                          at::ArrayRef<double> reg_params, at::IntArrayRef split, at::ArrayRef<double> group_weights,
                          int64_t phase, at::Tensor sums) {
  ShardArgs sa{split, group_weights, phase, sums};
  proxsgd_impl(params, grads, momentum_buffers, views, lr, c, reg, reg_params, &sa);
}

static void adam_prox(const char* op, const TileFn* fns, at::TensorList params, at::TensorList grads,
                      at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::IntArrayRef steps,
                      at::IntArrayRef views, double lr, double beta1, double beta2, double eps, double weight_decay,
                      const Common& cm) {
  TORCH_CHECK(steps.size() == params.size(), op, ": steps needs one value per param");
  auto jobs = make_jobs(op, params, grads, {exp_avgs, exp_avg_sqs}, views, [&](size_t i, double* sc) {
    const double t = static_cast<double>(steps[i]);
    sc[0] = lr;
    sc[1] = beta1;
    sc[2] = beta2;
    sc[3] = eps;
    sc[4] = weight_decay;
    sc[5] = 1.0 - std::pow(beta1, t);
    sc[6] = 1.0 - std::pow(beta2, t);
  }, wide_tiles(cm));
  run_jobs(jobs, cm, fns);
}

void proxgen_step(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                  at::IntArrayRef steps, at::IntArrayRef views, double lr, double beta1, double beta2, double eps,
                  double weight_decay, c10::string_view reg, at::ArrayRef<double> reg_params,
                  c10::string_view solver, int64_t max_iters, double rtol) {
  Common cm;
  set_reg(cm, reg, reg_params);
  set_solver(cm, solver, max_iters, rtol);
  adam_prox("proxgen_step", kernels().proxgen, params, grads, exp_avgs, exp_avg_sqs, steps, views, lr, beta1, beta2,
            eps, weight_decay, cm);
}

void proxssi_step(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                  at::IntArrayRef steps, at::IntArrayRef views, double lr, double beta1, double beta2, double eps,
                  double weight_decay, c10::string_view reg, at::ArrayRef<double> reg_params) {
  Common cm;
  set_reg(cm, reg, reg_params);
  cm.exact = 1;
  adam_prox("proxssi_step", kernels().proxssi, params, grads, exp_avgs, exp_avg_sqs, steps, views, lr, beta1, beta2,
            eps, weight_decay, cm);
}

static void dessilbi_impl(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                          at::TensorList zs, at::TensorList gammas, at::IntArrayRef views, double lr, double kappa,
                          double nu, double momentum, double weight_decay, c10::string_view reg,
                          at::ArrayRef<double> reg_params, const ShardArgs* sa) {
  Common cm;
  set_reg(cm, reg, reg_params);
  cm.w_pass1 = true;
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
  auto jobs = make_jobs("dessilbi_step", params, grads, states, views, [&](size_t, double* sc) {
    sc[0] = lr * kappa;
    sc[1] = lr * kappa * weight_decay;
    sc[2] = lr * kappa / nu;
    sc[3] = lr / nu;
    sc[4] = kappa;
    sc[5] = momentum;
  });
  Shard sh;
  run_jobs(jobs, cm, kernels().dessilbi, true, prepare_shard("dessilbi_step_sharded", jobs, sa, sh));
}

void dessilbi_step(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, at::TensorList zs,
                   at::TensorList gammas, at::IntArrayRef views, double lr, double kappa, double nu, double momentum,
                   double weight_decay, c10::string_view reg, at::ArrayRef<double> reg_params) {
  dessilbi_impl(params, grads, momentum_buffers, zs, gammas, views, lr, kappa, nu, momentum, weight_decay, reg,
                reg_params, nullptr);
}

void dessilbi_step_sharded(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                           at::TensorList zs, at::TensorList gammas, at::IntArrayRef views, double lr, double kappa,
                           double nu, double momentum, double weight_decay, c10::string_view reg,
                           at::ArrayRef<double> reg_params, at::IntArrayRef split, at::ArrayRef<double> group_weights,
                           int64_t phase, at::Tensor sums) {
  ShardArgs sa{split, group_weights, phase, sums};
  dessilbi_impl(params, grads, momentum_buffers, zs, gammas, views, lr, kappa, nu, momentum, weight_decay, reg,
                reg_params, &sa);
}

// True when every element of every tensor is finite: one vectorized read pass per chunk through
// the ISA kernels (exponent bits all ones = NaN/±Inf); replaces torch._foreach_norm(inf), which is
// several times slower on CPU.
static bool chunk_finite(const at::Tensor& t, int64_t o, int64_t n) {
  const KernelTable& k = kernels();
  switch (t.scalar_type()) {
    case at::kFloat:
      return k.finite32(static_cast<const uint32_t*>(t.const_data_ptr()) + o, n);
    case at::kDouble:
      return k.finite64(static_cast<const uint64_t*>(t.const_data_ptr()) + o, n);
    case at::kHalf:
      return k.finite16(static_cast<const uint16_t*>(t.const_data_ptr()) + o, n, 0x7C00);
    case at::kBFloat16:
      return k.finite16(static_cast<const uint16_t*>(t.const_data_ptr()) + o, n, 0x7F80);
    default:
      TORCH_CHECK(false, "all_finite: unsupported dtype ", t.scalar_type());
  }
}

bool all_finite(at::TensorList tensors) {
  std::vector<at::Tensor> ts;
  for (const auto& t : tensors) {
    TORCH_CHECK(t.device().is_cpu(), "all_finite: expected CPU tensors");
    if (t.numel()) ts.push_back(t.is_contiguous() ? t : t.contiguous());
  }
  // chunks of CH elements, numbered across the tensors: tensor i holds chunks [first[i], first[i + 1])
  constexpr int64_t CH = 1 << 16;
  std::vector<int64_t> first(ts.size() + 1, 0);
  for (size_t i = 0; i < ts.size(); ++i) first[i + 1] = first[i] + (ts[i].numel() + CH - 1) / CH;
  // Chunks are handed out dynamically: a model's tensors differ in size by orders of magnitude
  // (ResNet50's 1-element-per-channel norms against its 2.4 M-element last convolutions), so a
  // static split of the chunks by count gave one thread 61 % of ResNet50-CIFAR's bytes.
  const int64_t n = first.back();
  std::atomic<int64_t> next{0};
  std::atomic<bool> ok{true};
  at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), n), 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < n && ok.load(std::memory_order_relaxed); c = next.fetch_add(1)) {
      const size_t i = static_cast<size_t>(std::upper_bound(first.begin(), first.end(), c) - first.begin()) - 1;
      const at::Tensor& t = ts[i];
      const int64_t o = (c - first[i]) * CH, len = std::min(CH, t.numel() - o);
      if (!chunk_finite(t, o, len)) ok.store(false, std::memory_order_relaxed);
    }
  });
  return ok.load();
}

}  // namespace cpu
}  // namespace structsparse
