/* The CUDA emulator's stand-in for <cuda_runtime.h>, seen only when the plugin's .cu files
 * are compiled as host C++ for the emulator (tests/cuda_emu/emu.mk puts this directory
 * first on the include path). It defines the CUDA C++ language extensions the kernels use
 * on top of the real <cuda_runtime_api.h> (types and host API, implemented by
 * emu_runtime.c), and the SIMT machinery of simt.h. */
#ifndef CT_CUDA_EMU_RUNTIME_H
#define CT_CUDA_EMU_RUNTIME_H

#ifndef __cplusplus
#error "tests/cuda_emu/include/cuda_runtime.h is for the emulated .cu files (C++)"
#endif

/* Function and variable qualifiers: everything is host code. __shared__ variables are
 * static thread_local: the emulator runs all threads of a block as fibers of one OS
 * thread, so a block's threads see one copy, as they see one copy of shared memory. */
#include <cuda_runtime_api.h> /* may already be in, with host_defines.h's qualifiers */

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#define __global__
#define __device__
#define __host__
#define __shared__ static thread_local
#define __constant__ static
#define __launch_bounds__(...)

#include "simt.h"

#endif
