/* Pinned (page-locked) host memory for DataLoader batches (pin_memory), obtained from the
 * CUDA plugin's cached pinned allocator. Not part of the public API. */
#ifndef CT_DATA_PIN_MEMORY_H
#define CT_DATA_PIN_MEMORY_H

#include "ctorch.h"

/* Whether batches can be pinned here: loads the CUDA plugin and resolves its pinned
 * allocator. When CUDA cannot be used, prints the one-time warning (see
 * ct__pin_memory_warnings) and returns 0; never an error. Thread-safe. */
int ct__pin_memory_enable(void);
/* An uninitialised contiguous CPU tensor in pinned memory, handed back to the plugin's
 * cache when its last reference goes (the plugin reuses the block only after every copy
 * queued from it has completed). Only after ct__pin_memory_enable() returned 1. When the
 * pinned allocation fails (RAM, `ulimit -l`) the tensor is allocated in ordinary memory
 * and one warning per process is printed. NULL + error only when out of memory.
 * Thread-safe (the DataLoader's workers call it). */
ct_tensor *ct__empty_pinned(const int64_t *shape, int ndim, ct_dtype dt);
/* Whether t's memory comes from ct__empty_pinned's pinned allocation. */
int ct__is_pinned(const ct_tensor *t);
/* How many "pin_memory is set but CUDA is unavailable" warnings this process printed:
 * 0 or 1 (for tests). */
int ct__pin_memory_warnings(void);

#endif
