/* The CPU caching allocator (see cpu_alloc.h).
 *
 * Size classes: requests are rounded up to 64 bytes, and above 512 bytes to one of 8
 * steps per power of two (at most 12.5% slack). A freed block goes onto its class's
 * stack (kept outside the block, so nothing is written into freed memory) unless the
 * cache would then exceed its bound, in which case it goes back to the system. The
 * class of a freed block is found from malloc_usable_size (the largest class that fits
 * in it), so blocks carry no header and the pointer handed out is the one the system
 * allocator returned: leak checkers and sanitizers see ordinary heap blocks.
 *
 * Under AddressSanitizer cached blocks are poisoned, and under valgrind marked
 * inaccessible, so that a use after free is still reported while a block waits in the
 * cache. */
#include "cpu_alloc.h"
#include "core/error.h"

#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define VG_NOACCESS(p, n) VALGRIND_MAKE_MEM_NOACCESS((p), (n))
#define VG_UNDEFINED(p, n) VALGRIND_MAKE_MEM_UNDEFINED((p), (n))
#endif
#endif
#ifndef VG_NOACCESS
#define VG_NOACCESS(p, n) ((void)(p), (void)(n))
#define VG_UNDEFINED(p, n) ((void)(p), (void)(n))
#endif

/* Classes: index = (octave - 6) * 8 + step, sizes 64 B .. 2^46 B. */
enum { MIN_OCT = 6, MAX_OCT = 46, NCLASS = (MAX_OCT - MIN_OCT + 1) * 8 };

typedef struct {
    void **items;
    int n, cap;
} stack;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static stack g_free[NCLASS];
static size_t g_cached, g_nblocks, g_live, g_hits, g_misses;
static size_t g_limit;
static size_t g_live_bytes, g_peak_bytes; /* size classes handed out; their high mark */
static int g_exiting;

static int floor_log2(size_t x) { return 63 - __builtin_clzll((unsigned long long)x); }

/* Step between classes in octave o. */
static size_t class_step(int o) { return o - 3 >= 6 ? (size_t)1 << (o - 3) : 64; }

static int class_index(size_t csize) {
    int o = floor_log2(csize);
    return (o - MIN_OCT) * 8 + (int)((csize >> (o - 3)) & 7);
}

/* Smallest class size >= n. */
static size_t round_class(size_t n) {
    if (n < 64) n = 64;
    n = (n + 63) & ~(size_t)63;
    size_t step = class_step(floor_log2(n));
    return (n + step - 1) & ~(step - 1);
}

/* Largest class size <= u (u >= 64). */
static size_t floor_class(size_t u) {
    u &= ~(size_t)63;
    size_t step = class_step(floor_log2(u));
    return u & ~(step - 1);
}

size_t ct_cpu_alloc_class_size(size_t nbytes) { return round_class(nbytes); }

static void drain_locked(void) {
    for (int c = 0; c < NCLASS; c++) {
        stack *s = &g_free[c];
        for (int i = 0; i < s->n; i++) {
            UNPOISON(s->items[i], malloc_usable_size(s->items[i]));
            free(s->items[i]);
        }
        free(s->items);
        s->items = NULL;
        s->n = s->cap = 0;
    }
    g_cached = g_nblocks = 0;
}

void ct_cpu_empty_cache(void) {
    pthread_mutex_lock(&g_mu);
    drain_locked();
    pthread_mutex_unlock(&g_mu);
}

static void at_exit(void) {
    pthread_mutex_lock(&g_mu);
    g_exiting = 1;
    drain_locked();
    pthread_mutex_unlock(&g_mu);
}

static void init_once(void) {
    size_t lim = 0;
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    if (pages > 0 && psz > 0) lim = (size_t)pages * (size_t)psz / 4;
    if (lim > ((size_t)8 << 30)) lim = (size_t)8 << 30;
    if (lim == 0) lim = (size_t)1 << 30;
    const char *e = getenv("CTORCH_CPU_CACHE_MB");
    if (e && *e) {
        char *end;
        unsigned long long mb = strtoull(e, &end, 10);
        if (*end == 0) lim = (size_t)mb << 20;
    }
    g_limit = lim;
    atexit(at_exit);
}

size_t ct_cpu_alloc_set_limit(size_t bytes) {
    pthread_once(&g_once, init_once);
    pthread_mutex_lock(&g_mu);
    size_t prev = g_limit;
    g_limit = bytes;
    if (bytes == 0) drain_locked();
    pthread_mutex_unlock(&g_mu);
    return prev;
}

void ct_cpu_alloc_get_stats(ct_cpu_alloc_stats *s) {
    pthread_once(&g_once, init_once);
    pthread_mutex_lock(&g_mu);
    s->cached_bytes = g_cached;
    s->cached_blocks = g_nblocks;
    s->live_blocks = g_live;
    s->hits = g_hits;
    s->misses = g_misses;
    s->limit = g_limit;
    s->live_bytes = g_live_bytes;
    s->peak_bytes = g_peak_bytes;
    pthread_mutex_unlock(&g_mu);
}

void ct_cpu_alloc_reset_peak(void) {
    pthread_once(&g_once, init_once);
    pthread_mutex_lock(&g_mu);
    g_peak_bytes = g_live_bytes;
    pthread_mutex_unlock(&g_mu);
}

void *ct_cpu_alloc(size_t nbytes) {
    pthread_once(&g_once, init_once);
    size_t csize = round_class(nbytes ? nbytes : 1);
    int c = floor_log2(csize) <= MAX_OCT ? class_index(csize) : -1;
    void *p = NULL;
    pthread_mutex_lock(&g_mu);
    if (c >= 0 && g_free[c].n > 0) {
        p = g_free[c].items[--g_free[c].n];
        g_cached -= csize;
        g_nblocks--;
        g_hits++;
    } else {
        g_misses++;
    }
    g_live++;
    g_live_bytes += csize;
    if (g_live_bytes > g_peak_bytes) g_peak_bytes = g_live_bytes;
    pthread_mutex_unlock(&g_mu);
    if (p) {
        UNPOISON(p, csize);
        VG_UNDEFINED(p, nbytes ? nbytes : 1);
        return p;
    }
    if (posix_memalign(&p, 64, csize) != 0) {
        /* Give the cache back and try once more before failing. */
        ct_cpu_empty_cache();
        if (posix_memalign(&p, 64, csize) != 0) p = NULL;
    }
    if (!p) {
        pthread_mutex_lock(&g_mu);
        g_live--;
        g_live_bytes -= csize;
        pthread_mutex_unlock(&g_mu);
        return ct_error_null("out of memory: could not allocate %zu bytes on the CPU", nbytes);
    }
    return p;
}

void ct_cpu_free(void *p) {
    if (!p) return;
    size_t u = malloc_usable_size(p);
    size_t csize = u >= 64 ? floor_class(u) : 0;
    int c = csize && floor_log2(csize) <= MAX_OCT ? class_index(csize) : -1;
    pthread_mutex_lock(&g_mu);
    g_live--;
    g_live_bytes -= csize < g_live_bytes ? csize : g_live_bytes;
    int keep = c >= 0 && !g_exiting && g_cached + csize <= g_limit;
    if (keep) {
        stack *s = &g_free[c];
        if (s->n == s->cap) {
            int cap = s->cap ? s->cap * 2 : 8;
            void **v = realloc(s->items, sizeof(void *) * (size_t)cap);
            if (!v) keep = 0;
            else {
                s->items = v;
                s->cap = cap;
            }
        }
        if (keep) {
            /* Marked before it can be handed out again (under the lock). */
            POISON(p, u);
            VG_NOACCESS(p, u);
            s->items[s->n++] = p;
            g_cached += csize;
            g_nblocks++;
        }
    }
    pthread_mutex_unlock(&g_mu);
    if (!keep) free(p);
}
