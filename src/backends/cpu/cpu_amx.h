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
#endif
