/* Which x86 vector level the CPU kernels use: the highest the CPU has, or a lower one
 * forced with CTORCH_CPU_ISA=avx2|avx512|amx|none (so that an AVX-512 machine can measure
 * its AVX2 paths, an AMX one its AVX512_BF16 paths). Read on every call so tests can
 * switch paths. */
#ifndef CT_CPU_ISA_H
#define CT_CPU_ISA_H

typedef enum { CT_ISA_NONE = 0, CT_ISA_AVX2 = 1, CT_ISA_AVX512 = 2, CT_ISA_AMX = 3 } ct_isa_level;

/* The level in use: min(the CPU's, CTORCH_CPU_ISA's). */
ct_isa_level ct_cpu_isa_level(void);
/* The CPU's own level, whatever CTORCH_CPU_ISA says. */
ct_isa_level ct_cpu_isa_native(void);
int ct_cpu_has_avx512bf16(void);
int ct_cpu_has_amx(void); /* AMX-BF16 tiles, with the kernel's permission to use them */
const char *ct_isa_name(ct_isa_level l); /* "amx", "avx512", "avx2", "none" */

/* The auto-vectorised loops (pointwise, optimizer, AMP unscale) compiled for AVX-512, AVX2
 * and baseline x86-64; the loader picks one for the CPU at start-up (CTORCH_CPU_ISA does
 * not reach them). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CT_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CT_MULTIVERSION
#endif
#endif
