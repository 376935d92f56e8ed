/* Pinned host memory for DataLoader batches. The memory comes from the CUDA plugin
 * (ct_cuda_host_alloc / ct_cuda_host_free, a cache of cudaHostAlloc blocks), reached with
 * dlsym on the plugin's handle: the core never links a CUDA library. A pinned batch is an
 * ordinary CPU tensor (ct_from_blob) whose deleter returns the block to that cache.
 *
 * Like PyTorch, pin_memory without an accelerator is not an error: the loader warns once
 * per process and uses ordinary memory. */
#include "data/pin_memory.h"

#include "backends/cuda/cuda_plugin.h"
#include "core/backend.h"
#include "core/error.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static ct_cuda_host_alloc_fn g_alloc;
static ct_cuda_host_free_fn g_free;
static char g_why[1024];
static atomic_int g_warned_unavailable, g_warned_alloc;

static void resolve(void) {
    int avail = 0;
    const char *why = ct_cuda_status(&avail);
    if (!avail) {
        snprintf(g_why, sizeof g_why, "%s", why ? why : "unknown reason");
        return;
    }
    void *a = ct_cuda_plugin_symbol("ct_cuda_host_alloc");
    void *f = a ? ct_cuda_plugin_symbol("ct_cuda_host_free") : NULL;
    if (!a || !f) {
        snprintf(g_why, sizeof g_why, "%s", ct_last_error());
        return;
    }
    *(void **)&g_alloc = a;
    *(void **)&g_free = f;
}

int ct__pin_memory_enable(void) {
    pthread_once(&g_once, resolve);
    if (g_alloc) return 1;
    if (atomic_exchange(&g_warned_unavailable, 1) == 0)
        fprintf(stderr,
                "ctorch: warning: DataLoader pin_memory is set but CUDA is unavailable, so "
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
