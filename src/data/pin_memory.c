/* Pinned host memory for DataLoader batches. The memory comes from the first backend that
 * offers it (the extra entry points host_alloc / host_free, ct_backend_proc: the CUDA
 * plugin's cache of cudaHostAlloc blocks): the core never links a CUDA library. A pinned
 * batch is an ordinary CPU tensor (ct_from_blob) whose deleter returns the block to that
 * cache.
 *
 * Like PyTorch, pin_memory without an accelerator is not an error: the loader warns once
 * per process and uses ordinary memory. */
#include "data/pin_memory.h"

#include "core/backend.h"
#include "core/error.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static ct_proc_host_alloc_fn g_alloc;
static ct_proc_host_free_fn g_free;
static char g_why[1024];
static atomic_int g_warned_unavailable, g_warned_alloc;

static void resolve(void) {
    snprintf(g_why, sizeof g_why, "no backend offers pinned memory");
    for (int t = 0; t < CT_NUM_DEVICE_TYPES && !g_alloc; t++) {
        const ct_backend *b = ct_backend_get((ct_device_type)t);
        if (!b) { /* an accelerator that cannot be used here: its reason */
            snprintf(g_why, sizeof g_why, "%s", ct_last_error());
            continue;
        }
        void *a = ct_backend_find_proc(b, "host_alloc");
        void *f = ct_backend_find_proc(b, "host_free");
        if (a && f) {
            *(void **)&g_alloc = a;
            *(void **)&g_free = f;
        }
    }
    ct_clear_error();
}

int ct__pin_memory_enable(void) {
    pthread_once(&g_once, resolve);
    if (g_alloc) return 1;
    if (atomic_exchange(&g_warned_unavailable, 1) == 0)
        fprintf(stderr,
                "ctorch: warning: DataLoader pin_memory is set but no GPU is usable, so "
                "batches stay in ordinary (pageable) memory; pin_memory only helps copies to "
                "a GPU (%s)\n",
                g_why);
    return 0;
}

int ct__pin_memory_warnings(void) { return atomic_load(&g_warned_unavailable); }

static void pinned_deleter(void *data, void *ctx) {
    (void)ctx;
    g_free(data);
}

ct_tensor *ct__empty_pinned(const int64_t *shape, int ndim, ct_dtype dt) {
    if (!g_alloc) return ct_empty(shape, ndim, dt);
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) numel *= shape[d];
    size_t nbytes = (size_t)numel * ct_dtype_size(dt);
    void *p = g_alloc(nbytes ? nbytes : 1);
    if (!p) {
        if (atomic_exchange(&g_warned_alloc, 1) == 0)
            fprintf(stderr,
                    "ctorch: warning: DataLoader pin_memory: %s; batches that cannot be pinned "
                    "use ordinary memory (slower host-to-device copies)\n",
                    ct_last_error());
        return ct_empty(shape, ndim, dt);
    }
    ct_tensor *t = ct_from_blob(p, shape, ndim, dt, pinned_deleter, NULL);
    if (!t) g_free(p);
    return t;
}

int ct__is_pinned(const ct_tensor *t) {
    return t && g_alloc && t->storage->deleter == pinned_deleter;
}
