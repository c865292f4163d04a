// Tile kernels compiled for AVX2 + FMA (chosen at run time when the CPU supports it).
#include <cmath>
#include <cstdint>
#include <cstring>
#define SS_ISA isa_avx2
#define SS_ISA_NAME "avx2"
#define SS_TABLE_FN kernels_avx2
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif
#include "kernels_impl.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
#include "kernels_impl.h"
#endif
