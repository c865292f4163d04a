// Reads float32 values from stdin, writes structsparse::cbrt_nonneg of each to stdout (float32).
// Built and driven by tests/test_math_h.py.
#include <cstdio>
#include <vector>

#include "structsparse/math.h"

int main() {
  std::vector<float> buf(1 << 16);
  size_t n;
  while ((n = std::fread(buf.data(), sizeof(float), buf.size(), stdin)) > 0) {
    for (size_t k = 0; k < n; ++k) buf[k] = structsparse::cbrt_nonneg(buf[k]);
    std::fwrite(buf.data(), sizeof(float), n, stdout);
  }
  return 0;
}
