// Whether a strided tensor may hold two elements at one memory location (an expanded or an
// overlapping as_strided view). A step writes the parameter in place: through such an alias it
// would write one element several times, so the ops reject these parameters. Plain C++ on the
// sizes and strides (no torch headers): shared by the CPU and the CUDA glue.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace structsparse {

// Sufficient test of no overlap, O(nd log nd): the dimensions of size > 1 sorted by stride, each
// stride must exceed the extent spanned by the smaller ones. True (may overlap) for a zero stride
// and for the rare non-overlapping layouts the test cannot prove (interleaved as_strided views).
inline bool may_overlap(int64_t nd, const int64_t* sizes, const int64_t* strides) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size)
  for (int64_t d = 0; d < nd; ++d)
    if (sizes[d] > 1) dims.emplace_back(strides[d] < 0 ? -strides[d] : strides[d], sizes[d]);
  std::sort(dims.begin(), dims.end());
  int64_t extent = 0;  // largest offset reachable with the smaller strides
  for (const auto& sd : dims) {
    if (sd.first <= extent) return true;
    extent += sd.first * (sd.second - 1);
  }
  return false;
}

}  // namespace structsparse
