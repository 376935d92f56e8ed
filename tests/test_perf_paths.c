/* The fast paths of the per-step machinery: the CPU caching allocator (reuse, alignment,
 * large blocks, the bound, many threads at once) and the small-GEMM kernels (against a
 * double-precision reference over many shapes, layouts and edge sizes, and through
 * matmul/linear against the BLAS path). */
#include "test.h"
#include "backends/cpu/cpu_alloc.h"
#include "backends/cpu/cpu_gemm_small.h"
#include "backends/cpu/cpu_sgemm_amx.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ allocator */

TEST(cpu_alloc_class_sizes) {
    size_t prev = 0;
    for (size_t n = 1; n < ((size_t)1 << 30); n = n * 9 / 8 + 1) {
        size_t c = ct_cpu_alloc_class_size(n);
        CHECK_MSG(c >= n && c % 64 == 0, "class of %zu is %zu", n, c);
        CHECK_MSG(c <= n + n / 8 + 64, "class of %zu is %zu (more than 12.5%% slack)", n, c);
        CHECK_MSG(c >= prev, "classes not monotonic at %zu", n);
        CHECK_MSG(ct_cpu_alloc_class_size(c) == c, "class size %zu is not its own class", c);
        prev = c;
    }
}

TEST(cpu_alloc_reuses_freed_blocks) {
    ct_cpu_alloc_stats s0, s1;
    void *p = ct_cpu_alloc(100000);
    CHECK_NN(p);
    memset(p, 1, 100000);
    ct_cpu_free(p);
    ct_cpu_alloc_get_stats(&s0);
    if (s0.limit == 0) SKIP("caching disabled (CTORCH_CPU_CACHE_MB=0)");
    CHECK(s0.cached_blocks >= 1);
    void *q = ct_cpu_alloc(99000); /* same size class */
    ct_cpu_alloc_get_stats(&s1);
    CHECK(q == p);
    CHECK(s1.hits == s0.hits + 1);
    CHECK(s1.cached_bytes + ct_cpu_alloc_class_size(100000) == s0.cached_bytes);
    memset(q, 2, 99000);
    ct_cpu_free(q);
    /* tensors go through it too: a freed activation's memory comes back */
    int64_t sh[2] = {333, 77};
    ct_tensor *t = ct_empty(sh, 2, CT_FLOAT32);
    void *d = ct_data(t);
    ct_free(t);
    t = ct_zeros(sh, 2, CT_FLOAT32);
    CHECK(ct_data(t) == d);
    CHECK(((float *)ct_data(t))[333 * 77 - 1] == 0.0f);
    ct_free(t);
}

TEST(cpu_alloc_alignment_and_sizes) {
    void *ps[200];
    size_t ns[200];
    unsigned seed = 12345;
    for (int i = 0; i < 200; i++) {
        seed = seed * 1103515245u + 12345u;
        size_t n = i < 10 ? (size_t)i : (size_t)(seed >> 8) % (i < 150 ? 4096 : 3000000);
        ns[i] = n;
        ps[i] = ct_cpu_alloc(n);
        CHECK_NN(ps[i]);
        if (!ps[i]) return;
        CHECK_MSG(((uintptr_t)ps[i] & 63) == 0, "block %p of %zu bytes not 64-byte aligned", ps[i], n);
        memset(ps[i], (int)(i & 255), n);
    }
    for (int i = 0; i < 200; i++) {
        const unsigned char *b = ps[i];
        for (size_t k = 0; k < ns[i]; k += 97) CHECK(b[k] == (unsigned char)(i & 255));
        for (int j = 0; j < i; j++)
            CHECK_MSG(ps[j] != ps[i] || ns[i] == 0, "block handed out twice");
    }
    for (int i = 0; i < 200; i += 2) ct_cpu_free(ps[i]);
    for (int i = 1; i < 200; i += 2) ct_cpu_free(ps[i]);
    ct_cpu_free(NULL);
}

TEST(cpu_alloc_large_blocks_and_bound) {
    size_t big = (size_t)48 << 20;
    char *p = ct_cpu_alloc(big);
    CHECK_NN(p);
    if (!p) return;
    p[0] = 1;
    p[big - 1] = 2;
    ct_cpu_free(p);
    ct_cpu_alloc_stats s;
    ct_cpu_alloc_get_stats(&s);
    if (s.limit >= ct_cpu_alloc_class_size(big)) {
        char *q = ct_cpu_alloc(big - 4096);
        CHECK(q == p);
        ct_cpu_free(q);
    }
    /* a bound smaller than the block: it goes back to the system, not into the cache */
    size_t prev = ct_cpu_alloc_set_limit((size_t)1 << 20);
    ct_cpu_alloc_get_stats(&s);
    size_t cached0 = s.cached_bytes;
    p = ct_cpu_alloc(big);
    CHECK_NN(p);
    ct_cpu_free(p);
    ct_cpu_alloc_get_stats(&s);
    CHECK(s.cached_bytes <= cached0); /* not cached: over the bound */
    /* limit 0 empties the cache and disables it */
    ct_cpu_alloc_set_limit(0);
    ct_cpu_alloc_get_stats(&s);
    CHECK(s.cached_bytes == 0 && s.cached_blocks == 0);
    p = ct_cpu_alloc(1000);
    ct_cpu_free(p);
    ct_cpu_alloc_get_stats(&s);
    CHECK(s.cached_blocks == 0);
    ct_cpu_alloc_set_limit(prev);
    ct_cpu_empty_cache();
    ct_cpu_alloc_get_stats(&s);
    CHECK(s.cached_bytes == 0);
}

typedef struct {
    int id, iters, bad;
} mt_arg;

static void *alloc_worker(void *va) {
    mt_arg *a = va;
    void *held[16] = {0};
    size_t sz[16] = {0};
    unsigned seed = 777u + (unsigned)a->id * 31u;
    for (int it = 0; it < a->iters; it++) {
        seed = seed * 1103515245u + 12345u;
        int slot = (int)((seed >> 16) & 15);
        if (held[slot]) {
            const unsigned char *b = held[slot];
            unsigned char want = (unsigned char)(a->id * 16 + slot);
            if (b[0] != want || b[sz[slot] - 1] != want || b[sz[slot] / 2] != want) a->bad++;
            ct_cpu_free(held[slot]);
            held[slot] = NULL;
        } else {
            size_t n = 64 + (size_t)((seed >> 4) % (slot < 4 ? 400000 : 5000));
            unsigned char *b = ct_cpu_alloc(n);
            if (!b || ((uintptr_t)b & 63)) {
                a->bad++;
                continue;
            }
            memset(b, a->id * 16 + slot, n);
            held[slot] = b;
            sz[slot] = n;
        }
    }
    for (int s = 0; s < 16; s++) ct_cpu_free(held[s]);
    return NULL;
}

TEST(cpu_alloc_many_threads) {
    enum { NT = 6 };
    pthread_t th[NT];
    mt_arg args[NT];
    ct_cpu_alloc_stats s0, s1;
    ct_cpu_alloc_get_stats(&s0);
    for (int i = 0; i < NT; i++) {
        args[i] = (mt_arg){i, 20000, 0};
        CHECK(pthread_create(&th[i], NULL, alloc_worker, &args[i]) == 0);
    }
    for (int i = 0; i < NT; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < NT; i++) CHECK_MSG(args[i].bad == 0, "thread %d saw %d bad blocks", i, args[i].bad);
    ct_cpu_alloc_get_stats(&s1);
    CHECK_MSG(s1.live_blocks == s0.live_blocks, "live blocks %zu before, %zu after", s0.live_blocks,
              s1.live_blocks);
    CHECK(s1.cached_bytes <= s1.limit);
}

/* ---------------------------------------------------------------- small GEMM */

static void ref_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, const float *C0, float *C, int ldc,
                     double *scale, const float *bias) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0, a2 = 0;
            for (int k = 0; k < K; k++) {
                double x = ta ? A[k * lda + m] : A[m * lda + k];
                double y = tb ? B[n * ldb + k] : B[k * ldb + n];
                s += x * y;
                a2 += fabs(x * y);
            }
            double r = alpha * s + (beta != 0 ? beta * (double)C0[m * ldc + n] : 0);
            if (bias) r += bias[n];
            C[m * ldc + n] = (float)r;
            scale[m * ldc + n] = fabs(alpha) * a2 +
                                 (beta != 0 ? fabs(beta * (double)C0[m * ldc + n]) : 0) +
                                 (bias ? fabs(bias[n]) : 0) + 1e-30;
        }
}

static float frand(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return (float)((*s >> 8) & 0xFFFF) / 65536.0f - 0.5f;
}

typedef int (*sgemm_fn)(int, int, int64_t, int64_t, int64_t, float, const float *, int64_t,
                        const float *, int64_t, float, float *, int64_t, const float *);

/* ct_sgemm_small has no bias */
static int small_nobias(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                        const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                        float *C, int64_t ldc, const float *bias) {
    return bias ? 2 : ct_sgemm_small(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* `trials` random products (sizes drawn from the lists, every layout, padded leading
 * dimensions, alpha, beta 0 / 1 / -2, beta 0 over a NaN C; with_bias: a column bias in half
 * of the beta 0 trials) against the float64 reference; nothing written past a row of C.
 * deep: K drawn from [deep, deep + 200) one trial in 7. */
static void sgemm_check(sgemm_fn f, const char *name, const int *msz, int nm, const int *nsz,
                        int nn, const int *ksz, int nk, int trials, int deep, int with_bias,
                        int both_t) {
    unsigned seed = 99;
    int cases = 0;
    for (int trial = 0; trial < trials; trial++) {
        seed = seed * 1103515245u + 12345u;
        int M = msz[(seed >> 8) % nm], N = nsz[(seed >> 13) % nn], K = ksz[(seed >> 18) % nk];
        if (trial % 7 == 0) K = deep + (int)((seed >> 4) % 200); /* deep products */
        if (trial % 11 == 0) N = 100 + (int)((seed >> 6) % 300);
        int ta = (seed >> 23) & 1, tb = (seed >> 24) & 1;
        if (ta && tb && !both_t) { /* not handled: must say so */
            float z = 0;
            CHECK(f(1, 1, 1, 1, 1, 1, &z, 1, &z, 1, 0, &z, 1, NULL) == 1);
            continue;
        }
        int pad = (seed >> 25) & 3; /* leading dimensions larger than the rows */
        int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
        int arows = ta ? K : M, brows = tb ? N : K;
        float alpha = (trial & 3) == 3 ? 0.5f : 1.0f, beta = (trial & 4) ? 0.0f : ((trial & 8) ? 1.0f : -2.0f);
        float *A = malloc(sizeof(float) * (size_t)(arows * lda)), *B = malloc(sizeof(float) * (size_t)(brows * ldb));
        float *C = malloc(sizeof(float) * (size_t)(M * ldc)), *C0 = malloc(sizeof(float) * (size_t)(M * ldc));
        float *R = malloc(sizeof(float) * (size_t)(M * ldc));
        double *sc = malloc(sizeof(double) * (size_t)(M * ldc));
        for (int i = 0; i < arows * lda; i++) A[i] = frand(&seed);
        for (int i = 0; i < brows * ldb; i++) B[i] = frand(&seed);
        float *bias = with_bias && beta == 0 && (trial & 16) ? malloc(sizeof(float) * (size_t)N) : NULL;
        for (int i = 0; bias && i < N; i++) bias[i] = 4 * frand(&seed);
        for (int i = 0; i < M * ldc; i++) C0[i] = frand(&seed);
        if (beta == 0)
            for (int i = 0; i < M * ldc; i++) C0[i] = NAN; /* beta 0 must not read C */
        memcpy(C, C0, sizeof(float) * (size_t)(M * ldc));
        ref_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C0, R, ldc, sc, bias);
        CHECK(f(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias) == 0);
        int bad = 0;
        for (int m = 0; m < M && !bad; m++) {
            for (int n = 0; n < N; n++) {
                double err = fabs((double)C[m * ldc + n] - (double)R[m * ldc + n]);
                if (!(err <= 4e-6 * sc[m * ldc + n] + 1e-6)) {
                    CHECK_MSG(0, "%s %c%c M=%d N=%d K=%d lda=%d ldb=%d ldc=%d alpha=%g beta=%g%s: C[%d][%d] = %g, want %g",
                              name, ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, lda, ldb, ldc, alpha, beta,
                              bias ? " with bias" : "", m, n,
                              C[m * ldc + n], R[m * ldc + n]);
                    bad = 1;
                    break;
                }
            }
            /* the padding between rows is left alone */
            for (int n = N; n < ldc && !bad; n++)
                if (memcmp(&C[m * ldc + n], &C0[m * ldc + n], sizeof(float)) != 0) {
                    CHECK_MSG(0, "%s wrote past row %d (col %d) of C: M=%d N=%d K=%d", name, m, n, M, N, K);
                    bad = 1;
                }
        }
        cases++;
        free(A); free(B); free(C); free(C0); free(R); free(sc); free(bias);
    }
    CHECK(cases > trials * 4 / 7);
}

TEST(sgemm_small_matches_reference) {
    if (!ct_sgemm_small_available()) SKIP("no AVX-512 on this CPU (BLAS is used instead)");
    static const int sizes[] = {1, 2, 3, 5, 7, 11, 12, 13, 15, 16, 17, 23, 31, 32, 33, 47, 48, 64, 65, 100};
    const int ns = (int)(sizeof sizes / sizeof *sizes);
    sgemm_check(small_nobias, "small", sizes, ns, sizes, ns, sizes, ns, 700, 700, 0, 0);
}

/* The cache-blocked kernels: rows in tiles of 1..6 (balanced), whole 64-column panels and
 * the 32-column tiles past them, K in one chunk and in several (chunks of at most 384:
 * 385 and the deep trials' 900-1100 take two and three, C accumulating across them), with
 * and without a column bias (added once, in the first chunk). */
TEST(sgemm_blocked_matches_reference) {
    if (!ct_sgemm_small_available()) SKIP("no AVX-512 on this CPU (BLAS is used instead)");
    static const int msz[] = {1, 4, 6, 7, 13, 64, 97, 300, 1030};
    static const int nsz[] = {1, 10, 33, 63, 64, 65, 128, 130, 200};
    static const int ksz[] = {1, 7, 64, 200, 384, 385, 769};
    sgemm_check(ct_sgemm_blocked, "blocked", msz, (int)(sizeof msz / sizeof *msz), nsz,
                (int)(sizeof nsz / sizeof *nsz), ksz, (int)(sizeof ksz / sizeof *ksz), 240, 900, 1, 0);
}

/* linear and matmul, forward and backward, with our kernels and with BLAS. */
static void linear_pass(int64_t R, int64_t in, int64_t out, ct_tensor **res) {
    ct_manual_seed(7);
    int64_t xs[2] = {R, in}, ws[2] = {out, in};
    ct_tensor *x = ct_randn(xs, 2, CT_FLOAT32), *w = ct_randn(ws, 2, CT_FLOAT32);
    ct_tensor *b = ct_randn(&out, 1, CT_FLOAT32);
    ct_set_requires_grad(x, 1);
    ct_set_requires_grad(w, 1);
    ct_set_requires_grad(b, 1);
    ct_tensor *y = ct_linear(x, w, b);
    int64_t ys[2] = {out, 7};
    ct_tensor *w2 = ct_randn(ys, 2, CT_FLOAT32);
    ct_tensor *z = y ? ct_matmul(y, w2) : NULL;
    ct_tensor *gz = z ? ct_randn(ct_shape(z), 2, CT_FLOAT32) : NULL;
    CHECK_NN(z);
    if (z) CHECK_OK(ct_backward(z, gz, 0));
    res[0] = y;
    res[1] = ct_grad(x) ? ct_retain(ct_grad(x)) : NULL;
    res[2] = ct_grad(w) ? ct_retain(ct_grad(w)) : NULL;
    res[3] = ct_grad(b) ? ct_retain(ct_grad(b)) : NULL;
    ct_free(x); ct_free(w); ct_free(b); ct_free(w2); ct_free(z); ct_free(gz);
}

TEST(sgemm_small_linear_matches_blas_path) {
    if (!ct_sgemm_small_available()) SKIP("no AVX-512 on this CPU (BLAS is used instead)");
    /* the last two: the cache-blocked kernels (a tall x, and a weight gradient over 1100
     * rows of K split into parts); with AMX, the large ones also through cpu_sgemm_amx.c */
    static const int64_t shapes[][3] = {{64, 784, 128}, {64, 128, 10}, {64, 4096, 10}, {1, 5, 3},
                                        {33, 17, 65}, {200, 300, 20}, {7, 1000, 40},
                                        {1100, 200, 130}, {2600, 96, 192}};
    int amx = ct_sgemm_amx_set_enabled(0);
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        ct_tensor *own[4], *blas[4], *tiles[4];
        linear_pass(shapes[s][0], shapes[s][1], shapes[s][2], own);
        int prev = ct_sgemm_small_set_enabled(0);
        linear_pass(shapes[s][0], shapes[s][1], shapes[s][2], blas);
        ct_sgemm_small_set_enabled(prev);
        ct_sgemm_amx_set_enabled(amx);
        linear_pass(shapes[s][0], shapes[s][1], shapes[s][2], tiles);
        ct_sgemm_amx_set_enabled(0);
        static const char *names[4] = {"y", "grad x", "grad w", "grad b"};
        for (int i = 0; i < 4; i++) {
            char what[96];
            snprintf(what, sizeof what, "linear [%lld, %lld] -> %lld: %s", (long long)shapes[s][0],
                     (long long)shapes[s][1], (long long)shapes[s][2], names[i]);
            CHECK_NN(own[i]);
            CHECK_NN(blas[i]);
            CHECK_NN(tiles[i]);
            if (own[i] && blas[i]) CHECK_CLOSE(own[i], blas[i], 1e-5, what);
            if (tiles[i] && blas[i]) CHECK_CLOSE(tiles[i], blas[i], 1e-5, what);
            ct_free(own[i]);
            ct_free(blas[i]);
            ct_free(tiles[i]);
        }
    }
    ct_sgemm_amx_set_enabled(amx);
}

/* Bits of a linear layer's forward, input, weight and bias gradients on 1 thread and on 2:
 * equal. */
static void same_bits_1_and_2_threads(int64_t rows, int64_t in, int64_t out) {
    ct_tensor *one[4], *two[4];
    int saved = ct_get_num_threads();
    ct_set_num_threads(1);
    linear_pass(rows, in, out, one);
    ct_set_num_threads(2);
    linear_pass(rows, in, out, two);
    ct_set_num_threads(saved);
    static const char *names[4] = {"y", "grad x", "grad w", "grad b"};
    for (int i = 0; i < 4; i++) {
        CHECK_NN(one[i]);
        CHECK_NN(two[i]);
        if (one[i] && two[i]) CHECK_CLOSE(one[i], two[i], 0, names[i]);
        ct_free(one[i]);
        ct_free(two[i]);
    }
}

/* The blocked kernels' sums depend on K alone, not on how cpu_bmm tiles C over threads: a
 * linear layer over 2600 rows (forward, input and weight gradients, the weight gradient's
 * K split into parts) gives the same bits on 1 thread and on 2. */
TEST(sgemm_blocked_same_bits_any_thread_count) {
    if (!ct_sgemm_small_available()) SKIP("no AVX-512 on this CPU (BLAS is used instead)");
    int amx = ct_sgemm_amx_set_enabled(0); /* these shapes would go to AMX */
    same_bits_1_and_2_threads(2600, 192, 200);
    ct_sgemm_amx_set_enabled(amx);
}

/* ------------------------------------------------- float32 GEMM on AMX (bf16x6) */
#define AMX_SKIP()                                                                         \
    do {                                                                                   \
        if (!ct_sgemm_amx_available())                                                     \
            SKIP("no AMX and AVX512_BF16 here (or CTORCH_CPU_ISA below amx): the AVX-512 " \
                 "and AVX2 kernels are used");                                             \
    } while (0)

/* Every layout (both transposed too), padded leading dimensions, alpha, beta, bias, M, N
 * and K off the 32 grid, K in one pass (up to 1024) and in chunks of 256 (the deep
 * trials' 1100-1300). */
TEST(sgemm_amx_matches_reference) {
    AMX_SKIP();
    static const int msz[] = {1, 7, 31, 32, 33, 64, 97, 300};
    static const int nsz[] = {1, 10, 32, 33, 63, 64, 65, 130};
    static const int ksz[] = {1, 7, 31, 32, 33, 200, 1024, 1025};
    sgemm_check(ct_sgemm_amx, "amx", msz, (int)(sizeof msz / sizeof *msz), nsz,
                (int)(sizeof nsz / sizeof *nsz), ksz, (int)(sizeof ksz / sizeof *ksz), 200, 1100,
                1, 1);
}

static float frand24(unsigned *s) { /* all 24 bits of the significand in use */
    float hi = frand(s), lo = frand(s);
    return hi + lo * (1.0f / 65536.0f);
}

/* The largest error against float64, relative to sum |a b|, over C. */
static double rel_err(const float *C, const float *A, const float *B, int M, int N, int K,
                      int ta) {
    double worst = 0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0, sa = 0;
            for (int k = 0; k < K; k++) {
                double x = ta ? A[k * M + m] : A[m * K + k], y = B[k * N + n];
                s += x * y;
                sa += fabs(x * y);
            }
            double e = fabs(C[m * N + n] - s) / (sa + 1e-30);
            if (e > worst) worst = e;
        }
    return worst;
}

/* As accurate as float32 FMA: over random operands with all 24 bits in use (one pass and
 * chunked K; A as is and transposed), the error against float64 is no larger than the
 * AVX-512 kernel's. A dropped partial product (a1 b1 alone is 2^-16 |a b|) or a sum that
 * loses the small terms fails this. */
TEST(sgemm_amx_as_accurate_as_fma) {
    AMX_SKIP();
    static const int shapes[][4] = {{200, 96, 192, 0}, {64, 96, 1000, 0}, {96, 64, 3000, 1},
                                    {40, 33, 5000, 1}};
    unsigned seed = 5;
    for (int s = 0; s < 4; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], ta = shapes[s][3];
        float *A = malloc(sizeof(float) * (size_t)M * K), *B = malloc(sizeof(float) * (size_t)K * N);
        float *C = malloc(sizeof(float) * (size_t)M * N), *F = malloc(sizeof(float) * (size_t)M * N);
        for (int i = 0; i < M * K; i++) A[i] = frand24(&seed);
        for (int i = 0; i < K * N; i++) B[i] = frand24(&seed);
        CHECK(ct_sgemm_amx(ta, 0, M, N, K, 1.0f, A, ta ? M : K, B, N, 0.0f, C, N, NULL) == 0);
        int fma = ct_sgemm_small_available() &&
                  ct_sgemm_blocked(ta, 0, M, N, K, 1.0f, A, ta ? M : K, B, N, 0.0f, F, N, NULL) == 0;
        if (!fma) /* the FMA reference: plain float32 sums */
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++) {
                    float acc = 0;
                    for (int k = 0; k < K; k++)
                        acc = fmaf(ta ? A[k * M + m] : A[m * K + k], B[k * N + n], acc);
                    F[m * N + n] = acc;
                }
        double ea = rel_err(C, A, B, M, N, K, ta), ef = rel_err(F, A, B, M, N, K, ta);
        CHECK_MSG(ea <= ef && ea < 1e-6, "M=%d N=%d K=%d ta=%d: AMX error %.3g, FMA %.3g", M, N,
                  K, ta, ea, ef);
        free(A); free(B); free(C); free(F);
    }
}

/* Infinities and NaN go through as with float32 products: an infinite a times finite b's
 * of one sign gives an infinity (not the NaN of inf - inf in its split), a NaN a NaN. */
TEST(sgemm_amx_infinities_and_nan) {
    AMX_SKIP();
    const int M = 40, N = 40, K = 64;
    float *A = calloc((size_t)M * K, sizeof(float)), *B = malloc(sizeof(float) * (size_t)K * N);
    float *C = malloc(sizeof(float) * (size_t)M * N);
    for (int i = 0; i < K * N; i++) B[i] = 0.5f + (float)(i % 7) / 8.0f;
    for (int i = 0; i < M * K; i++) A[i] = (float)(i % 5) - 2.0f;
    A[3 * K + 5] = INFINITY;
    A[4 * K + 6] = -INFINITY;
    A[5 * K + 7] = NAN;
    A[6 * K + 8] = 3.0e38f; /* rounds up to infinity in bfloat16 */
    CHECK(ct_sgemm_amx(0, 0, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N, NULL) == 0);
    for (int n = 0; n < N; n++) {
        CHECK(isinf(C[3 * N + n]) && C[3 * N + n] > 0);
        CHECK(isinf(C[4 * N + n]) && C[4 * N + n] < 0);
        CHECK(isnan(C[5 * N + n]));
        CHECK(!isnan(C[6 * N + n]) && C[6 * N + n] > 1e38f);
        CHECK(isfinite(C[7 * N + n]));
    }
    free(A); free(B); free(C);
}

/* Every element summed in one order: the same bits on 1 thread and on 2, in one pass and
 * with K in chunks, through a linear layer's three products. */
TEST(sgemm_amx_same_bits_any_thread_count) {
    AMX_SKIP();
    same_bits_1_and_2_threads(2600, 192, 200);
    same_bits_1_and_2_threads(3000, 128, 160);
}

/* Which products go to AMX, by shape alone: a vit_tiny layer's yes; too small (a side
 * under 32, or under 2e7 flops) no; scratch over 256 MiB (a 100k-wide output layer's
 * packed weight, a long-K product with a huge C) no; where splitting would cost more than
 * the tiles save (measured: bench/RESULTS.md, session 17) no. */
TEST(sgemm_amx_wanted_by_shape) {
    AMX_SKIP();
    CHECK(ct_sgemm_amx_wanted(0, 1, 8320, 576, 192));
    CHECK(ct_sgemm_amx_wanted(1, 0, 576, 192, 8320));
    CHECK(!ct_sgemm_amx_wanted(0, 1, 8320, 10, 192));
    CHECK(!ct_sgemm_amx_wanted(0, 0, 64, 128, 784));
    CHECK(!ct_sgemm_amx_wanted(0, 1, 64, 100000, 1024));
    CHECK(!ct_sgemm_amx_wanted(1, 0, 9000, 9000, 2048));
    /* few rows for B's copy (K in one pass), a narrow side with K in chunks: no */
    CHECK(ct_sgemm_amx_wanted(0, 1, 256, 256, 256));
    CHECK(!ct_sgemm_amx_wanted(0, 1, 128, 512, 512));
    CHECK(!ct_sgemm_amx_wanted(0, 1, 32, 4096, 1024));
    CHECK(!ct_sgemm_amx_wanted(0, 1, 8320, 64, 768));
    CHECK(ct_sgemm_amx_wanted(0, 1, 8320, 96, 768));
    CHECK(!ct_sgemm_amx_wanted(1, 0, 4096, 40, 4096));
}

/* The run manifest's cpu_kernels says where float32 products go: "avx512+amx" with the
 * AMX kernel on, "avx512+amx+fp32fma" with it off (CTORCH_FP32_AMX=0). */
#include "core/backend.h"
TEST(sgemm_amx_named_in_cpu_kernels) {
    AMX_SKIP();
    ct_backend_versions v;
    int prev = ct_sgemm_amx_set_enabled(0);
    CHECK(ct_cpu_backend.procs->versions(&v) == 0);
    CHECK_MSG(strstr(v.kernels, "+amx+fp32fma") != NULL, "kernels %s", v.kernels);
    ct_sgemm_amx_set_enabled(1);
    CHECK(ct_cpu_backend.procs->versions(&v) == 0);
    CHECK_MSG(strstr(v.kernels, "+amx") && !strstr(v.kernels, "fp32fma"), "kernels %s", v.kernels);
    ct_sgemm_amx_set_enabled(prev);
}

/* ------------------------------------------------------------------ thread pool */
#include "core/parallel.h"
#include <stdatomic.h>

typedef struct {
    atomic_int *hits;
    int64_t n;
    atomic_int bad;
    int nested;
    atomic_int chunks; /* calls of the body */
} pf_ctx;

static void pf_inner(void *vc, int64_t b, int64_t e) {
    pf_ctx *c = vc;
    for (int64_t i = b; i < e; i++) atomic_fetch_add(&c->hits[i], 1);
}

static void pf_body(void *vc, int64_t b, int64_t e) {
    pf_ctx *c = vc;
    atomic_fetch_add(&c->chunks, 1);
    if (b < 0 || e > c->n || b >= e) atomic_fetch_add(&c->bad, 1);
    if (c->nested) {
        /* a parallel_for inside a chunk runs inline on the calling thread */
        pf_ctx inner = {c->hits + b, e - b, 0, 0, 0};
        ct_parallel_for(e - b, 1, pf_inner, &inner);
        return;
    }
    for (int64_t i = b; i < e; i++) atomic_fetch_add(&c->hits[i], 1);
}

/* Every index of [0, n) visited once; *chunks (when not NULL): how many calls of the body. */
static int pf_run(int64_t n, int64_t grain, int nested, int dynamic, int *chunks) {
    atomic_int *hits = calloc((size_t)(n > 0 ? n : 1), sizeof *hits);
    pf_ctx c = {hits, n, 0, nested, 0};
    if (dynamic) ct_parallel_for_dynamic(n, grain, pf_body, &c);
    else ct_parallel_for(n, grain, pf_body, &c);
    int ok = atomic_load(&c.bad) == 0;
    for (int64_t i = 0; i < n; i++) ok = ok && atomic_load(&hits[i]) == 1;
    if (chunks) *chunks = atomic_load(&c.chunks);
    free(hits);
    return ok;
}

static int pf_check(int64_t n, int64_t grain, int nested) {
    return pf_run(n, grain, nested, 0, NULL) && pf_run(n, grain, nested, 1, NULL);
}

TEST(parallel_for_covers_every_index_once) {
    int prev = ct_get_num_threads();
    static const int threads[] = {1, 2, 3, 4};
    static const int64_t ns[] = {0, 1, 2, 3, 7, 64, 1000, 4097, 100000};
    static const int64_t grains[] = {1, 3, 64, 1024, 1 << 20};
    for (size_t t = 0; t < sizeof threads / sizeof *threads; t++) {
        ct_set_num_threads(threads[t]);
        for (size_t i = 0; i < sizeof ns / sizeof *ns; i++)
            for (size_t g = 0; g < sizeof grains / sizeof *grains; g++)
                for (int nested = 0; nested < 2; nested++)
                    CHECK_MSG(pf_check(ns[i], grains[g], nested),
                              "threads %d n %lld grain %lld nested %d", threads[t],
                              (long long)ns[i], (long long)grains[g], nested);
        /* the dynamic split: more chunks than threads (8 per thread at most), none
         * smaller than the grain */
        int chunks = 0;
        CHECK(pf_run(1000, 1, 0, 1, &chunks));
        if (threads[t] > 1)
            CHECK_MSG(chunks == 8 * threads[t], "threads %d: %d dynamic chunks of 1000 items",
                      threads[t], chunks);
        CHECK(pf_run(1000, 100, 0, 1, &chunks));
        if (threads[t] > 1)
            CHECK_MSG(chunks == (8 * threads[t] < 10 ? 8 * threads[t] : 10),
                      "threads %d: %d dynamic chunks of grain 100", threads[t], chunks);
        /* many small jobs back to back: workers spinning, sleeping, coming late */
        for (int rep = 0; rep < 3000; rep++)
            if (!pf_check(8 + rep % 57, 2, 0)) {
                CHECK_MSG(0, "threads %d: job %d lost or repeated an index", threads[t], rep);
                break;
            }
    }
    ct_set_num_threads(prev);
}

static void *pf_thread(void *arg) {
    int *ok = arg;
    for (int rep = 0; rep < 300 && *ok; rep++) *ok = pf_check(5000 + rep, 16, rep & 1);
    return NULL;
}

TEST(parallel_for_from_several_threads_at_once) {
    /* callers that find the pool busy run their loop inline; every loop completes */
    enum { NT = 4 };
    pthread_t th[NT];
    int ok[NT];
    for (int i = 0; i < NT; i++) {
        ok[i] = 1;
        CHECK(pthread_create(&th[i], NULL, pf_thread, &ok[i]) == 0);
    }
    for (int i = 0; i < NT; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < NT; i++) CHECK_MSG(ok[i], "caller thread %d saw a wrong result", i);
}
