/* CPU max pooling with compact window codes and an optional fused ReLU (internal to the
 * CPU backend and src/ops/pool.c; see cpu_pool.c). */
#ifndef CT_CPU_POOL_FAST_H
#define CT_CPU_POOL_FAST_H

#include "core/backend.h"

#include <stdint.h>

/* Window code of an output whose gradient is zero (ReLU clamped it). */
#define CPU_POOL_NOGRAD CT_POOL_NOGRAD

/* y = max_pool2d(x) (relu(max_pool2d(x)) when relu != 0); codes: uint8 tensor of y's
 * shape receiving each output's window position ky*kw + kx (or CPU_POOL_NOGRAD), or NULL.
 * Needs kernel[0]*kernel[1] < 255. CTORCH_POOL_REFERENCE=1 disables the AVX-512 path. */
int cpu_max_pool2d_codes(ct_tensor *y, ct_tensor *codes, const ct_tensor *x,
                         const ct_pool_params *p, int relu);
/* gx = the gradient of the pooling above given gy and the codes. */
int cpu_max_pool2d_codes_backward(ct_tensor *gx, const ct_tensor *gy, const ct_tensor *codes,
                                  const ct_pool_params *p);

#endif
