/* DistributedDataParallel (include/ctorch_dist.h), PyTorch's reducer in C.
 *
 * Buckets: the parameters in reverse registration order (gradients become final roughly
 * in that order during backward), cut into buckets of at most bucket_cap_mb of one dtype
 * and device. Each bucket owns one flat buffer.
 *
 * During ct_backward every parameter's post-accumulate-grad hook marks it ready; when all
 * the parameters of the next bucket in order are ready, its gradients are copied into the
 * flat buffer and an all-reduce (sum) is queued: the communication thread runs it while
 * backward goes on. Buckets are launched strictly in index order, so every rank issues
 * the same collectives in the same order even when a parameter is used on one rank and
 * not on another. The callback queued for the end of backward marks the parameters that
 * got no gradient (zeros in their slots), launches the rest, all-reduces a "used" flag per
 * parameter (max), waits, and writes the averaged gradients back: a parameter that got a
 * gradient on no rank keeps the gradient it had (none, normally). */
#include "ctorch_dist.h"
#include "core/autograd.h"
#include "core/error.h"
#include "core/tensor_impl.h"
#include "dist/dist_internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    int first, count; /* into d->order */
    int64_t numel;
    ct_tensor *flat;
    ct_dist_work *work;
    int pending; /* parameters not ready yet in this backward */
    int64_t tail; /* the last bucket on the host: the "got a gradient" and caller's flags ride
                     after the gradients (summed), saving a collective per step */
} bucket;

struct ct_ddp {
    ct_module *m;
    ct_ddp_opts o;
    int np;
    ct_tensor **params;  /* registration order (borrowed from the module) */
    struct addr_idx {
        uintptr_t addr;
        int idx;
    } *by_addr;          /* the parameters sorted by address (find_param) */
    int *order;          /* bucket order: order[k] = parameter index */
    int *pbucket;        /* parameter -> bucket */
    int64_t *poff;       /* parameter -> offset in its bucket's buffer */
    int *ready, *got;    /* this backward */
    int32_t *used;       /* all-reduced "got a gradient" flags, then the caller's flags */
    ct_tensor *used_t;
    bucket *b;
    int nb, next_launch;
    int active, sync, overlap;
    int world;
    ct_tensor **buffers;
    int nbuf;
    double last_wait, comm_secs;
    int32_t flags[CT_DDP_MAX_FLAGS]; /* the caller's, reduced with the gradients */
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

ct_ddp_opts ct_ddp_default_opts(void) { return (ct_ddp_opts){.bucket_cap_mb = 25, .broadcast_buffers = 1}; }

/* ------------------------------------------------------------------ model check */
/* "name dtype [shape]\n" per state_dict entry. */
static char *signature(const ct_state_dict *sd) {
    size_t cap = 256, len = 0;
    char *s = malloc(cap);
    if (!s) return NULL;
    s[0] = 0;
    for (int i = 0; i < sd->n; i++) {
        char shape[128], line[512];
        int k = snprintf(line, sizeof line, "%s %s %s\n", sd->names[i],
                         ct_dtype_name(ct_dtype_of(sd->tensors[i])),
                         ct_shape_str(sd->tensors[i], shape, sizeof shape));
        if (len + (size_t)k + 1 > cap) {
            while (len + (size_t)k + 1 > cap) cap *= 2;
            char *t = realloc(s, cap);
            if (!t) return free(s), NULL;
            s = t;
        }
        memcpy(s + len, line, (size_t)k + 1);
        len += (size_t)k;
    }
    return s;
}

/* First differing line of two signatures, for the message. */
static void first_difference(const char *a, const char *b, char *out, size_t n) {
    while (*a || *b) {
        const char *ea = strchr(a, '\n'), *eb = strchr(b, '\n');
        size_t la = ea ? (size_t)(ea - a) : strlen(a), lb = eb ? (size_t)(eb - b) : strlen(b);
        if (la != lb || memcmp(a, b, la)) {
            snprintf(out, n, "rank 0 has \"%.*s\", this rank has \"%.*s\"", (int)(la > 200 ? 200 : la),
                     la ? a : "(nothing more)", (int)(lb > 200 ? 200 : lb), lb ? b : "(nothing more)");
            if (!la) snprintf(out, n, "this rank has more entries, from \"%.*s\"", (int)lb, b);
            if (!lb) snprintf(out, n, "rank 0 has more entries, from \"%.*s\"", (int)la, a);
            return;
        }
        a += la + (ea != NULL);
        b += lb + (eb != NULL);
    }
    snprintf(out, n, "(no difference found)");
}

/* Every rank built the same model? Rank 0's signature is broadcast; each rank compares;
 * the verdict is all-reduced so that every rank fails together. */
static int check_same_model(const ct_state_dict *sd) {
    char *mine = signature(sd);
    if (!mine) return ct_error("DDP: out of memory");
    int64_t len = (int64_t)strlen(mine) + 1;
    int rc = ct_dist_broadcast_buf(&len, sizeof len, 0);
    char *ref = rc == 0 ? calloc((size_t)len, 1) : NULL;
    if (rc == 0 && !ref) rc = ct_error("DDP: out of memory");
    if (rc == 0 && ct_dist_rank() == 0) memcpy(ref, mine, (size_t)len);
    if (rc == 0) rc = ct_dist_broadcast_buf(ref, len, 0);
    int32_t bad[2] = {0, 0};
    char diff[600] = "";
    if (rc == 0 && strcmp(ref, mine) != 0) {
        bad[0] = 1;
        bad[1] = ct_dist_rank();
        first_difference(ref, mine, diff, sizeof diff);
    }
    if (rc == 0) rc = ct_dist_all_reduce_buf(bad, 2, CT_INT32, CT_REDUCE_MAX);
    char where[300];
    if (rc == 0 && bad[0]) {
        if (diff[0])
            rc = ct_error("DDP (%s): the ranks built different models: %s. Build the same model "
                          "(same options) on every rank", ct__dist_where(where, sizeof where), diff);
        else
            rc = ct_error("DDP (%s): the ranks built different models (rank %d's differs from rank "
                          "0's; see its message)", ct__dist_where(where, sizeof where), bad[1]);
    }
    free(mine);
    free(ref);
    return rc;
}

/* ------------------------------------------------------------------ buckets */
static void set_elem(ct_tensor *t, int64_t i, double v) {
    if (ct_dtype_of(t) == CT_FLOAT64) ((double *)ct_data(t))[i] = v;
    else ((float *)ct_data(t))[i] = (float)v;
}

static double get_elem(const ct_tensor *t, int64_t i) {
    return ct_dtype_of(t) == CT_FLOAT64 ? ((const double *)ct_data(t))[i] : ((const float *)ct_data(t))[i];
}

static int launch(ct_ddp *d, int bi) {
    bucket *b = &d->b[bi];
    for (int k = b->first; k < b->first + b->count; k++) {
        int p = d->order[k];
        ct_tensor *param = d->params[p];
        ct_tensor *slice = ct_narrow(b->flat, 0, d->poff[p], ct_numel(param));
        ct_tensor *view = slice ? ct_view(slice, param->shape, param->ndim) : NULL;
        int rc = view ? 0 : -1;
        if (rc == 0) rc = d->got[p] && param->grad ? ct_copy_(view, param->grad) : ct_fill_(view, 0.0);
        ct_free(view);
        ct_free(slice);
        if (rc) return ct_error_context("DDP: filling bucket %d", bi), -1;
    }
    if (b->tail) { /* every parameter is final once the last bucket goes */
        int64_t at = b->numel;
        for (int p = 0; p < d->np; p++, at++) set_elem(b->flat, at, d->got[p]);
        for (int i = 0; i < CT_DDP_MAX_FLAGS; i++, at++) set_elem(b->flat, at, d->flags[i] != 0);
    }
    b->work = ct_dist_all_reduce_async(b->flat, CT_REDUCE_SUM);
    return b->work ? 0 : -1;
}

static int launch_ready(ct_ddp *d) {
    while (d->next_launch < d->nb && d->b[d->next_launch].pending == 0)
        if (launch(d, d->next_launch++) != 0) return -1;
    return 0;
}

/* The parameter's index (a binary search: the hook runs once per parameter per
 * backward), or -1. Before by_addr exists (ct_ddp_new), a scan. */
static int find_param(const ct_ddp *d, const ct_tensor *t) {
    if (!d->by_addr) {
        for (int i = 0; i < d->np; i++)
            if (d->params[i] == t) return i;
        return -1;
    }
    int lo = 0, hi = d->np - 1;
    uintptr_t want = (uintptr_t)t;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (d->by_addr[mid].addr == want) return d->by_addr[mid].idx;
        if (d->by_addr[mid].addr < want) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

static int cmp_addr(const void *a, const void *b) {
    uintptr_t x = ((const struct addr_idx *)a)->addr, y = ((const struct addr_idx *)b)->addr;
    return x < y ? -1 : x > y;
}

static int end_of_backward(void *user, int backward_rc);

static void start_backward(ct_ddp *d) {
    d->active = 1;
    d->next_launch = 0;
    memset(d->ready, 0, sizeof *d->ready * (size_t)d->np);
    memset(d->got, 0, sizeof *d->got * (size_t)d->np);
    for (int i = 0; i < d->nb; i++) d->b[i].pending = d->b[i].count;
}

static int grad_ready(ct_tensor *leaf, int received, void *user) {
    ct_ddp *d = user;
    if (!d->sync) return 0; /* no_sync: local accumulation */
    if (!d->active) {
        start_backward(d);
        if (ct__queue_backward_callback(end_of_backward, d) != 0) return -1;
    }
    int p = find_param(d, leaf);
    if (p < 0 || d->ready[p]) return 0; /* seen already in this backward */
    d->ready[p] = 1;
    d->got[p] = received;
    d->b[d->pbucket[p]].pending--;
    return d->overlap ? launch_ready(d) : 0;
}

/* Waits for every launched bucket (errors: the first). */
static int wait_all(ct_ddp *d) {
    int rc = 0;
    for (int i = 0; i < d->nb; i++) {
        if (!d->b[i].work) continue;
        int r = ct_dist_wait(d->b[i].work);
        d->b[i].work = NULL;
        if (rc == 0) rc = r;
    }
    return rc;
}

static int end_of_backward(void *user, int backward_rc) {
    ct_ddp *d = user;
    double t0 = now_s();
    d->active = 0;
    if (backward_rc != 0) {
        wait_all(d);
        return backward_rc;
    }
    for (int p = 0; p < d->np; p++)
        if (!d->ready[p]) {
            d->ready[p] = 1;
            d->b[d->pbucket[p]].pending--;
        }
    bucket *last = d->nb ? &d->b[d->nb - 1] : NULL;
    int piggy = last && last->tail;
    for (int p = 0; p < d->np; p++) d->used[p] = d->got[p];
    memcpy(d->used + d->np, d->flags, sizeof d->flags);
    int rc = launch_ready(d);
    ct_dist_work *uw = rc == 0 && !piggy ? ct_dist_all_reduce_async(d->used_t, CT_REDUCE_MAX) : NULL;
    if (rc == 0 && !uw && !piggy) rc = -1;
    int r2 = wait_all(d);
    if (rc == 0) rc = r2;
    if (uw) {
        r2 = ct_dist_wait(uw);
        if (rc == 0) rc = r2;
    }
    d->last_wait = now_s() - t0;
    if (rc == 0 && piggy) /* read before the buffer is scaled */
        for (int i = 0; i < d->np + CT_DDP_MAX_FLAGS; i++) d->used[i] = get_elem(last->flat, last->numel + i) > 0.5;
    if (rc == 0) memcpy(d->flags, d->used + d->np, sizeof d->flags);
    if (rc) return ct_error_context("DDP: reducing gradients"), -1;
    double inv = 1.0 / d->world;
    for (int bi = 0; bi < d->nb && rc == 0; bi++) {
        bucket *b = &d->b[bi];
        rc = ct_mul_scalar_(b->flat, inv);
        for (int k = b->first; rc == 0 && k < b->first + b->count; k++) {
            int p = d->order[k];
            ct_tensor *param = d->params[p];
            if (!d->used[p]) continue; /* no rank produced a gradient */
            ct_tensor *slice = ct_narrow(b->flat, 0, d->poff[p], ct_numel(param));
            ct_tensor *view = slice ? ct_view(slice, param->shape, param->ndim) : NULL;
            if (!view) rc = -1;
            else if (param->grad) rc = ct_copy_(param->grad, view);
            else {
                ct_tensor *g = ct_clone(view);
                rc = g ? ct_set_grad(param, g) : -1;
                ct_free(g);
            }
            ct_free(view);
            ct_free(slice);
        }
    }
    return rc;
}

static int build_buckets(ct_ddp *d) {
    int64_t cap = (int64_t)(d->o.bucket_cap_mb * 1024 * 1024);
    if (cap < 1) cap = 1;
    d->order = malloc(sizeof *d->order * (size_t)(d->np ? d->np : 1));
    d->pbucket = malloc(sizeof *d->pbucket * (size_t)(d->np ? d->np : 1));
    d->poff = malloc(sizeof *d->poff * (size_t)(d->np ? d->np : 1));
    d->ready = calloc((size_t)(d->np ? d->np : 1), sizeof *d->ready);
    d->got = calloc((size_t)(d->np ? d->np : 1), sizeof *d->got);
    d->b = calloc((size_t)(d->np ? d->np : 1), sizeof *d->b);
    if (!d->order || !d->pbucket || !d->poff || !d->ready || !d->got || !d->b)
        return ct_error("DDP: out of memory");
    int64_t bytes = 0;
    for (int k = 0; k < d->np; k++) {
        int p = d->np - 1 - k;
        d->order[k] = p;
        ct_tensor *t = d->params[p];
        int64_t nb = ct_numel(t) * (int64_t)ct_dtype_size(t->dtype);
        bucket *cur = d->nb ? &d->b[d->nb - 1] : NULL;
        ct_tensor *head = cur ? d->params[d->order[cur->first]] : NULL;
        if (!cur || (bytes + nb > cap && cur->count > 0) || head->dtype != t->dtype ||
            ct_device_of(head).type != ct_device_of(t).type ||
            ct_device_of(head).index != ct_device_of(t).index) {
            cur = &d->b[d->nb++];
            cur->first = k;
            bytes = 0;
        }
        d->pbucket[p] = (int)(cur - d->b);
        d->poff[p] = cur->numel;
        cur->numel += ct_numel(t);
        cur->count++;
        bytes += nb;
    }
    for (int i = 0; i < d->nb; i++) {
        ct_tensor *head = d->params[d->order[d->b[i].first]];
        if (i == d->nb - 1 && ct_device_is_host(ct_device_of(head)) &&
            (head->dtype == CT_FLOAT32 || head->dtype == CT_FLOAT64))
            d->b[i].tail = d->np + CT_DDP_MAX_FLAGS;
        int64_t shape[1] = {d->b[i].numel + d->b[i].tail};
        ct_tensor *flat = ct_empty(shape, 1, head->dtype);
        ct_tensor *moved = flat ? ct_to_device(flat, ct_device_of(head)) : NULL;
        ct_free(flat);
        if (!moved) return -1;
        d->b[i].flat = ct__own(moved);
    }
    int64_t ushape[1] = {d->np + CT_DDP_MAX_FLAGS};
    d->used_t = ct__own(ct_zeros(ushape, 1, CT_INT32));
    if (!d->used_t) return -1;
    d->used = ct_data(d->used_t);
    return 0;
}

/* ------------------------------------------------------------------ public */
static int broadcast_all(ct_tensor **t, int n) {
    ct_dist_work **w = calloc((size_t)(n ? n : 1), sizeof *w);
    if (!w) return ct_error("DDP: out of memory");
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++)
        if (!(w[i] = ct_dist_broadcast_async(t[i], 0))) rc = -1;
    for (int i = 0; i < n; i++)
        if (w[i] && ct_dist_wait(w[i]) != 0 && rc == 0) rc = -1;
    free(w);
    return rc;
}

ct_ddp *ct_ddp_new(ct_module *model, const ct_ddp_opts *opts) {
    if (!model) return ct_error_null("DDP: NULL model");
    ct_ddp *d = calloc(1, sizeof *d);
    if (!d) return ct_error_null("DDP: out of memory");
    d->m = model;
    d->o = opts ? *opts : ct_ddp_default_opts();
    if (!(d->o.bucket_cap_mb > 0)) d->o.bucket_cap_mb = 25;
    d->sync = d->overlap = 1;
    d->world = ct_dist_world_size();
    d->params = ct_module_parameters(model, &d->np);
    if (!d->params) return free(d), NULL;
    if (d->world <= 1) return d; /* one process: a plain wrapper */
    ct_state_dict *sd = ct_module_state_dict(model);
    int rc = sd ? check_same_model(sd) : -1;
    /* the buffers: state_dict entries that are not parameters */
    if (rc == 0 && !(d->buffers = calloc((size_t)sd->n + 1, sizeof *d->buffers))) rc = ct_error("DDP: out of memory");
    for (int i = 0; rc == 0 && i < sd->n; i++)
        if (find_param(d, sd->tensors[i]) < 0) d->buffers[d->nbuf++] = ct_module_get_tensor(model, sd->names[i]);
    if (rc == 0) rc = broadcast_all(d->params, d->np);
    if (rc == 0) rc = broadcast_all(d->buffers, d->nbuf);
    ct_state_dict_free(sd);
    if (rc == 0) rc = build_buckets(d);
    if (rc == 0 && !(d->by_addr = malloc(sizeof *d->by_addr * (size_t)(d->np ? d->np : 1))))
        rc = ct_error("DDP: out of memory");
    if (rc == 0) {
        for (int i = 0; i < d->np; i++) d->by_addr[i] = (struct addr_idx){(uintptr_t)d->params[i], i};
        qsort(d->by_addr, (size_t)d->np, sizeof *d->by_addr, cmp_addr);
    }
    for (int i = 0; rc == 0 && i < d->np; i++)
        rc = ct__set_post_accumulate_grad_hook(d->params[i], grad_ready, d);
    if (rc != 0) {
        ct_ddp_free(d);
        return NULL;
    }
    return d;
}

ct_tensor *ct_ddp_forward(ct_ddp *d, const ct_tensor *x) {
    if (!d) return ct_error_null("DDP: NULL handle");
    if (d->world > 1 && d->o.broadcast_buffers && d->nbuf && ct_module_is_training(d->m) &&
        broadcast_all(d->buffers, d->nbuf) != 0)
        return NULL;
    return ct_module_forward(d->m, x);
}

int ct_ddp_set_require_sync(ct_ddp *d, int sync) {
    if (!d) return 0;
    int prev = d->sync;
    d->sync = sync != 0;
    return prev;
}

void ct_ddp_set_overlap(ct_ddp *d, int on) {
    if (d) d->overlap = on != 0;
}
double ct_ddp_last_wait_seconds(const ct_ddp *d) { return d ? d->last_wait : 0; }
int ct_ddp_num_buckets(const ct_ddp *d) { return d ? d->nb : 0; }

void ct_ddp_free(ct_ddp *d) {
    if (!d) return;
    if (d->world > 1) wait_all(d);
    for (int i = 0; i < d->np; i++)
        if (d->params[i]->post_acc_hook == grad_ready && d->params[i]->post_acc_user == d)
            ct__set_post_accumulate_grad_hook(d->params[i], NULL, NULL);
    for (int i = 0; i < d->nb; i++) ct_free(d->b[i].flat);
    ct_free(d->used_t);
    free(d->b);
    free(d->order);
    free(d->pbucket);
    free(d->poff);
    free(d->ready);
    free(d->got);
    free(d->buffers);
    free(d->by_addr);
    free(d->params);
    free(d);
}

int ct_ddp_set_flags(ct_ddp *d, const int32_t *flags, int n) {
    if (!d || n < 0 || n > CT_DDP_MAX_FLAGS || (n && !flags))
        return ct_error("DDP: set_flags: at most %d flags", CT_DDP_MAX_FLAGS);
    memset(d->flags, 0, sizeof d->flags);
    if (n) memcpy(d->flags, flags, sizeof *flags * (size_t)n);
    return 0;
}

int ct_ddp_get_flags(const ct_ddp *d, int32_t *flags, int n) {
    if (!d || n < 0 || n > CT_DDP_MAX_FLAGS || (n && !flags))
        return ct_error("DDP: get_flags: at most %d flags", CT_DDP_MAX_FLAGS);
    if (n) memcpy(flags, d->flags, sizeof *flags * (size_t)n);
    return 0;
}
