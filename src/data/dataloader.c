/* DataLoader: background workers build batches (gather, augment, to float) into a ring
 * of `prefetch` slots ahead of the consumer; batches come out strictly in order.
 *
 * Determinism: epoch e's permutation comes from (seed, e); the augmentation of batch b
 * draws from its own stream seeded by (seed, e, b). So the batches depend on neither the
 * number of workers nor their timing.
 *
 * Epoch look-ahead: when the consumer takes the last batch of epoch e, the workers start
 * on epoch e+1 at once, so the first batches of the next epoch are ready too; a later
 * ct_dataloader_start_epoch(e+1) keeps them.
 *
 * pin_memory: the workers allocate the batch tensors in pinned host memory
 * (data/pin_memory.c) when CUDA is usable; the values are the same either way. */
#include "data/data_internal.h"
#include "data/pin_memory.h"

#include "core/error.h"
#include "core/tensor_impl.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { SLOT_EMPTY = 0, SLOT_FILLING, SLOT_READY };

/* What building a batch of a lazy dataset found besides the images: records its fetch
 * skipped (report: one "PATH: reason" line each) or the record that stopped it. */
typedef struct {
    int64_t skipped;
    char *report;
    int bad;       /* failed on a record (err names it), not out of memory */
    char err[600];
} batch_info;

typedef struct {
    int state;
    int64_t batch;
    ct_tensor *images; /* NULL (and not failed): every record of the batch was skipped */
    ct_tensor *labels;
    int failed;
    batch_info info;
} slot_t;

struct ct_dataloader {
    const ct_dataset *ds;
    ct_dataloader_opts opts;
    int64_t nbatches;
    int64_t sample_numel;
    int64_t *perm; /* record order of the current epoch (this rank's share) */
    int64_t n;     /* records per epoch of this loader (the share) */
    int64_t *full; /* the whole epoch's permutation (num_replicas > 1) */
    int pinned;    /* batches are allocated in pinned host memory */

    pthread_mutex_t mu;
    pthread_cond_t cv_work;  /* workers wait for claimable batches */
    pthread_cond_t cv_ready; /* consumer / restarts wait for slots and idle workers */
    int prefetch;
    slot_t *slots;
    pthread_t *threads;
    int nthreads;

    int started;   /* an epoch is being produced */
    int end_reported; /* synchronous mode: the end of `epoch` was returned (0) once */
    int at_end;    /* the consumer saw the end of `epoch`; `epoch+1` may be pre-produced */
    int64_t epoch; /* epoch being produced */
    uint64_t gen;  /* bumps on every (re)start; stale workers discard their batch */
    int64_t next_claim, next_consume;
    int busy; /* workers building a batch */
    int stop;
    double wait_s;
    uint8_t *scratch; /* synchronous mode */
    float (*lut)[256]; /* the float of each byte value, per channel (ToTensor + Normalize) */
    /* records skipped in the batches delivered under generation skip_gen (this epoch) */
    uint64_t skip_gen;
    int64_t skipped;
    char *skip_report;
    size_t skip_len;
    int bad_fail; /* the last failure came from a record */
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static uint64_t stream_seed(uint64_t seed, int64_t epoch, uint64_t which) {
    return mix64(mix64(mix64(seed) ^ (uint64_t)epoch) ^ which);
}

ct_dataloader_opts ct_dataloader_default_opts(void) {
    ct_dataloader_opts o;
    memset(&o, 0, sizeof o);
    o.batch_size = 64;
    o.shuffle = 1;
    o.drop_last = 0;
    o.seed = 0;
    o.num_workers = 2;
    o.prefetch = 0;
    o.pin_memory = 0;
    for (int c = 0; c < CT_DATA_MAX_CHANNELS; c++) {
        o.transform.mean[c] = 0.0f;
        o.transform.std[c] = 1.0f;
    }
    return o;
}

/* Fills perm for `epoch` (identity without shuffle). */
static void make_perm(ct_dataloader *dl, int64_t epoch) {
    int64_t n = dl->ds->n;
    int R = dl->opts.num_replicas > 1 ? dl->opts.num_replicas : 1;
    int64_t *perm = R > 1 ? dl->full : dl->perm;
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    if (dl->opts.shuffle) {
        ct_data_rng r;
        ct_data_rng_seed(&r, stream_seed(dl->opts.seed, epoch, 0x7065726dull /* "perm" */));
        for (int64_t i = n - 1; i > 0; i--) {
            int64_t j = (int64_t)ct_data_rng_below(&r, (uint64_t)(i + 1));
            int64_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
    }
    /* this rank's share: positions rank, rank + R, ... (past n: the permutation again) */
    for (int64_t i = 0; R > 1 && i < dl->n; i++)
        dl->perm[i] = perm[(dl->opts.rank + i * R) % n];
}

/* Records per epoch of rank `rank` of R. */
static int64_t share_len(int64_t n, int R, int rank, int shard) {
    if (R <= 1) return n;
    if (shard == CT_SHARD_DROP) return n / R;
    if (shard == CT_SHARD_EXACT) return n > rank ? (n - rank + R - 1) / R : 0;
    return (n + R - 1) / R;
}

static int64_t batch_len(const ct_dataloader *dl, int64_t b) {
    int64_t bs = dl->opts.batch_size, start = b * bs, n = dl->n;
    return start + bs <= n ? bs : n - start;
}

/* Builds batch b of `epoch` into new CPU tensors (the CPU allocator is thread-safe).
 * Reads dl->perm, which does not change while any worker is busy. Returns 0, or -1 when
 * out of memory. */
static void info_skip(batch_info *bi, const char *why) {
    size_t old = bi->report ? strlen(bi->report) : 0, add = strlen(why) + 2;
    char *r = realloc(bi->report, old + add);
    if (r) {
        memcpy(r + old, why, add - 2);
        r[old + add - 2] = '\n';
        r[old + add - 1] = '\0';
        bi->report = r;
    }
    bi->skipped++;
}

static ct_tensor *new_tensor(const ct_dataloader *dl, const int64_t *shape, int nd, ct_dtype dt) {
    return dl->pinned ? ct__empty_pinned(shape, nd, dt) : ct_empty(shape, nd, dt);
}

static int build_batch(const ct_dataloader *dl, int64_t epoch, int64_t b, uint8_t *scratch,
                       ct_tensor **images_out, ct_tensor **labels_out, batch_info *bi) {
    const ct_dataset *ds = dl->ds;
    int64_t bsz = batch_len(dl, b), numel = dl->sample_numel;
    int64_t ishape[4] = {bsz, ds->c, ds->h, ds->w};
    int64_t lshape[1] = {bsz};
    *images_out = *labels_out = NULL;
    ct_tensor *timg = new_tensor(dl, ishape, 4, CT_FLOAT32);
    ct_tensor *tlab = new_tensor(dl, lshape, 1, CT_INT64);
    if (!timg || !tlab) {
        ct_free(timg);
        ct_free(tlab);
        return -1;
    }
    float *images = ct_data(timg);
    int64_t *labels = ct_data(tlab);
    const ct_transform *t = &dl->opts.transform;
    ct_data_rng r;
    uint64_t rank_bits = dl->opts.num_replicas > 1 ? (uint64_t)dl->opts.rank << 40 : 0;
    ct_data_rng_seed(&r, stream_seed(dl->opts.seed, epoch, (0x61756700ull + (uint64_t)b) ^ rank_bits));
    int64_t k = 0; /* images in the batch so far (records skipped by fetch are left out) */
    for (int64_t i = 0; i < bsz; i++) {
        int64_t rec = dl->perm[b * dl->opts.batch_size + i];
        const uint8_t *src;
        if (ds->fetch) { /* a lazy dataset: decode (and its own transforms) here */
            char why[sizeof bi->err];
            int fr = ds->fetch(ds, rec, scratch, &r, why, sizeof why);
            if (fr < 0) {
                snprintf(bi->err, sizeof bi->err, "%s", why);
                bi->bad = 1;
                ct_free(timg);
                ct_free(tlab);
                return -1;
            }
            if (fr > 0) {
                info_skip(bi, why);
                continue;
            }
            src = scratch;
        } else {
            src = ds->images + (size_t)rec * numel;
        }
        /* crop, flip and ToTensor (+ Normalize) in one pass over the bytes */
        ct__augment_to_float(t, (const float (*)[256])dl->lut, src, images + (size_t)k * numel,
                             ds->c, ds->h, ds->w, &r);
        labels[k++] = ds->labels[rec];
    }
    if (k < bsz) { /* records were skipped: a smaller batch, or none */
        ct_tensor *i2 = NULL, *l2 = NULL;
        if (k > 0) {
            ishape[0] = lshape[0] = k;
            i2 = new_tensor(dl, ishape, 4, CT_FLOAT32);
            l2 = new_tensor(dl, lshape, 1, CT_INT64);
            if (!i2 || !l2) {
                ct_free(i2);
                ct_free(l2);
                ct_free(timg);
                ct_free(tlab);
                return -1;
            }
            memcpy(ct_data(i2), images, (size_t)k * numel * sizeof(float));
            memcpy(ct_data(l2), labels, (size_t)k * sizeof(int64_t));
        }
        ct_free(timg);
        ct_free(tlab);
        timg = i2;
        tlab = l2;
    }
    *images_out = timg;
    *labels_out = tlab;
    return 0;
}

/* Can a worker claim a batch now? (mutex held) */
static int claimable(const ct_dataloader *dl) {
    return dl->started && dl->next_claim < dl->nbatches &&
           dl->next_claim < dl->next_consume + dl->prefetch;
}

static void *worker_main(void *arg) {
    ct_dataloader *dl = arg;
    uint8_t *scratch = malloc((size_t)dl->sample_numel ? (size_t)dl->sample_numel : 1);
    pthread_mutex_lock(&dl->mu);
    for (;;) {
        while (!dl->stop && !claimable(dl)) pthread_cond_wait(&dl->cv_work, &dl->mu);
        if (dl->stop) break;
        int64_t b = dl->next_claim++;
        int64_t epoch = dl->epoch;
        uint64_t gen = dl->gen;
        slot_t *s = &dl->slots[b % dl->prefetch];
        s->state = SLOT_FILLING;
        s->batch = b;
        dl->busy++;
        pthread_mutex_unlock(&dl->mu);

        ct_tensor *images = NULL, *labels = NULL;
        batch_info bi;
        memset(&bi, 0, sizeof bi);
        int failed = !scratch || build_batch(dl, epoch, b, scratch, &images, &labels, &bi) != 0;

        pthread_mutex_lock(&dl->mu);
        dl->busy--;
        if (gen == dl->gen) {
            s->images = images;
            s->labels = labels;
            s->failed = failed;
            s->info = bi;
            s->state = SLOT_READY;
        } else {
            ct_free(images);
            ct_free(labels);
            free(bi.report);
        }
        pthread_cond_broadcast(&dl->cv_ready);
    }
    pthread_mutex_unlock(&dl->mu);
    free(scratch);
    return NULL;
}

static void clear_slots(ct_dataloader *dl) {
    for (int i = 0; i < dl->prefetch; i++) {
        slot_t *s = &dl->slots[i];
        ct_free(s->images);
        ct_free(s->labels);
        free(s->info.report);
        memset(s, 0, sizeof *s);
    }
}

/* (Re)starts production of `epoch`. Mutex held. */
static void restart_locked_at(ct_dataloader *dl, int64_t epoch, int64_t first) {
    dl->gen++;
    dl->started = 0;
    while (dl->busy > 0) pthread_cond_wait(&dl->cv_ready, &dl->mu);
    clear_slots(dl);
    make_perm(dl, epoch);
    dl->epoch = epoch;
    dl->next_claim = first;
    dl->next_consume = first;
    dl->at_end = 0;
    dl->end_reported = 0;
    dl->started = 1;
    pthread_cond_broadcast(&dl->cv_work);
}

static void restart_locked(ct_dataloader *dl, int64_t epoch) { restart_locked_at(dl, epoch, 0); }

ct_dataloader *ct_dataloader_new(const ct_dataset *ds, const ct_dataloader_opts *opts_in) {
    if (!ds) return ct_error_null("dataloader: dataset is NULL");
    ct_dataloader_opts opts = opts_in ? *opts_in : ct_dataloader_default_opts();
    if (opts.batch_size < 1)
        return ct_error_null("dataloader: batch_size must be at least 1, got %lld",
                             (long long)opts.batch_size);
    if (opts.num_workers < 0 || opts.num_workers > 64)
        return ct_error_null("dataloader: num_workers must be in 0..64, got %d",
                             opts.num_workers);
    if (opts.num_replicas < 0 || (opts.num_replicas > 1 && (opts.rank < 0 || opts.rank >= opts.num_replicas)))
        return ct_error_null("dataloader: rank %d of num_replicas %d: the rank must be in "
                             "0..num_replicas-1", opts.rank, opts.num_replicas);
    if (opts.shard < CT_SHARD_PAD || opts.shard > CT_SHARD_EXACT)
        return ct_error_null("dataloader: shard %d: use CT_SHARD_PAD, CT_SHARD_DROP or CT_SHARD_EXACT",
                             opts.shard);
    if (opts.num_replicas > 1 && ds->n == 0)
        return ct_error_null("dataloader: the dataset %s is empty; nothing to shard", ds->name);
    if (opts.prefetch < 0 || opts.prefetch > 1024)
        return ct_error_null("dataloader: prefetch must be in 0..1024 (0: 2 per worker), got %d",
                             opts.prefetch);
    const ct_transform *t = &opts.transform;
    if (t->crop_padding < 0 || t->crop_padding > 1024)
        return ct_error_null("dataloader: crop_padding must be in 0..1024, got %d",
                             t->crop_padding);
    if (t->normalize) {
        if (ds->c > CT_DATA_MAX_CHANNELS)
            return ct_error_null("dataloader: normalize supports at most %d channels, the "
                                 "dataset %s has %d",
                                 CT_DATA_MAX_CHANNELS, ds->name, ds->c);
        for (int c = 0; c < ds->c; c++)
            if (!(t->std[c] > 0.0f) && !(t->std[c] < 0.0f))
                return ct_error_null("dataloader: normalize std[%d] is %g; every std must be "
                                     "non-zero",
                                     c, (double)t->std[c]);
    }
    ct_dataloader *dl = calloc(1, sizeof *dl);
    if (!dl) return ct_error_null("dataloader: out of memory");
    dl->ds = ds;
    dl->opts = opts;
    dl->pinned = opts.pin_memory ? ct__pin_memory_enable() : 0;
    dl->sample_numel = (int64_t)ds->c * ds->h * ds->w;
    dl->n = share_len(ds->n, opts.num_replicas, opts.rank, opts.shard);
    dl->nbatches = opts.drop_last ? dl->n / opts.batch_size
                                  : (dl->n + opts.batch_size - 1) / opts.batch_size;
    dl->nthreads = opts.num_workers;
    dl->prefetch = opts.prefetch > 0 ? opts.prefetch : 2 * (opts.num_workers > 0 ? opts.num_workers : 1);
    if (dl->prefetch < dl->nthreads) dl->prefetch = dl->nthreads;
    dl->perm = malloc(dl->n ? (size_t)dl->n * sizeof(int64_t) : 1);
    if (opts.num_replicas > 1 && !(dl->full = malloc(ds->n ? (size_t)ds->n * sizeof(int64_t) : 1))) {
        free(dl->perm);
        dl->perm = NULL;
    }
    dl->slots = calloc((size_t)dl->prefetch, sizeof(slot_t));
    dl->scratch = malloc(dl->sample_numel ? (size_t)dl->sample_numel : 1);
    dl->lut = malloc((size_t)(ds->c > 0 ? ds->c : 1) * sizeof *dl->lut);
    if (!dl->perm || !dl->slots || !dl->scratch || !dl->lut) {
        free(dl->perm);
        free(dl->full);
        free(dl->slots);
        free(dl->scratch);
        free(dl->lut);
        free(dl);
        return ct_error_null("dataloader: out of memory");
    }
    ct__pixel_lut(t->normalize ? t->mean : NULL, t->normalize ? t->std : NULL, ds->c, dl->lut);
    pthread_mutex_init(&dl->mu, NULL);
    pthread_cond_init(&dl->cv_work, NULL);
    pthread_cond_init(&dl->cv_ready, NULL);
    /* Epoch 0 starts at once so that its first batches are ready by the first call. */
    pthread_mutex_lock(&dl->mu);
    restart_locked(dl, 0);
    pthread_mutex_unlock(&dl->mu);
    if (dl->nthreads > 0) {
        dl->threads = calloc((size_t)dl->nthreads, sizeof(pthread_t));
        if (!dl->threads) {
            dl->nthreads = 0;
        } else {
            for (int i = 0; i < dl->nthreads; i++) {
                if (pthread_create(&dl->threads[i], NULL, worker_main, dl) != 0) {
                    dl->nthreads = i; /* run with fewer workers (or synchronously) */
                    break;
                }
            }
        }
    }
    return dl;
}

int64_t ct_dataloader_num_batches(const ct_dataloader *dl) { return dl ? dl->nbatches : 0; }

double ct_dataloader_wait_seconds(const ct_dataloader *dl) { return dl ? dl->wait_s : 0.0; }

int ct_dataloader_pinned(const ct_dataloader *dl) { return dl ? dl->pinned : 0; }

int ct_dataloader_start_epoch(ct_dataloader *dl, int64_t epoch) {
    return ct_dataloader_start_epoch_at(dl, epoch, 0);
}

int ct_dataloader_start_epoch_at(ct_dataloader *dl, int64_t epoch, int64_t first_batch) {
    if (!dl) return ct_error("dataloader_start_epoch: loader is NULL");
    if (epoch < 0) return ct_error("dataloader_start_epoch: epoch must be >= 0, got %lld",
                                   (long long)epoch);
    if (first_batch < 0 || first_batch > dl->nbatches)
        return ct_error("dataloader_start_epoch: first batch %lld is outside the epoch's "
                        "0..%lld batches (was the checkpoint made with another --batch-size "
                        "or dataset size?)",
                        (long long)first_batch, (long long)dl->nbatches);
    pthread_mutex_lock(&dl->mu);
    int fresh = dl->started && dl->epoch == epoch && dl->next_consume == first_batch &&
                first_batch == 0;
    if (fresh)
        dl->at_end = 0; /* keep what the workers already prepared */
    else
        restart_locked_at(dl, epoch, first_batch);
    pthread_mutex_unlock(&dl->mu);
    return 0;
}

int ct_dataloader_next(ct_dataloader *dl, ct_tensor **images, ct_tensor **labels) {
    if (images) *images = NULL;
    if (labels) *labels = NULL;
    if (!dl || !images || !labels)
        return ct_error("dataloader_next: loader, images and labels must be non-NULL");
    ct_tensor *img = NULL, *lab = NULL;
    int failed = 0;
    batch_info bi;
again:
    memset(&bi, 0, sizeof bi);
    pthread_mutex_lock(&dl->mu);
    /* The end of an epoch is returned once (0); the call after it starts the next epoch,
     * reshuffled with that epoch's seed, as a new `for batch in loader` does. With workers
     * the next epoch is already being produced (at_end says its end is still to report). */
    if (dl->at_end) {
        dl->at_end = 0;
        pthread_mutex_unlock(&dl->mu);
        return 0;
    }
    if (dl->next_consume >= dl->nbatches) {
        if (!dl->end_reported || dl->nbatches == 0) {
            dl->end_reported = 1;
            pthread_mutex_unlock(&dl->mu);
            return 0;
        }
        restart_locked(dl, dl->epoch + 1);
    }
    int64_t b = dl->next_consume;
    if (dl->nthreads == 0) {
        int64_t epoch = dl->epoch;
        dl->next_claim = b + 1;
        pthread_mutex_unlock(&dl->mu);
        failed = build_batch(dl, epoch, b, dl->scratch, &img, &lab, &bi) != 0;
        pthread_mutex_lock(&dl->mu);
    } else {
        slot_t *s = &dl->slots[b % dl->prefetch];
        if (!(s->state == SLOT_READY && s->batch == b)) {
            double t0 = now_s();
            while (!(s->state == SLOT_READY && s->batch == b))
                pthread_cond_wait(&dl->cv_ready, &dl->mu);
            dl->wait_s += now_s() - t0;
        }
        img = s->images;
        lab = s->labels;
        failed = s->failed;
        bi = s->info;
        memset(s, 0, sizeof *s);
    }
    /* this epoch's skipped records (a new generation: a new epoch, or a restart) */
    if (dl->skip_gen != dl->gen) {
        dl->skip_gen = dl->gen;
        dl->skipped = 0;
        dl->skip_len = 0;
        if (dl->skip_report) dl->skip_report[0] = '\0';
    }
    if (bi.skipped) {
        size_t add = bi.report ? strlen(bi.report) : 0;
        char *nr = realloc(dl->skip_report, dl->skip_len + add + 1);
        if (nr) {
            memcpy(nr + dl->skip_len, bi.report ? bi.report : "", add + 1);
            dl->skip_report = nr;
            dl->skip_len += add;
        }
        dl->skipped += bi.skipped;
    }
    free(bi.report);
    dl->next_consume = b + 1;
    if (dl->next_consume >= dl->nbatches && dl->nthreads > 0) {
        /* Look ahead: produce the next epoch while the caller evaluates / logs. */
        restart_locked(dl, dl->epoch + 1);
        dl->at_end = 1;
    } else {
        pthread_cond_broadcast(&dl->cv_work);
    }
    pthread_mutex_unlock(&dl->mu);

    if (failed) {
        ct_free(img);
        ct_free(lab);
        dl->bad_fail = bi.bad;
        if (bi.bad) return ct_error("%s", bi.err);
        return ct_error("dataloader: out of memory building batch %lld", (long long)b);
    }
    if (!img) goto again; /* every record of the batch was skipped: on to the next */
    if (dl->nthreads > 0) { /* built on a worker thread: now the caller's */
        ct__scope_adopt(img);
        ct__scope_adopt(lab);
    }
    *images = img;
    *labels = lab;
    return 1;
}

void ct_dataloader_free(ct_dataloader *dl) {
    if (!dl) return;
    pthread_mutex_lock(&dl->mu);
    dl->stop = 1;
    dl->gen++;
    pthread_cond_broadcast(&dl->cv_work);
    pthread_mutex_unlock(&dl->mu);
    for (int i = 0; i < dl->nthreads; i++) pthread_join(dl->threads[i], NULL);
    clear_slots(dl);
    pthread_cond_destroy(&dl->cv_work);
    pthread_cond_destroy(&dl->cv_ready);
    pthread_mutex_destroy(&dl->mu);
    free(dl->threads);
    free(dl->slots);
    free(dl->perm);
    free(dl->full);
    free(dl->scratch);
    free(dl->lut);
    free(dl->skip_report);
    free(dl);
}

int64_t ct_dataloader_skipped(const ct_dataloader *dl, const char **report) {
    if (report) *report = dl && dl->skip_report ? dl->skip_report : "";
    return dl ? dl->skipped : 0;
}

int ct_dataloader_failed_on_bad_record(const ct_dataloader *dl) { return dl ? dl->bad_fail : 0; }
