/* One process-wide thread pool. ct_parallel_for splits [0, n) into one contiguous
 * chunk per thread; the calling thread runs chunk 0. Workers spin briefly, then sleep
 * on a condition variable. OpenBLAS is kept single-threaded (set here) so that BLAS
 * calls made inside chunks never start threads of their own. */
#include "parallel.h"
#include "ctorch.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

extern void openblas_set_num_threads(int);

#define MAX_THREADS 256

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th[MAX_THREADS];
    int nthreads;   /* total including the caller */
    int started;    /* workers running */
    atomic_uint_fast64_t gen;
    atomic_int remaining;
    int shutdown;
    /* current job */
    ct_range_fn fn;
    void *ctx;
    int64_t n;
    int nchunks;
    uint64_t start_gen;
} P = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static pthread_mutex_t g_submit = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t g_blas_once = PTHREAD_ONCE_INIT;

/* OpenBLAS must never start threads of its own: ours own the cores. Done once, before
 * the first GEMM can run (every entry point of this file calls it). */
static void blas_single_thread(void) { openblas_set_num_threads(1); }
static _Thread_local int t_index;
static _Thread_local int t_in_parallel;
static atomic_int g_requested = 0;

int ct_thread_index(void) { return t_index; }
int ct_in_parallel(void) { return t_in_parallel; }

static void run_chunk(int c) {
    int64_t n = P.n, k = P.nchunks;
    int64_t b = n * c / k, e = n * (c + 1) / k;
    if (b < e) P.fn(P.ctx, b, e);
}

static void *worker(void *arg) {
    int idx = (int)(intptr_t)arg;
    t_index = idx;
    t_in_parallel = 1;
    uint64_t seen = P.start_gen;
    for (;;) {
        uint64_t g;
        int spins = 0;
        while ((g = atomic_load(&P.gen)) == seen && spins < 20000) {
            spins++;
            if ((spins & 63) == 0) sched_yield();
        }
        if (g == seen) {
            pthread_mutex_lock(&P.mu);
            while ((g = atomic_load(&P.gen)) == seen && !P.shutdown) pthread_cond_wait(&P.cv, &P.mu);
            pthread_mutex_unlock(&P.mu);
        }
        if (P.shutdown) return NULL;
        seen = g;
        if (idx < P.nchunks) run_chunk(idx);
        atomic_fetch_sub(&P.remaining, 1);
    }
}

static void stop_workers(void) {
    if (!P.started) return;
    pthread_mutex_lock(&P.mu);
    P.shutdown = 1;
    atomic_fetch_add(&P.gen, 1);
    pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
    for (int i = 1; i < P.nthreads; i++) pthread_join(P.th[i], NULL);
    P.started = 0;
    P.shutdown = 0;
}

static int default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
    return n > 0 ? (int)n : 1;
}

static void ensure_pool(void) {
    int want = atomic_load(&g_requested);
    if (want <= 0) want = default_threads();
    if (want > MAX_THREADS) want = MAX_THREADS;
    if (P.started && P.nthreads == want) return;
    stop_workers();
    P.nthreads = want;
    P.start_gen = atomic_load(&P.gen);
    for (int i = 1; i < want; i++) pthread_create(&P.th[i], NULL, worker, (void *)(intptr_t)i);
    P.started = 1;
    static int registered;
    if (!registered) {
        registered = 1;
        atexit(stop_workers);
    }
}

void ct_set_num_threads(int n) {
    atomic_store(&g_requested, n);
    pthread_mutex_lock(&g_submit);
    if (P.started) ensure_pool();
    pthread_mutex_unlock(&g_submit);
}

int ct_get_num_threads(void) {
    pthread_once(&g_blas_once, blas_single_thread);
    int want = atomic_load(&g_requested);
    return want > 0 ? (want > MAX_THREADS ? MAX_THREADS : want) : default_threads();
}

void ct_parallel_for(int64_t n, int64_t grain, ct_range_fn fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int nt = ct_get_num_threads();
    if (t_in_parallel || nt <= 1 || n < 2 * grain || pthread_mutex_trylock(&g_submit) != 0) {
        fn(ctx, 0, n);
        return;
    }
    ensure_pool();
    int64_t chunks = n / grain;
    if (chunks > P.nthreads) chunks = P.nthreads;
    P.fn = fn;
    P.ctx = ctx;
    P.n = n;
    P.nchunks = (int)chunks;
    atomic_store(&P.remaining, P.nthreads - 1);
    pthread_mutex_lock(&P.mu);
    atomic_fetch_add(&P.gen, 1);
    pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
    t_in_parallel = 1;
    run_chunk(0);
    t_in_parallel = 0;
    while (atomic_load(&P.remaining) > 0) sched_yield();
    pthread_mutex_unlock(&g_submit);
}
