// Newton's rule of the exact group-LASSO solve (math.h newton_start, newton_start_add,
// newton_terms, newton_next) on float32 groups read from stdin, in the CPU rows' arithmetic: start
// sums in float, Σ pz² and Newton's sums in double over float terms, one sum per pass.
// stdin: int64 G, int64 n, float thr, then G·n floats P and G·n floats pz (group after group).
// stdout per group: float r, int32 passes over the group's elements after the start, int32 1 when
// the first step was negative. Built and driven by tests/test_math_h.py.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "structsparse/math.h"

using namespace structsparse;

int main() {
  int64_t G, n;
  float thr;
  if (std::fread(&G, 8, 1, stdin) != 1 || std::fread(&n, 8, 1, stdin) != 1 || std::fread(&thr, 4, 1, stdin) != 1)
    return 1;
  std::vector<float> P(G * n), pz(G * n);
  if (std::fread(P.data(), 4, G * n, stdin) != size_t(G * n) || std::fread(pz.data(), 4, G * n, stdin) != size_t(G * n))
    return 1;
  const float tol = float(NEWTON_ULPS) * 1.1920929e-7f;
  for (int64_t g = 0; g < G; ++g) {
    const float* p = P.data() + g * n;
    const float* z = pz.data() + g * n;
    double s_pz = 0;
    float sy = 0, sc = 0, pm = 0;
    for (int64_t i = 0; i < n; ++i) {
      s_pz += double(z[i]) * double(z[i]);
      pm = p[i] > pm ? p[i] : pm;
      newton_start_add(p[i], z[i], sy, sc);
    }
    const float pzn = float(std::sqrt(s_pz));
    int32_t passes = 0, neg = 0;
    float r = 0;
    if (!screened(pzn, thr)) {
      r = newton_start(pzn, thr, pm, sy, sc);
      bool stop = false;
      while (!stop && passes < NEWTON_MAX_ITERS) {
        double s1 = 0, s2 = 0, s3 = 0;
        for (int64_t i = 0; i < n; ++i) {
          float t1, t2, t3;
          newton_terms(p[i], z[i], r, thr, t1, t2, t3);
          s1 += t1;
          s2 += t2;
          s3 += t3;
        }
        const float before = r;
        r = newton_next(r, s1, s2, s3, tol, stop);
        if (passes == 0) neg = r < before;
        ++passes;
      }
    }
    std::fwrite(&r, 4, 1, stdout);
    std::fwrite(&passes, 4, 1, stdout);
    std::fwrite(&neg, 4, 1, stdout);
  }
  return 0;
}
