/* SGEMM peak of the machine with OpenBLAS: the yardstick for ctorch's per-layer GFLOP/s.
 *
 * build: cc -O2 -I/usr/include/x86_64-linux-gnu/openblas-pthread bench/gemm_peak.c \
 *           -o build/bench/gemm_peak -lopenblas
 * run:   env -u OPENBLAS_CORETYPE OPENBLAS_NUM_THREADS=2 build/bench/gemm_peak --threads 2
 *
 * Times C = A B for square float32 matrices (default sizes 2048, 3072, 4096), a warm-up call
 * then --reps timed calls per size, and prints one JSON object: the OpenBLAS core and
 * configuration, the best GFLOP/s per size and the best over all sizes ("peak_gflops").
 * OPENBLAS_CORETYPE=Haswell in the environment forces the AVX2 kernels; unset it for the
 * AVX-512 peak. bench/run_bench.py builds and runs it. */
#define _POSIX_C_SOURCE 199309L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* OpenBLAS extensions (declared in its cblas.h too, repeated for other headers) */
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
char *openblas_get_config(void);
char *openblas_get_corename(void);

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void usage(void) {
    fprintf(stderr, "usage: gemm_peak [--threads T] [--sizes N1,N2,...] [--reps R]\n");
    exit(2);
}

int main(int argc, char **argv) {
    int threads = 0, reps = 3, nsizes = 0;
    long sizes[16];
    const char *size_list = "2048,3072,4096";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--sizes") && i + 1 < argc) size_list = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else usage();
    }
    for (const char *p = size_list; *p && nsizes < 16;) {
        char *end;
        long n = strtol(p, &end, 10);
        if (end == p || n <= 0 || n > 16384) usage();
        sizes[nsizes++] = n;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') usage();
    }
    if (reps < 1 || nsizes == 0) usage();
    if (threads > 0) openblas_set_num_threads(threads);

    long nmax = 0;
    for (int s = 0; s < nsizes; s++)
        if (sizes[s] > nmax) nmax = sizes[s];
    size_t elems = (size_t)nmax * (size_t)nmax;
    float *a = aligned_alloc(64, elems * sizeof(float)), *b = aligned_alloc(64, elems * sizeof(float)),
          *c = aligned_alloc(64, elems * sizeof(float));
    if (!a || !b || !c) {
        fprintf(stderr, "gemm_peak: out of memory for %ldx%ld matrices\n", nmax, nmax);
        return 1;
    }
    unsigned x = 12345;
    for (size_t i = 0; i < elems; i++) {
        x = x * 1103515245u + 12345u;
        a[i] = (float)((x >> 8) & 0xffff) / 65536.0f - 0.5f;
        x = x * 1103515245u + 12345u;
        b[i] = (float)((x >> 8) & 0xffff) / 65536.0f - 0.5f;
        c[i] = 0;
    }

    double peak = 0;
    printf("{\"threads\": %d, \"corename\": \"%s\", \"config\": \"%s\", \"results\": [",
           openblas_get_num_threads(), openblas_get_corename(), openblas_get_config());
    for (int s = 0; s < nsizes; s++) {
        int n = (int)sizes[s];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double best = 1e30;
        for (int r = 0; r < reps; r++) {
            double t0 = now();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
            double t = now() - t0;
            if (t < best) best = t;
        }
        double gf = 2.0 * n * (double)n * (double)n / best * 1e-9;
        if (gf > peak) peak = gf;
        printf("%s{\"n\": %d, \"best_seconds\": %.6f, \"gflops\": %.1f}", s ? ", " : "", n, best, gf);
    }
    printf("], \"peak_gflops\": %.1f, \"checksum\": %.3f}\n", peak, (double)c[0] + (double)c[elems - 1]);
    free(a);
    free(b);
    free(c);
    return 0;
}
