/* CPU feature probe and the CTORCH_CPU_ISA override (cpu_isa.h). */
#include "cpu_isa.h"

#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif
#include <stdlib.h>
#include <string.h>

static ct_isa_level g_native;
static int g_bf16, g_amx;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void probe(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    int has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int has512 = has2 && __builtin_cpu_supports("avx512f") &&
                 __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                 __builtin_cpu_supports("avx512dq");
    g_native = has512 ? CT_ISA_AVX512 : has2 ? CT_ISA_AVX2 : CT_ISA_NONE;
#if __GNUC__ >= 10 || defined(__clang__)
    g_bf16 = has512 && __builtin_cpu_supports("avx512bf16");
#endif
#if defined(SYS_arch_prctl) && (__GNUC__ >= 11 || defined(__clang__))
    /* AMX: the CPU has it (CPUID.7.0:EDX bits 22 amx-bf16, 24 amx-tile) and Linux lets this
     * process use the tile data state (ARCH_REQ_XCOMP_PERM for XTILEDATA, feature 18). */
    unsigned a, b, c, d;
    if (has512 && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 22 & 1) && (d >> 24 & 1))
        g_amx = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#endif
#else
    g_native = CT_ISA_NONE;
#endif
}

ct_isa_level ct_cpu_isa_native(void) {
    pthread_once(&g_once, probe);
    return g_amx ? CT_ISA_AMX : g_native;
}

ct_isa_level ct_cpu_isa_level(void) {
    ct_isa_level l = ct_cpu_isa_native();
    const char *want = getenv("CTORCH_CPU_ISA");
    if (want && *want) {
        ct_isa_level w = !strcmp(want, "avx2")                                ? CT_ISA_AVX2
                         : !strcmp(want, "none") || !strcmp(want, "baseline") ? CT_ISA_NONE
                         : !strcmp(want, "avx512")                            ? CT_ISA_AVX512
                                                                              : CT_ISA_AMX;
        if (w < l) l = w;
    }
    return l;
}

int ct_cpu_has_avx512bf16(void) {
    pthread_once(&g_once, probe);
    return g_bf16;
}

int ct_cpu_has_amx(void) {
    pthread_once(&g_once, probe);
    return g_amx;
}

const char *ct_isa_name(ct_isa_level l) {
    return l == CT_ISA_AMX ? "amx" : l == CT_ISA_AVX512 ? "avx512" : l == CT_ISA_AVX2 ? "avx2" : "none";
}
