/* torch.save files: the zip format of PyTorch >= 1.6 (read through libarchive) and the
 * legacy format (_use_new_zipfile_serialization=False), their pickles read by the
 * restricted unpickler of torch_pickle.c, then the state_dict selected (PATH:KEY) and its
 * tensors made from the storages. docs/weights.md describes what is accepted.
 *
 * Zip:    <prefix>/data.pkl (the object; storages as persistent ids
 *         ('storage', torch.FloatStorage, key, location, numel)), <prefix>/data/<key> (each
 *         storage's raw little-endian bytes), <prefix>/byteorder ("little"; absent before
 *         PyTorch 2.1, which wrote little-endian only), version...
 * Legacy: pickles of the magic number, the protocol version 1001, sys_info
 *         {'little_endian': ...}, the object (persistent ids with a 6th item, view
 *         metadata), the list of storage keys; then per key an int64 element count and
 *         the storage's bytes. */
#include "ctorch_io.h"
#include "ctorch_nn.h"
#include "core/error.h"
#include "core/tensor_impl.h"
#include "io/torch_load.h"
#include "io/torch_pickle.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef CT_HAVE_LIBARCHIVE
#include <archive.h>
#include <archive_entry.h>
#endif

/* Non-contiguous tensors are copied; all copies together may not exceed this plus four
 * times the file's size (a file of 1 KB cannot make gigabytes of stride-0 tensors). */
#define COPY_BUDGET_BASE ((uint64_t)64 << 20)
/* At most this many zip entries are looked at. */
#define MAX_ZIP_ENTRIES (1 << 20)

struct ct_torch_file {
    char *name;
    const uint8_t *buf;
    size_t n;
    void *map;
    int zip;
    char *prefix;      /* zip: "archive/" */
    uint8_t *pkl;      /* zip: data.pkl */
    size_t npkl;
    tp_arena arena;
    tp_value *root;
    tp_storage **st;   /* by creation order */
    size_t nst, capst;
    size_t *slots;     /* hash of keys -> index + 1 */
    size_t nslots;
    uint64_t copied;   /* bytes copied for non-contiguous tensors */
};

/* --------------------------------------------------------------------- storages */
static size_t hash_key(const char *s) {
    size_t h = 1469598103934665603u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211u;
    return h;
}

static tp_storage *find_storage(const ct_torch_file *f, const char *key) {
    if (!f->nslots) return NULL;
    for (size_t i = hash_key(key) & (f->nslots - 1);; i = (i + 1) & (f->nslots - 1)) {
        if (!f->slots[i]) return NULL;
        tp_storage *s = f->st[f->slots[i] - 1];
        if (!strcmp(s->key, key)) return s;
    }
}

static int rehash(ct_torch_file *f) {
    size_t ns = f->nslots ? f->nslots * 2 : 64;
    size_t *slots = calloc(ns, sizeof *slots);
    if (!slots) return ct_error("out of memory");
    for (size_t k = 0; k < f->nst; k++)
        for (size_t i = hash_key(f->st[k]->key) & (ns - 1);; i = (i + 1) & (ns - 1))
            if (!slots[i]) {
                slots[i] = k + 1;
                break;
            }
    free(f->slots);
    f->slots = slots;
    f->nslots = ns;
    return 0;
}

/* The storage of a persistent id: ('storage', StorageClass, key, location, numel[, view]). */
static tp_value *persistent_load(void *ctx, tp_arena *a, tp_value *pid) {
    ct_torch_file *f = ctx;
    size_t want = f->zip ? 5 : 6;
    if (pid->kind != TP_TUPLE || pid->n < 1 || pid->items[0]->kind != TP_STR)
        return ct_error_null("a persistent id that is a %s, not a ('storage', ...) tuple",
                             tp_kind_name(pid->kind));
    if (strcmp(pid->items[0]->s, "storage"))
        return ct_error_null("a persistent id of type '%.40s' (only storages are accepted; "
                             "'module' means a whole nn.Module was saved: save its "
                             "state_dict() instead)", pid->items[0]->s);
    if (pid->n != want)
        return ct_error_null("a storage persistent id with %zu items (expected %zu)", pid->n, want);
    tp_value *type = pid->items[1], *key = pid->items[2], *numel = pid->items[4];
    int dtype;
    const char *torch_dtype;
    size_t elsize;
    if (tp_global_storage_type(type, &dtype, &torch_dtype, &elsize))
        return ct_error_null("a storage whose type is a %s, not a torch storage class",
                             type->kind == TP_GLOBAL ? tp_global_name(type) : tp_kind_name(type->kind));
    if (key->kind != TP_STR || !key->len || key->len > 200)
        return ct_error_null("a storage key that is not a short string");
    if (numel->kind != TP_INT || numel->i < 0)
        return ct_error_null("storage %s: its size is not a non-negative int", key->s);
    if (!f->zip && pid->items[5]->kind != TP_NONE)
        return ct_error_null("storage %s is a view of another storage (view metadata from "
                             "PyTorch < 1.0): not supported; save the file with a recent PyTorch",
                             key->s);
    /* a storage cannot hold more than the file could give it (deflate: at most ~1032x) */
    uint64_t limit = f->zip ? (uint64_t)f->n * 1100 + 4096 : (uint64_t)f->n;
    if ((uint64_t)numel->i > limit / elsize)
        return ct_error_null("storage %s claims %lld elements of %s, more than the %zu-byte "
                             "file can hold (corrupt file)", key->s, (long long)numel->i,
                             torch_dtype, f->n);
    tp_storage *s = find_storage(f, key->s);
    if (s) {
        if (s->elsize != elsize || s->dtype != dtype || s->numel != numel->i)
            return ct_error_null("storage %s is used as %lld %s and as %lld %s (corrupt file)",
                                 key->s, (long long)s->numel, s->torch_dtype,
                                 (long long)numel->i, torch_dtype);
    } else {
        if (2 * (f->nst + 1) > f->nslots && rehash(f)) return NULL;
        if (f->nst == f->capst) {
            size_t nc = f->capst ? 2 * f->capst : 16;
            tp_storage **ns = realloc(f->st, nc * sizeof *ns);
            if (!ns) return ct_error_null("out of memory");
            f->st = ns;
            f->capst = nc;
        }
        s = calloc(1, sizeof *s);
        if (!s || !(s->key = strdup(key->s))) {
            free(s);
            return ct_error_null("out of memory");
        }
        s->dtype = dtype;
        s->torch_dtype = torch_dtype;
        s->elsize = elsize;
        s->numel = numel->i;
        s->nbytes = (uint64_t)numel->i * elsize;
        f->st[f->nst++] = s;
        for (size_t i = hash_key(s->key) & (f->nslots - 1);; i = (i + 1) & (f->nslots - 1))
            if (!f->slots[i]) {
                f->slots[i] = f->nst;
                break;
            }
    }
    tp_value *v = tp_new(a, TP_STORAGE);
    if (v) v->storage = s;
    return v;
}

/* A storage's memory, as a ctorch storage (bool bytes made 0 or 1). */
static ct_storage *new_storage(const ct_torch_file *f, tp_storage *s) {
    ct_storage *cs = ct_storage_new((size_t)s->nbytes, ct_cpu());
    if (!cs)
        return ct_error_null("weights %s: out of memory for storage %s (%llu bytes)", f->name,
                             s->key, (unsigned long long)s->nbytes);
    return cs;
}

static void fix_bools(tp_storage *s) {
    if (s->dtype != CT_BOOL) return;
    uint8_t *b = ((ct_storage *)s->impl)->data;
    for (uint64_t i = 0; i < s->nbytes; i++) b[i] = b[i] != 0;
}

/* ------------------------------------------------------------------------ zip */
#ifdef CT_HAVE_LIBARCHIVE
static struct archive *zip_open(const ct_torch_file *f) {
    struct archive *a = archive_read_new();
    if (!a) return ct_error_null("weights %s: out of memory opening the zip", f->name);
    archive_read_support_format_zip_seekable(a);
    /* PyTorch >= 2.5 writes CRC-32 fields of 0 with
     * torch.utils.serialization.config.save.compute_crc32 = False, and torch.load reads
     * them: so do we (the sizes and the pickle's structure are still checked). */
    archive_read_set_format_option(a, "zip", "ignorecrc32", "1");
    if (archive_read_open_memory(a, f->buf, f->n) != ARCHIVE_OK) {
        ct_error("weights %s: not a readable zip file (%s)", f->name,
                 archive_error_string(a) ? archive_error_string(a) : "unknown error");
        archive_read_free(a);
        return NULL;
    }
    return a;
}

static int zip_corrupt(const ct_torch_file *f, struct archive *a, const char *what) {
    const char *e = archive_error_string(a);
    return ct_error("weights %s: a corrupt zip (%s%s%s)", f->name, what, e ? ": " : "", e ? e : "");
}

/* Reads the current entry whole (at most max bytes) into a malloc'd buffer. */
static int zip_read_all(const ct_torch_file *f, struct archive *a, const char *name, size_t max,
                        uint8_t **out, size_t *n) {
    size_t cap = 4096, len = 0;
    uint8_t *b = malloc(cap);
    if (!b) return ct_error("weights %s: out of memory", f->name);
    for (;;) {
        if (len == cap) {
            if (cap >= max) {
                free(b);
                return ct_error("weights %s: %s is larger than %zu bytes (corrupt file?)", f->name,
                                name, max);
            }
            cap = cap * 2 > max ? max : cap * 2;
            uint8_t *nb = realloc(b, cap);
            if (!nb) {
                free(b);
                return ct_error("weights %s: out of memory reading %s", f->name, name);
            }
            b = nb;
        }
        la_ssize_t r = archive_read_data(a, b + len, cap - len);
        if (r < 0) {
            free(b);
            return zip_corrupt(f, a, name);
        }
        if (r == 0) break;
        len += (size_t)r;
    }
    *out = b;
    *n = len;
    return 0;
}

/* "<prefix>/<rest>" with a one-component prefix: the rest, or NULL. */
static const char *after_prefix(const char *name) {
    const char *slash = strchr(name, '/');
    return slash && slash != name ? slash + 1 : NULL;
}

static int zip_scan(ct_torch_file *f) {
    struct archive *a = zip_open(f);
    if (!a) return -1;
    int rc = 0, torchscript = 0, big = 0;
    for (int count = 0; rc == 0; count++) {
        struct archive_entry *e;
        int r = archive_read_next_header(a, &e);
        if (r == ARCHIVE_EOF) break;
        if (r < ARCHIVE_WARN || count > MAX_ZIP_ENTRIES) {
            rc = zip_corrupt(f, a, "reading the entries");
            break;
        }
        const char *name = archive_entry_pathname(e);
        const char *rest = name ? after_prefix(name) : NULL;
        if (!rest) continue;
        if (!strcmp(rest, "constants.pkl") || !strncmp(rest, "code/", 5)) torchscript = 1;
        if (!strcmp(rest, "byteorder")) {
            uint8_t *b = NULL;
            size_t n = 0;
            rc = zip_read_all(f, a, "byteorder", 64, &b, &n);
            if (rc == 0 && n >= 3 && !memcmp(b, "big", 3)) big = 1;
            free(b);
        } else if (!strcmp(rest, "data.pkl") && !f->pkl) {
            size_t plen = (size_t)(rest - name);
            f->prefix = malloc(plen + 1);
            if (!f->prefix) {
                rc = ct_error("weights %s: out of memory", f->name);
                break;
            }
            memcpy(f->prefix, name, plen);
            f->prefix[plen] = 0;
            size_t max = f->n * 1100 + 4096;
            if (max > ((size_t)1 << 30)) max = (size_t)1 << 30;
            rc = zip_read_all(f, a, "data.pkl", max, &f->pkl, &f->npkl);
        }
    }
    archive_read_free(a);
    if (rc) return rc;
    if (torchscript)
        return ct_error("weights %s: a TorchScript archive (torch.jit.save), not a torch.save "
                        "file; in Python: torch.save(torch.jit.load(path).state_dict(), 'out.pt')",
                        f->name);
    if (!f->pkl)
        return ct_error("weights %s: a zip file without <name>/data.pkl, so not a torch.save "
                        "file", f->name);
    if (big)
        return ct_error("weights %s: written on a big-endian machine (byteorder: big); ctorch "
                        "reads little-endian files only: load and save it again on a "
                        "little-endian machine", f->name);
    return 0;
}

/* Reads the needed storages' entries <prefix>data/<key>. */
static int zip_load_storages(ct_torch_file *f) {
    size_t missing = 0;
    for (size_t i = 0; i < f->nst; i++) missing += f->st[i]->needed && !f->st[i]->impl;
    if (!missing) return 0;
    struct archive *a = zip_open(f);
    if (!a) return -1;
    size_t plen = strlen(f->prefix);
    int rc = 0;
    for (int count = 0; rc == 0 && missing; count++) {
        struct archive_entry *e;
        int r = archive_read_next_header(a, &e);
        if (r == ARCHIVE_EOF) break;
        if (r < ARCHIVE_WARN || count > MAX_ZIP_ENTRIES) {
            rc = zip_corrupt(f, a, "reading the entries");
            break;
        }
        const char *name = archive_entry_pathname(e);
        if (!name || strncmp(name, f->prefix, plen) || strncmp(name + plen, "data/", 5)) continue;
        tp_storage *s = find_storage(f, name + plen + 5);
        if (!s || !s->needed || s->impl) continue;
        ct_storage *cs = new_storage(f, s);
        if (!cs) {
            rc = -1;
            break;
        }
        uint64_t have = 0;
        while (have < s->nbytes) {
            la_ssize_t n = archive_read_data(a, (uint8_t *)cs->data + have, (size_t)(s->nbytes - have));
            if (n < 0) {
                rc = zip_corrupt(f, a, name);
                break;
            }
            if (n == 0) {
                rc = ct_error("weights %s: storage data/%s has %llu bytes, its tensors need "
                              "%llu (truncated or corrupt file)", f->name, s->key,
                              (unsigned long long)have, (unsigned long long)s->nbytes);
                break;
            }
            have += (uint64_t)n;
        }
        if (rc) {
            ct_storage_release(cs);
            break;
        }
        s->impl = cs;
        fix_bools(s);
        missing--;
    }
    archive_read_free(a);
    if (rc) return rc;
    for (size_t i = 0; i < f->nst; i++)
        if (f->st[i]->needed && !f->st[i]->impl)
            return ct_error("weights %s: the archive has no %sdata/%s, which a tensor uses "
                            "(truncated or corrupt file)", f->name, f->prefix, f->st[i]->key);
    return 0;
}
#endif

/* --------------------------------------------------------------------- legacy */
static const uint8_t LEGACY_MAGIC[] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};

static tp_value *dict_lookup(const tp_value *d, const char *k, size_t klen) {
    tp_value *found = NULL;
    for (size_t i = 0; d && d->kind == TP_DICT && i + 1 < d->n; i += 2) {
        const tp_value *key = d->items[i];
        if (key->kind == TP_STR && key->len == klen && !memcmp(key->s, k, klen))
            found = d->items[i + 1];
    }
    return found;
}

static int legacy_parse(ct_torch_file *f) {
    size_t off = 0, used = 0;
    tp_value *v = tp_unpickle(&f->arena, f->buf, f->n, &used, NULL, NULL);
    if (!v) goto bad; /* a forbidden global in a plain pickle is named as such */
    if (v->kind != TP_BIGINT || v->len != sizeof LEGACY_MAGIC ||
        memcmp(v->s, LEGACY_MAGIC, sizeof LEGACY_MAGIC))
        return ct_error("weights %s: a pickle of a %s, but not one torch.save wrote (it starts "
                        "without torch's magic number)", f->name, tp_kind_name(v->kind));
    off += used;
    v = tp_unpickle(&f->arena, f->buf + off, f->n - off, &used, NULL, NULL);
    if (!v) goto bad;
    if (v->kind != TP_INT || v->i != 1001)
        return ct_error("weights %s: legacy torch.save protocol version %lld (this reader knows "
                        "1001)", f->name, v->kind == TP_INT ? (long long)v->i : -1LL);
    off += used;
    v = tp_unpickle(&f->arena, f->buf + off, f->n - off, &used, NULL, NULL);
    if (!v) goto bad;
    off += used;
    tp_value *le = dict_lookup(v, "little_endian", 13);
    if (le && le->kind == TP_BOOL && !le->i)
        return ct_error("weights %s: written on a big-endian machine (sys_info little_endian "
                        "False); ctorch reads little-endian files only: load and save it again "
                        "on a little-endian machine", f->name);
    f->root = tp_unpickle(&f->arena, f->buf + off, f->n - off, &used, persistent_load, f);
    if (!f->root) goto bad;
    off += used;
    tp_value *keys = tp_unpickle(&f->arena, f->buf + off, f->n - off, &used, NULL, NULL);
    if (!keys) goto bad;
    off += used;
    if (keys->kind != TP_LIST)
        return ct_error("weights %s: the storage key list is a %s", f->name,
                        tp_kind_name(keys->kind));
    for (size_t i = 0; i < keys->n; i++) {
        tp_value *k = keys->items[i];
        tp_storage *s = k->kind == TP_STR ? find_storage(f, k->s) : NULL;
        if (!s)
            return ct_error("weights %s: storage key %zu of the list names no storage of the "
                            "object (corrupt file)", f->name, i);
        if (f->n - off < 8)
            return ct_error("weights %s: the file ends before storage %s (truncated file?)",
                            f->name, s->key);
        uint64_t count = 0;
        for (int b = 7; b >= 0; b--) count = (count << 8) | f->buf[off + (size_t)b];
        off += 8;
        if (count < (uint64_t)s->numel || count > (f->n - off) / s->elsize)
            return ct_error("weights %s: storage %s has %llu elements in the file, %lld in the "
                            "object, %zu bytes left (truncated or corrupt file)", f->name, s->key,
                            (unsigned long long)count, (long long)s->numel, f->n - off);
        if (s->raw)
            return ct_error("weights %s: storage %s appears twice (corrupt file)", f->name, s->key);
        s->raw = f->buf + off;
        off += (size_t)(count * s->elsize);
    }
    return 0;
bad:
    ct_error_context("weights %s", f->name);
    return -1;
}

static int legacy_load_storages(ct_torch_file *f) {
    for (size_t i = 0; i < f->nst; i++) {
        tp_storage *s = f->st[i];
        if (!s->needed || s->impl) continue;
        if (!s->raw)
            return ct_error("weights %s: storage %s is not in the file's storage list "
                            "(truncated or corrupt file)", f->name, s->key);
        ct_storage *cs = new_storage(f, s);
        if (!cs) return -1;
        if (s->nbytes) memcpy(cs->data, s->raw, (size_t)s->nbytes);
        s->impl = cs;
        fix_bools(s);
    }
    return 0;
}

/* ---------------------------------------------------------------------- files */
void ct_torch_close(ct_torch_file *f) {
    if (!f) return;
    tp_arena_free(&f->arena);
    for (size_t i = 0; i < f->nst; i++) {
        if (f->st[i]->impl) ct_storage_release(f->st[i]->impl);
        free(f->st[i]->key);
        free(f->st[i]);
    }
    free(f->st);
    free(f->slots);
    free(f->pkl);
    free(f->prefix);
    if (f->map) munmap(f->map, f->n);
    free(f->name);
    free(f);
}

ct_torch_file *ct_torch_open_buffer(const void *data, size_t n, const char *name) {
    if (!name) name = "(buffer)";
    if (!data && n) return ct_error_null("weights %s: NULL data", name);
    ct_torch_file *f = calloc(1, sizeof *f);
    if (!f || !(f->name = strdup(name))) {
        free(f);
        return ct_error_null("weights %s: out of memory", name);
    }
    f->buf = data;
    f->n = n;
    const uint8_t *b = data;
    int rc;
    if (n >= 4 && b[0] == 'P' && b[1] == 'K' && b[2] == 3 && b[3] == 4) {
        f->zip = 1;
#ifdef CT_HAVE_LIBARCHIVE
        rc = zip_scan(f);
        if (rc == 0) {
            size_t used = 0;
            f->root = tp_unpickle(&f->arena, f->pkl, f->npkl, &used, persistent_load, f);
            if (!f->root) {
                ct_error_context("weights %s: %sdata.pkl", f->name, f->prefix);
                rc = -1;
            }
        }
#else
        rc = ct_error("weights %s: a torch.save zip file, and this ctorch was built without "
                      "libarchive, which reads zip files. Fix: install libarchive-dev and "
                      "rebuild (`make`)", f->name);
#endif
    } else if (n >= 2 && b[0] == 0x80) {
        rc = legacy_parse(f);
    } else {
        rc = ct_error("weights %s: not a torch.save file (it starts with neither 'PK' nor a "
                      "pickle)", f->name);
    }
    if (rc) {
        ct_torch_close(f);
        return NULL;
    }
    return f;
}

ct_torch_file *ct_torch_open(const char *path) {
    if (!path) return ct_error_null("weights: no file given");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ct_error_null("weights %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return ct_error_null("weights %s: not a regular file", path);
    }
    size_t n = (size_t)sb.st_size;
    void *map = NULL;
    if (n) {
        map = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            close(fd);
            return ct_error_null("weights %s: cannot map it: %s", path, strerror(errno));
        }
    }
    close(fd);
    ct_torch_file *f = ct_torch_open_buffer(map ? map : "", n, path);
    if (!f) {
        if (map) munmap(map, n);
        return NULL;
    }
    f->map = map;
    return f;
}

/* ------------------------------------------------------------------ selection */
static size_t count_tensors(const tp_value *d) {
    size_t k = 0;
    for (size_t i = 0; d->kind == TP_DICT && i + 1 < d->n; i += 2)
        k += d->items[i]->kind == TP_STR && d->items[i + 1]->kind == TP_TENSOR;
    return k;
}

/* KEY in dict d; "a.b" also descends into a's dict when there is no key "a.b". */
static const tp_value *select_key(const tp_value *d, const char *key) {
    while (d && d->kind == TP_DICT) {
        const tp_value *v = dict_lookup(d, key, strlen(key));
        if (v) return v;
        const tp_value *next = NULL;
        for (const char *dot = strchr(key, '.'); dot; dot = strchr(dot + 1, '.')) {
            const tp_value *x = dict_lookup(d, key, (size_t)(dot - key));
            if (x && x->kind == TP_DICT) {
                next = x;
                key = dot + 1;
                break;
            }
        }
        d = next;
    }
    return NULL;
}

/* "'model_state_dict' (dict of 4 tensors), 'epoch' (int)..." into buf. */
static void list_keys(const tp_value *d, char *buf, size_t n, const char **suggest) {
    size_t o = 0;
    buf[0] = 0;
    *suggest = NULL;
    size_t shown = 0, total = 0;
    for (size_t i = 0; i + 1 < d->n; i += 2) {
        const tp_value *k = d->items[i], *v = d->items[i + 1];
        if (k->kind != TP_STR) continue;
        total++;
        size_t nt = v->kind == TP_DICT ? count_tensors(v) : 0;
        if (nt && !*suggest) *suggest = k->s;
        if (o + 120 >= n) continue;
        char what[64];
        if (nt) snprintf(what, sizeof what, "dict of %zu tensor%s", nt, nt == 1 ? "" : "s");
        else snprintf(what, sizeof what, "%s", tp_kind_name(v->kind));
        int w = snprintf(buf + o, n - o, "%s'%.60s' (%s)", shown ? ", " : "", k->s, what);
        if (w > 0) o += (size_t)w < n - o ? (size_t)w : n - o - 1;
        shown++;
    }
    if (shown < total) snprintf(buf + o, n - o, ", ... (%zu keys)", total);
}

typedef struct {
    const char *name;
    tp_tensor *t;
    size_t pos;
} entry;

static int by_name_pos(const void *a, const void *b) {
    const entry *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->pos > y->pos) - (x->pos < y->pos);
}

static int by_pos(const void *a, const void *b) {
    const entry *x = a, *y = b;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

static ct_tensor *make_tensor(ct_torch_file *f, const entry *e) {
    tp_tensor *t = e->t;
    for (int d = 0; d < t->ndim; d++) /* empty: nothing to read, whatever the offset */
        if (t->size[d] == 0) return ct_empty(t->size, t->ndim, (ct_dtype)t->dtype);
    ct_tensor *view = ct_tensor_make(t->storage->impl, (ct_dtype)t->dtype, t->size, t->stride,
                                     t->ndim, t->offset);
    if (!view || ct_is_contiguous(view)) return view;
    uint64_t bytes = (uint64_t)ct_numel(view) * t->elsize;
    if (f->copied + bytes > COPY_BUDGET_BASE + 4 * (uint64_t)f->n) {
        ct_free(view);
        return ct_error_null("weights %s: tensor '%s' is a %llu-byte strided view; with the "
                             "others it would take more memory than such a file may "
                             "(corrupt file?)", f->name, e->name, (unsigned long long)bytes);
    }
    f->copied += bytes;
    ct_tensor *c = ct_contiguous(view);
    ct_free(view);
    return c;
}

ct_state_dict *ct_torch_state_dict(ct_torch_file *f, const char *key) {
    if (!f) return ct_error_null("weights: no file");
    const tp_value *d = f->root;
    if (key && *key) {
        d = f->root->kind == TP_DICT ? select_key(f->root, key) : NULL;
        if (!d) {
            if (f->root->kind != TP_DICT)
                return ct_error_null("weights %s:%s: the file holds a %s, not a dict with keys",
                                     f->name, key, tp_kind_name(f->root->kind));
            char keys[1024];
            const char *sug;
            list_keys(f->root, keys, sizeof keys, &sug);
            return ct_error_null("weights %s:%s: no key '%s'; the file's keys: %s", f->name, key,
                                 key, keys[0] ? keys : "(none)");
        }
    }
    const char *sel = key && *key ? ":" : "";
    if (d->kind != TP_DICT)
        return ct_error_null("weights %s%s%s: holds a value of type %s, not a state_dict (a dict of tensors)",
                             f->name, sel, key && *key ? key : "", tp_kind_name(d->kind));
    size_t nt = count_tensors(d);
    if (nt == 0) {
        char keys[1024];
        const char *sug;
        list_keys(d, keys, sizeof keys, &sug);
        char hint[400] = "";
        if (sug)
            snprintf(hint, sizeof hint, "; select the state_dict with %s:%s%s%.100s", f->name,
                     key && *key ? key : "", key && *key ? "." : "", sug);
        return ct_error_null("weights %s%s%s: a dict without tensors at its top level (keys: "
                             "%s)%s", f->name, sel, key && *key ? key : "",
                             keys[0] ? keys : "none", hint);
    }
    entry *es = malloc(nt * sizeof *es);
    if (!es) return ct_error_null("weights %s: out of memory", f->name);
    size_t k = 0;
    for (size_t i = 0; i + 1 < d->n; i += 2)
        if (d->items[i]->kind == TP_STR && d->items[i + 1]->kind == TP_TENSOR)
            es[k++] = (entry){d->items[i]->s, d->items[i + 1]->tensor, i};
    /* a repeated key: the first position, the last value (Python's dict) */
    qsort(es, nt, sizeof *es, by_name_pos);
    size_t m = 0;
    for (size_t i = 0; i < nt;) {
        size_t j = i;
        while (j + 1 < nt && !strcmp(es[j + 1].name, es[i].name)) j++;
        es[m] = es[i];
        es[m++].t = es[j].t;
        i = j + 1;
    }
    qsort(es, m, sizeof *es, by_pos);
    ct_state_dict *sd = NULL;
    int rc = 0;
    for (size_t i = 0; i < m && rc == 0; i++) {
        if (es[i].t->dtype < 0)
            rc = ct_error("weights %s: tensor '%.200s' is %s, a dtype ctorch does not have (it has "
                          "float32, float64, float16, bfloat16, int64, int32, uint8, bool); "
                          "convert it in PyTorch first, e.g. t.to(torch.int32)", f->name,
                          es[i].name, es[i].t->torch_dtype);
        es[i].t->storage->needed = 1;
    }
    if (rc == 0) {
#ifdef CT_HAVE_LIBARCHIVE
        rc = f->zip ? zip_load_storages(f) : legacy_load_storages(f);
#else
        rc = legacy_load_storages(f);
#endif
    }
    if (rc == 0 && !(sd = ct_state_dict_new())) rc = -1;
    /* the names are unique already: filled directly (ct_state_dict_add checks each name
     * against all before it, quadratic in a file of many tensors) */
    if (rc == 0 && m > (size_t)INT32_MAX)
        rc = ct_error("weights %s: %zu tensors (corrupt file?)", f->name, m);
    if (rc == 0 && (!(sd->names = calloc(m, sizeof *sd->names)) ||
                    !(sd->tensors = calloc(m, sizeof *sd->tensors))))
        rc = ct_error("weights %s: out of memory", f->name);
    for (size_t i = 0; i < m && rc == 0; i++) {
        ct_tensor *t = make_tensor(f, &es[i]);
        char *name = t ? strdup(es[i].name) : NULL;
        if (!name) {
            if (t) rc = ct_error("weights %s: out of memory", f->name);
            else rc = -1;
            ct_free(t);
            break;
        }
        sd->names[sd->n] = name;
        sd->tensors[sd->n++] = ct__hold(t); /* released by ct_state_dict_free */
        ct_free(t);
    }
    free(es);
    if (rc) {
        ct_state_dict_free(sd);
        return NULL;
    }
    return sd;
}

ct_state_dict *ct_torch_load(const char *path, const char *key) {
    ct_torch_file *f = ct_torch_open(path);
    if (!f) return NULL;
    ct_state_dict *sd = ct_torch_state_dict(f, key);
    ct_torch_close(f);
    return sd;
}

ct_state_dict *ct_torch_load_buffer(const void *data, size_t n, const char *key, const char *name) {
    ct_torch_file *f = ct_torch_open_buffer(data, n, name);
    if (!f) return NULL;
    ct_state_dict *sd = ct_torch_state_dict(f, key);
    ct_torch_close(f);
    return sd;
}
