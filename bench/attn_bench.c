/* ctorch's scaled_dot_product_attention, forward + backward, timed through the public API
 * (the ctorch side of bench/attn_bench.py, which builds and runs it).
 *
 * build: cc -O2 -std=c11 -D_GNU_SOURCE -Iinclude bench/attn_bench.c build/libctorch.a \
 *            -o build/bench/attn_bench -lopenblas -lz -ljansson -lcrypto -larchive -ljpeg -lpng \
 *            -lprotobuf-c -lpthread -ldl -lm
 * run:   build/bench/attn_bench B H L E THREADS REPS [causal]
 * prints the median seconds of one forward + backward over REPS repetitions (after one
 * warm-up), q, k, v [B, H, L, E] float32 requiring grad, gradient of ones. */
#include "ctorch.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s B H L E THREADS REPS [causal]\n", argv[0]);
        return 2;
    }
    int64_t sh[4] = {atoll(argv[1]), atoll(argv[2]), atoll(argv[3]), atoll(argv[4])};
    const int threads = atoi(argv[5]), reps = atoi(argv[6]);
    const int causal = argc > 7 && atoi(argv[7]) != 0;
    if (reps < 1 || reps > 1000) return 2;
    ct_set_num_threads(threads);
    ct_manual_seed(0);
    ct_tensor *q = ct_randn(sh, 4, CT_FLOAT32), *k = ct_randn(sh, 4, CT_FLOAT32);
    ct_tensor *v = ct_randn(sh, 4, CT_FLOAT32), *g = ct_ones(sh, 4, CT_FLOAT32);
    ct_set_requires_grad(q, 1), ct_set_requires_grad(k, 1), ct_set_requires_grad(v, 1);
    double t[1000];
    for (int r = -1; r < reps; r++) {
        ct_zero_grad(q), ct_zero_grad(k), ct_zero_grad(v);
        const double t0 = now();
        ct_tensor *y = ct_scaled_dot_product_attention(q, k, v, NULL, 0.0, causal, 0.0);
        if (!y || ct_backward(y, g, 0) != 0) {
            fprintf(stderr, "attn_bench: %s\n", ct_last_error());
            return 1;
        }
        const double dt = now() - t0;
        ct_free(y);
        if (r >= 0) t[r] = dt;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp);
    printf("%.6f\n", t[reps / 2]);
    ct_free(q), ct_free(k), ct_free(v), ct_free(g);
    return 0;
}
