/* The CPU backend: 64-byte aligned host memory from the caching allocator (cpu_alloc.c)
 * and the CPU kernel table. */
#include "core/error.h"
#include "cpu_alloc.h"
#include "cpu_gemm_bf16.h"
#include "cpu_sgemm_amx.h"
#include "cpu_isa.h"
#include "cpu_kernels.h"
#include "pool_fast.h"

#include <stdio.h>
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

/* The `versions` entry point: which kernel variant runs now (CTORCH_CPU_ISA may lower it,
 * so it is read on every call, as the kernels do): the vector level, then the bfloat16
 * GEMM's kernel when there is one ("+amx": AMX tiles, "+avx512_bf16": vdpbf16ps). The
 * level is "baseline" (portable C) without AVX2; at the amx level the vectors are
 * AVX-512, hence "avx512+amx". With AMX the float32 products run on the tiles too
 * (cpu_sgemm_amx.c) unless CTORCH_FP32_AMX=0 sends them to the FMA kernels:
 * "avx512+amx+fp32fma" (their sums differ in the last bits). */
static int cpu_versions(ct_backend_versions *out) {
    memset(out, 0, sizeof *out);
    ct_isa_level l = ct_cpu_isa_level();
    const char *level = l >= CT_ISA_AVX512 ? "avx512" : l == CT_ISA_AVX2 ? "avx2" : "baseline";
    int bf16 = ct_gemm_bf16_kind();
    snprintf(out->kernels, sizeof out->kernels, "%s%s%s", level,
             bf16 == CT_BF16_AMX      ? "+amx"
             : bf16 == CT_BF16_AVX512 ? "+avx512_bf16"
                                      : "",
             bf16 == CT_BF16_AMX && !ct_sgemm_amx_available() ? "+fp32fma" : "");
    return 0;
}

/* The CPU has no devices to count, streams or pinned memory: only `versions`. */
static const ct_backend_procs cpu_procs = {.versions = cpu_versions};

const ct_backend ct_cpu_backend = {
    .name = "cpu",
    .type = CT_CPU,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .memcpy = cpu_memcpy,
    .procs = &cpu_procs,
    .host_memory = 1,
    .autocast_fp32 = 0, /* PyTorch's CPU autocast: only the common list */
    .fp16_emulated = 1, /* float16 is widened to float32 (cpu_lowp.c) */
#define CT__CPU_ENTRY(name, params) .name = cpu_##name,
    .k = {CT_KERNEL_LIST(CT__CPU_ENTRY)},
#undef CT__CPU_ENTRY
};
