/* Reference-counted storage, allocated by the device's backend. */
#include "backend.h"
#include "error.h"

#include <stdlib.h>

ct_storage *ct_storage_new(size_t nbytes, ct_device dev) {
    const ct_backend *b = ct_backend_get(dev.type);
    if (!b) return NULL;
    ct_storage *s = calloc(1, sizeof *s);
    if (!s) return ct_error_null("out of memory allocating a storage header");
    s->data = b->alloc(nbytes ? nbytes : 1, dev.index);
    if (!s->data) {
        free(s);
        return NULL;
    }
    atomic_init(&s->refcount, 1);
    atomic_init(&s->version, 0);
    s->nbytes = nbytes;
    s->device = dev;
    return s;
}

void ct_storage_release(ct_storage *s) {
    if (!s || atomic_fetch_sub(&s->refcount, 1) != 1) return;
    if (s->deleter) s->deleter(s->data, s->deleter_ctx);
    else if (s->data) {
        const ct_backend *b = ct_backend_get(s->device.type);
        if (b) b->free(s->data, s->device.index);
    }
    free(s);
}
