// Tile kernels compiled for the baseline instruction set of the build (SSE2 on x86-64).
#define SS_ISA isa_default
#define SS_ISA_NAME "default"
#define SS_TABLE_FN kernels_default
#include "kernels_impl.h"
