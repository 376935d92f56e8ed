/* CPU max pooling with compact window codes and an optional fused ReLU (internal to the
 * CPU backend; see cpu_pool.c). */
#ifndef CT_CPU_POOL_FAST_H
#define CT_CPU_POOL_FAST_H

#include "core/backend.h"

#include <stdint.h>

/* Window code of an output whose gradient is zero (ReLU clamped it). */
#define CPU_POOL_NOGRAD CT_POOL_NOGRAD

/* cpu_max_pool2d_codes_forward / _backward (cpu_kernels.h): y = max_pool2d(x)
 * (relu(max_pool2d(x)) when relu != 0); codes: uint8 tensor of y's shape receiving each
 * output's window position ky*kw + kx (or CPU_POOL_NOGRAD), or NULL. Needs
 * kernel[0]*kernel[1] < 255. CTORCH_POOL_REFERENCE=1 disables the AVX-512 path. */
#include "cpu_kernels.h"

#endif
