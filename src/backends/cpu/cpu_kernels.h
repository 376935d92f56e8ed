/* CPU kernels: one function per ct_kernels entry (see src/core/backend.h). The CPU is the
 * reference backend: it implements every kernel. */
#ifndef CT_CPU_KERNELS_H
#define CT_CPU_KERNELS_H

#include "core/backend.h"

/* cpu_<name> for every row of CT_KERNEL_LIST (src/core/backend.h). */
#define CT__CPU_PROTO(name, params) int cpu_##name params;
CT_KERNEL_LIST(CT__CPU_PROTO)
#undef CT__CPU_PROTO

/* Shared by the loss kernels (cpu_loss.c). */
void cpu_loss_reduce_rows(ct_tensor *out, ct_tensor *total_weight, const double *v, int64_t N,
                          int64_t count, ct_reduction red);
#endif
