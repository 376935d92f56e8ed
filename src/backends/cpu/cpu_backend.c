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
    .k = {
        .binary = cpu_binary,
        .unary = cpu_unary,
        .unary_backward = cpu_unary_backward,
        .reduce = cpu_reduce,
        .copy = cpu_copy,
        .fill = cpu_fill,
        .bmm = cpu_bmm,
        .conv2d_forward = cpu_conv2d_forward,
        .conv2d_backward_input = cpu_conv2d_backward_input,
        .conv2d_backward_weight = cpu_conv2d_backward_weight,
        .max_pool2d_forward = cpu_max_pool2d_forward,
        .max_pool2d_backward = cpu_max_pool2d_backward,
        .max_pool2d_codes_forward = cpu_max_pool2d_codes,
        .max_pool2d_codes_backward = cpu_max_pool2d_codes_backward,
        .avg_pool2d_forward = cpu_avg_pool2d_forward,
        .avg_pool2d_backward = cpu_avg_pool2d_backward,
        .adaptive_avg_pool2d_forward = cpu_adaptive_avg_pool2d_forward,
        .adaptive_avg_pool2d_backward = cpu_adaptive_avg_pool2d_backward,
        .softmax_forward = cpu_softmax_forward,
        .softmax_backward = cpu_softmax_backward,
        .nll_loss_forward = cpu_nll_loss_forward,
        .nll_loss_backward = cpu_nll_loss_backward,
        .cross_entropy_forward = cpu_cross_entropy_forward,
        .cross_entropy_backward = cpu_cross_entropy_backward,
        .batch_norm_forward = cpu_batch_norm_forward,
        .batch_norm_backward = cpu_batch_norm_backward,
        .layer_norm_forward = cpu_layer_norm_forward,
        .layer_norm_backward = cpu_layer_norm_backward,
    },
};
