/* AMX tile configuration shared by the CPU's AMX kernels (cpu_gemm_bf16.c, cpu_conv_amx.c). */
#ifndef CT_CPU_AMX_H
#define CT_CPU_AMX_H

#include <stdint.h>
#include <string.h>

/* The 64-byte operand of ldtilecfg, palette 1. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} ct_amx_cfg;

/* Tiles 0 .. ntiles-1 configured as rows x colsb bytes; ldtilecfg on it. GCC's
 * _tile_loadconfig (12.x) declares an 8-byte memory operand, so the compiler may drop the
 * stores to the rest of the configuration as dead (it does once the function is not
 * inlined, and ldtilecfg then faults on garbage): this asm reads all 64 bytes. */
static inline void ct_amx_configure(int ntiles, int rows, int colsb) {
    ct_amx_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < ntiles; t++) {
        cfg.colsb[t] = (uint16_t)colsb;
        cfg.rows[t] = (uint8_t)rows;
    }
    __asm__ volatile("ldtilecfg %0" ::"m"(cfg));
}

/* The kernels' 2x2 block: float32 C tiles 0-3 hold 32 rows x 32 columns (tile 0 rows 0-15
 * columns 0-15, 1 rows 0-15 columns 16-31, 2 and 3 rows 16-31); a step loads A's rows 0-15
 * and 16-31 into tiles 4, 5 and B's columns 0-15 and 16-31 (VNNI pairs) into 6, 7 and adds
 * the four products. C is addressed as c + row * ldc + column (float elements). */
#define CT_AMX_ZERO22()                                                                    \
    do {                                                                                   \
        _tile_zero(0);                                                                     \
        _tile_zero(1);                                                                     \
        _tile_zero(2);                                                                     \
        _tile_zero(3);                                                                     \
    } while (0)
#define CT_AMX_STEP22(a0, a16, lda, b0, b16, ldb)                                          \
    do {                                                                                   \
        _tile_loadd(4, (a0), (lda));                                                       \
        _tile_loadd(5, (a16), (lda));                                                      \
        _tile_loadd(6, (b0), (ldb));                                                       \
        _tile_loadd(7, (b16), (ldb));                                                      \
        _tile_dpbf16ps(0, 4, 6);                                                           \
        _tile_dpbf16ps(1, 4, 7);                                                           \
        _tile_dpbf16ps(2, 5, 6);                                                           \
        _tile_dpbf16ps(3, 5, 7);                                                           \
    } while (0)
#define CT_AMX_LOAD22(c, ldc)                                                              \
    do {                                                                                   \
        _tile_loadd(0, (c), (ldc) * 4);                                                    \
        _tile_loadd(1, (c) + 16, (ldc) * 4);                                               \
        _tile_loadd(2, (c) + 16 * (ldc), (ldc) * 4);                                       \
        _tile_loadd(3, (c) + 16 * (ldc) + 16, (ldc) * 4);                                  \
    } while (0)
#define CT_AMX_STORE22(c, ldc)                                                             \
    do {                                                                                   \
        _tile_stored(0, (c), (ldc) * 4);                                                   \
        _tile_stored(1, (c) + 16, (ldc) * 4);                                              \
        _tile_stored(2, (c) + 16 * (ldc), (ldc) * 4);                                      \
        _tile_stored(3, (c) + 16 * (ldc) + 16, (ldc) * 4);                                 \
    } while (0)
#endif
