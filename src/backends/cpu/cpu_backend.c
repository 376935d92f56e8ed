/* The CPU backend: 64-byte aligned host memory from the caching allocator (cpu_alloc.c)
 * and the CPU kernel table. */
#include "core/error.h"
#include "cpu_alloc.h"
#include "cpu_kernels.h"
#include "pool_fast.h"

#include <stdlib.h>
#include <string.h>

static void *cpu_alloc(size_t nbytes, int index) {
    (void)index;
    return ct_cpu_alloc(nbytes);
}

static void cpu_free(void *p, int index) {
    (void)index;
    ct_cpu_free(p);
}

static int cpu_memcpy(void *dst, const void *src, size_t n, int kind, int index) {
    (void)kind;
    (void)index;
    memcpy(dst, src, n);
    return 0;
}

const ct_backend ct_cpu_backend = {
    .name = "cpu",
    .type = CT_CPU,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .memcpy = cpu_memcpy,
    .host_memory = 1,
    .autocast_fp32 = 0, /* PyTorch's CPU autocast: only the common list */
    .fp16_emulated = 1, /* float16 is widened to float32 (cpu_lowp.c) */
#define CT__CPU_ENTRY(name, params) .name = cpu_##name,
    .k = {CT_KERNEL_LIST(CT__CPU_ENTRY)},
#undef CT__CPU_ENTRY
};
