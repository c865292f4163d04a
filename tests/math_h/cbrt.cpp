// Reads float32 values from stdin, writes structsparse::cbrt_nonneg of each to stdout (float32);
// with the argument "unscaled", cbrt_nonneg_unscaled of each u that cbrt_scales(u) says needs no
// scaling, and NaN for the others. Built and driven by tests/test_math_h.py.
#include <cstring>
#include <cstdio>
#include <vector>

#include "structsparse/math.h"

int main(int argc, char** argv) {
  const bool unscaled = argc > 1 && std::strcmp(argv[1], "unscaled") == 0;
  std::vector<float> buf(1 << 16);
  size_t n;
  while ((n = std::fread(buf.data(), sizeof(float), buf.size(), stdin)) > 0) {
    for (size_t k = 0; k < n; ++k) {
      const float u = buf[k];
      if (!unscaled)
        buf[k] = structsparse::cbrt_nonneg(u);
      else
        buf[k] = structsparse::cbrt_scales(u) ? std::nanf("") : structsparse::cbrt_nonneg_unscaled(u);
    }
    std::fwrite(buf.data(), sizeof(float), n, stdout);
  }
  return 0;
}
