// Tile kernels compiled for AVX-512 (F, BW, VL, DQ) (chosen at run time when the CPU supports it).
#include <cmath>
#include <cstdint>
#include <cstring>
#define SS_ISA isa_avx512
#define SS_ISA_NAME "avx512"
#define SS_TABLE_FN kernels_avx512
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#endif
#include "kernels_impl.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
#include "kernels_impl.h"
#endif
