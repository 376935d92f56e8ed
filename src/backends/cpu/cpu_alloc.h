/* The CPU caching allocator (internal). Freed blocks are kept in size-class free lists
 * and handed out again, so that a training loop in steady state neither calls malloc
 * nor page-faults: glibc maps large activation buffers afresh on every allocation and
 * unmaps them on free. Blocks are 64-byte aligned. The cache is bounded (a quarter of
 * physical memory, at most 8 GiB; CTORCH_CPU_CACHE_MB overrides, 0 disables caching),
 * thread-safe, and emptied at exit. */
#ifndef CT_CPU_ALLOC_H
#define CT_CPU_ALLOC_H

#include <stddef.h>

void *ct_cpu_alloc(size_t nbytes); /* NULL + ct_error when out of memory */
void ct_cpu_free(void *p);         /* NULL is fine */
/* Returns every cached block to the system. */
void ct_cpu_empty_cache(void);

typedef struct {
    size_t cached_bytes, cached_blocks; /* in the free lists now */
    size_t live_blocks;                 /* handed out and not yet freed */
    size_t hits, misses;                /* allocations served from the cache / the system */
    size_t limit;                       /* cache bound in bytes */
    size_t live_bytes;                  /* handed out and not yet freed (size classes) */
    size_t peak_bytes;                  /* the most live_bytes since the last reset */
} ct_cpu_alloc_stats;
void ct_cpu_alloc_get_stats(ct_cpu_alloc_stats *s);
/* Sets peak_bytes to live_bytes (to measure the peak of one piece of work; for tests). */
void ct_cpu_alloc_reset_peak(void);
/* Size actually reserved for a request (its size class); for tests. */
size_t ct_cpu_alloc_class_size(size_t nbytes);
/* Sets the cache bound in bytes (0 disables caching and empties the cache); for tests.
 * Returns the previous bound. */
size_t ct_cpu_alloc_set_limit(size_t bytes);

#endif
