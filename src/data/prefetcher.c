/* Device prefetcher: a DataLoader's batches on a device, one batch ahead.
 *
 * CUDA. One batch is in flight: its device tensors were allocated and the host-to-device
 * copies into them queued on the device's copy stream, followed by the event `copied`.
 * next() hands that batch out after making the compute stream wait for `copied` (on the
 * GPU; the host goes on), then at once takes the loader's next batch and queues its copy,
 * which therefore runs while the caller's kernels for the batch just handed out run on the
 * compute stream. The CPU batch is released right after its copy is queued: a pinned block
 * goes back to the plugin's cache, which hands it out again only once the copy from it has
 * completed (the plugin records an event per block); a pageable batch goes through the
 * plugin's staging ring, which the host has already finished reading.
 *
 * A batch in flight that is dropped (start_epoch, free) may still be being written by its
 * copy: the compute stream waits for `copied` before the tensors are freed, because the
 * caching allocator hands memory out again in compute-stream order.
 *
 * A device whose backend has no streams (the CPU: no copy_h2d_async_on among its extra
 * entry points) gets the loader's batches unchanged. */
#include "ctorch_data.h"

#include "core/backend.h"
#include "core/error.h"
#include "core/tensor_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ct_device_prefetcher {
    ct_dataloader *dl;
    ct_device dev;
    int async; /* the device's backend has streams */
    struct { /* its stream and event entry points (CT_BACKEND_PROCS) */
        ct_proc_event_create_fn event_create;
        ct_proc_event_destroy_fn event_destroy;
        ct_proc_event_record_fn event_record;
        ct_proc_event_synchronize_fn event_synchronize;
        ct_proc_stream_wait_event_fn stream_wait_event;
        ct_proc_copy_h2d_async_on_fn copy_h2d_async_on;
    } cu;
    ct_event *copied; /* recorded on the copy stream after the batch in flight */
    ct_tensor *x, *y;      /* the batch in flight (device tensors), NULL when none */
    int ended;             /* the loader reported the end of the epoch */
    int deferred;          /* preparing the batch in flight failed: report it next */
    char err[1024];
};

/* 1 when the backend has the stream API (p->cu filled), 0 when it has none, -1 when it has
 * only part of it. */
static int resolve(ct_device_prefetcher *p, const ct_backend *b) {
    static const char *const names[] = {"event_create",      "event_destroy",
                                        "event_record",      "event_synchronize",
                                        "stream_wait_event", "copy_h2d_async_on"};
    void *f[6];
    int found = 0;
    for (int i = 0; i < 6; i++) found += (f[i] = ct_backend_find_proc(b, names[i])) != 0;
    if (found == 0) return 0;
    if (found < 6)
        return ct_error("the %s backend has only part of the stream API (%d of 6 functions)",
                        b->name, found);
    *(void **)&p->cu.event_create = f[0];
    *(void **)&p->cu.event_destroy = f[1];
    *(void **)&p->cu.event_record = f[2];
    *(void **)&p->cu.event_synchronize = f[3];
    *(void **)&p->cu.stream_wait_event = f[4];
    *(void **)&p->cu.copy_h2d_async_on = f[5];
    return 1;
}

ct_device_prefetcher *ct_device_prefetcher_new(ct_dataloader *dl, ct_device device) {
    if (!dl) return ct_error_null("device_prefetcher: loader is NULL");
    if ((unsigned)device.type >= CT_NUM_DEVICE_TYPES)
        return ct_error_null("device_prefetcher: unknown device type %d (cpu or cuda)",
                             (int)device.type);
    if (device.index < 0) {
        char d[32];
        ct_device_str(device, d, sizeof d);
        return ct_error_null("device_prefetcher: %s is not a device (indices start at 0)", d);
    }
    const ct_backend *b = ct_backend_get(device.type);
    if (!b) {
        ct_error_context("device_prefetcher");
        return NULL;
    }
    ct_device_prefetcher *p = calloc(1, sizeof *p);
    if (!p) return ct_error_null("device_prefetcher: out of memory");
    p->dl = dl;
    p->dev = device;
    int r = resolve(p, b);
    if (r > 0 && !(p->copied = p->cu.event_create(device.index))) r = -1;
    if (r < 0) {
        ct_error_context("device_prefetcher");
        free(p);
        return NULL;
    }
    p->async = r > 0;
    return p;
}

ct_device ct_device_prefetcher_device(const ct_device_prefetcher *p) {
    return p ? p->dev : ct_cpu();
}

/* Frees the batch in flight, once the compute stream waits for its copy. */
static void drop_in_flight(ct_device_prefetcher *p) {
    if (!p->x && !p->y) return;
    char saved[sizeof p->err];
    snprintf(saved, sizeof saved, "%s", ct_last_error());
    if (p->cu.stream_wait_event(CT_STREAM_COMPUTE, p->copied) != 0)
        p->cu.event_synchronize(p->copied); /* the host waits instead */
    ct_free(p->x);
    ct_free(p->y);
    p->x = p->y = NULL;
    ct_error("%s", saved); /* whatever failed here, keep the caller's message */
}

/* Takes the loader's next batch and queues its copy to the device on the copy stream.
 * Returns 1 (the batch is in flight), 0 at the end of the epoch, -1 on error. */
static int fetch(ct_device_prefetcher *p) {
    ct_tensor *xc = NULL, *yc = NULL;
    int r = ct_dataloader_next(p->dl, &xc, &yc);
    if (r <= 0) return r;
    ct_tensor *xd = ct_empty_on(xc->shape, xc->ndim, xc->dtype, p->dev);
    ct_tensor *yd = xd ? ct_empty_on(yc->shape, yc->ndim, yc->dtype, p->dev) : NULL;
    int rc = -1;
    if (xd && yd) {
        rc = p->cu.copy_h2d_async_on(xd, xc, CT_STREAM_COPY);
        if (rc == 0) rc = p->cu.copy_h2d_async_on(yd, yc, CT_STREAM_COPY);
        if (rc == 0) rc = p->cu.event_record(p->copied, CT_STREAM_COPY);
    }
    ct_free(xc); /* pinned blocks are reused only once the copies from them completed */
    ct_free(yc);
    p->x = ct__own(xd); /* the prefetcher's until handed out */
    p->y = ct__own(yd);
    if (rc != 0) {
        if (xd && yd) { /* a copy may be queued into xd: wait for the copy stream */
            char saved[sizeof p->err];
            snprintf(saved, sizeof saved, "%s", ct_last_error());
            if (p->cu.event_record(p->copied, CT_STREAM_COPY) == 0)
                p->cu.event_synchronize(p->copied);
            ct_error("%s", saved);
        }
        ct_free(p->x);
        ct_free(p->y);
        p->x = p->y = NULL;
        char d[32];
        ct_device_str(p->dev, d, sizeof d);
        ct_error_context("device_prefetcher: copying a batch to %s", d);
        return -1;
    }
    return 1;
}

int ct_device_prefetcher_start_epoch(ct_device_prefetcher *p, int64_t epoch) {
    return ct_device_prefetcher_start_epoch_at(p, epoch, 0);
}

int ct_device_prefetcher_start_epoch_at(ct_device_prefetcher *p, int64_t epoch, int64_t first_batch) {
    if (!p) return ct_error("device_prefetcher_start_epoch: prefetcher is NULL");
    if (epoch < 0)
        return ct_error("device_prefetcher_start_epoch: epoch must be >= 0, got %lld",
                        (long long)epoch);
    if (p->async) {
        drop_in_flight(p);
        p->ended = 0;
        p->deferred = 0;
    }
    return ct_dataloader_start_epoch_at(p->dl, epoch, first_batch);
}

int ct_device_prefetcher_next(ct_device_prefetcher *p, ct_tensor **images, ct_tensor **labels) {
    if (images) *images = NULL;
    if (labels) *labels = NULL;
    if (!p || !images || !labels)
        return ct_error("device_prefetcher_next: prefetcher, images and labels must be "
                        "non-NULL");
    if (!p->async) return ct_dataloader_next(p->dl, images, labels);
    if (p->deferred) {
        p->deferred = 0;
        return ct_error("%s", p->err);
    }
    if (!p->x) {
        if (p->ended) { /* the end, once; the next call starts the loader's next epoch */
            p->ended = 0;
            return 0;
        }
        int r = fetch(p);
        if (r == 0) p->ended = 1;
        if (r <= 0) return r;
    }
    ct_tensor *x = p->x, *y = p->y;
    p->x = p->y = NULL;
    /* Kernels queued from now on on the compute stream run after the batch's copy. */
    if (p->cu.stream_wait_event(CT_STREAM_COMPUTE, p->copied) != 0) {
        char saved[sizeof p->err];
        snprintf(saved, sizeof saved, "%s", ct_last_error());
        p->cu.event_synchronize(p->copied);
        ct_free(x);
        ct_free(y);
        return ct_error("device_prefetcher: %s", saved);
    }
    /* Queue the next batch's copy now: it overlaps with the caller's compute on this one. */
    if (!p->ended) {
        int r = fetch(p);
        if (r == 0) p->ended = 1;
        if (r < 0) {
            p->deferred = 1;
            snprintf(p->err, sizeof p->err, "%s", ct_last_error());
        }
    }
    *images = ct__scope_adopt(x); /* now the caller's */
    *labels = ct__scope_adopt(y);
    return 1;
}

void ct_device_prefetcher_free(ct_device_prefetcher *p) {
    if (!p) return;
    if (p->async) {
        drop_in_flight(p);
        p->cu.event_destroy(p->copied);
    }
    free(p);
}
