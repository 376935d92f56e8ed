/* safetensors reader and writer; the JSON header is read and written with jansson.
 * Every length and offset read from a file is checked before use: a corrupt or
 * hostile file yields an error, never a crash or an over-read. */
#include "ctorch_io.h"

#include "core/error.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define ST_MAX_HEADER (100u * 1024u * 1024u) /* as the reference implementation */
#define ST_MAX_INT (1ull << 53)                /* the largest exact JSON integer */

/* ------------------------------------------------------------------ dtypes */
static const struct {
    const char *name;
    ct_dtype dt;
} k_dtypes[] = {
    {"F32", CT_FLOAT32}, {"F64", CT_FLOAT64}, {"I64", CT_INT64},  {"I32", CT_INT32},
    {"U8", CT_UINT8},    {"BF16", CT_BFLOAT16}, {"F16", CT_FLOAT16}, {"BOOL", CT_BOOL},
};
#define N_DTYPES (sizeof k_dtypes / sizeof k_dtypes[0])

const char *ct_safetensors_dtype_name(ct_dtype dt) {
    for (size_t i = 0; i < N_DTYPES; i++)
        if (k_dtypes[i].dt == dt) return k_dtypes[i].name;
    return NULL;
}

int ct_safetensors_dtype_parse(const char *s, ct_dtype *out) {
    for (size_t i = 0; s && i < N_DTYPES; i++)
        if (strcmp(k_dtypes[i].name, s) == 0) {
            if (out) *out = k_dtypes[i].dt;
            return 0;
        }
    return ct_error("safetensors: unsupported dtype '%s'; ctorch reads F32, F64, I64, I32, U8, "
                    "BF16, F16 and BOOL (convert the tensor before saving, e.g. t.float())",
                    s ? s : "(null)");
}

static size_t st_dtype_size(ct_dtype dt) {
    switch (dt) {
    case CT_FLOAT32: case CT_INT32: return 4;
    case CT_FLOAT64: case CT_INT64: return 8;
    case CT_UINT8: case CT_BOOL: return 1;
    case CT_BFLOAT16: case CT_FLOAT16: return 2;
    default: return 0;
    }
}

/* ------------------------------------------------------------------ header */
/* One tensor's entry of the header. */
typedef struct {
    const char *name; /* borrowed from the parsed JSON */
    ct_dtype dt;
    int ndim;
    int64_t shape[CT_MAX_DIMS];
    uint64_t begin, end;
    int has_dtype, has_shape, has_offsets;
} st_entry;

typedef struct {
    json_t *root;     /* the parsed header */
    st_entry *e;      /* the tensors, in header order */
    int n;
    json_t *meta;     /* borrowed: the __metadata__ object, or NULL */
    char err[512];    /* why the header is rejected */
} st_header;

static void header_free(st_header *h) {
    json_decref(h->root);
    free(h->e);
    memset(h, 0, sizeof *h);
}

/* Records why the header is rejected; returns -1. */
static int st_bad(st_header *h, const char *fmt, ...) CT_PRINTF(2, 3);
static int st_bad(st_header *h, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->err, sizeof h->err, fmt, ap);
    va_end(ap);
    return -1;
}

/* What a JSON value is, for error messages. */
static const char *json_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "a string";
    case JSON_INTEGER:
        return json_integer_value(v) < 0                         ? "a negative integer"
               : (uint64_t)json_integer_value(v) > ST_MAX_INT ? "an integer above 2^53"
                                                                : "an integer";
    case JSON_REAL: return "a fraction";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* A non-negative JSON integer (no fraction or exponent), at most 2^53. */
static int json_to_uint(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        (uint64_t)json_integer_value(v) > ST_MAX_INT)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int parse_dtype(st_header *h, st_entry *e, const json_t *v) {
    if (!json_is_string(v))
        return st_bad(h, "tensor '%.100s': \"dtype\" is %s; it must be a string such as \"F32\"",
                      e->name, json_kind(v));
    if (ct_safetensors_dtype_parse(json_string_value(v), &e->dt) != 0)
        return st_bad(h, "tensor '%.100s' has unsupported dtype '%.20s' (supported: F32, F64, I64, "
                      "I32, U8, BF16, F16, BOOL)",
                      e->name, json_string_value(v));
    e->has_dtype = 1;
    return 0;
}

static int parse_shape(st_header *h, st_entry *e, const json_t *v) {
    if (!json_is_array(v))
        return st_bad(h, "tensor '%.100s': \"shape\" is %s; it must be a list of non-negative "
                      "integers",
                      e->name, json_kind(v));
    if (json_array_size(v) > CT_MAX_DIMS)
        return st_bad(h, "tensor '%.100s': shape has %zu dimensions, more than ctorch supports (%d)",
                      e->name, json_array_size(v), CT_MAX_DIMS);
    e->ndim = (int)json_array_size(v);
    for (int d = 0; d < e->ndim; d++) {
        uint64_t size;
        if (json_to_uint(json_array_get(v, (size_t)d), &size) != 0)
            return st_bad(h, "tensor '%.100s': dimension %d of \"shape\" is %s; sizes are "
                          "non-negative integers",
                          e->name, d, json_kind(json_array_get(v, (size_t)d)));
        e->shape[d] = (int64_t)size;
    }
    e->has_shape = 1;
    return 0;
}

static int parse_offsets(st_header *h, st_entry *e, const json_t *v) {
    if (!json_is_array(v) || json_array_size(v) != 2 ||
        json_to_uint(json_array_get(v, 0), &e->begin) != 0 ||
        json_to_uint(json_array_get(v, 1), &e->end) != 0)
        return st_bad(h, "tensor '%.100s': \"data_offsets\" is not a list of two non-negative "
                      "integers (data_offsets must be [begin, end])",
                      e->name);
    e->has_offsets = 1;
    return 0;
}

/* {"dtype": ..., "shape": [...], "data_offsets": [begin, end]}; other keys are ignored.
 * A missing key is reported later, with the file's other checks. */
static int parse_entry(st_header *h, const char *name, const json_t *obj, st_entry *e) {
    memset(e, 0, sizeof *e);
    e->name = name;
    if (!json_is_object(obj))
        return st_bad(h, "the entry of tensor '%.100s' is %s, not an object with \"dtype\", "
                      "\"shape\" and \"data_offsets\"",
                      name, json_kind(obj));
    const json_t *v;
    if ((v = json_object_get(obj, "dtype")) && parse_dtype(h, e, v) != 0) return -1;
    if ((v = json_object_get(obj, "shape")) && parse_shape(h, e, v) != 0) return -1;
    if ((v = json_object_get(obj, "data_offsets")) && parse_offsets(h, e, v) != 0) return -1;
    return 0;
}

/* null, or an object of strings. */
static int parse_metadata(st_header *h, json_t *m) {
    if (json_is_null(m)) return 0;
    if (!json_is_object(m))
        return st_bad(h, "\"__metadata__\" is %s (__metadata__ must be an object whose values "
                      "are strings)",
                      json_kind(m));
    const char *key;
    json_t *v;
    json_object_foreach(m, key, v) {
        if (!json_is_string(v))
            return st_bad(h, "\"__metadata__\" key '%.100s' holds %s (__metadata__ values must be "
                          "strings)",
                          key, json_kind(v));
    }
    h->meta = m;
    return 0;
}

/* Parses the header text into h; h->err says why it is rejected. */
static int parse_header(st_header *h, const char *text, size_t len) {
    json_error_t je;
    h->root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!h->root && json_error_code(&je) == json_error_duplicate_key)
        return st_bad(h, "%s at byte %d of the header: a name appears twice (tensor names and "
                      "the keys of an entry or of __metadata__ must be unique)",
                      je.text, je.position);
    if (!h->root)
        return st_bad(h, "%s at byte %d of the header; the file is not a safetensors checkpoint "
                      "or is corrupt",
                      je.text, je.position);
    if (!json_is_object(h->root))
        return st_bad(h, "the header is %s, not an object", json_kind(h->root));
    size_t n = json_object_size(h->root);
    h->e = malloc((n ? n : 1) * sizeof *h->e);
    if (!h->e) return st_bad(h, "out of memory");
    const char *key;
    json_t *v;
    json_object_foreach(h->root, key, v) {
        if (strcmp(key, "__metadata__") == 0) {
            if (parse_metadata(h, v) != 0) return -1;
        } else if (parse_entry(h, key, v, &h->e[h->n++]) != 0) {
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ load */
/* Checks that f is a regular file and reads its 8-byte length field and the header text
 * after it into *text (malloc'd, *len bytes). */
static int read_header_text(FILE *f, const char *path, uint64_t *fsize, char **text,
                            uint64_t *len) {
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode))
        return ct_error("safetensors_load: %s is not a regular file", path);
    *fsize = (uint64_t)sb.st_size;
    uint8_t lenb[8];
    if (*fsize < 8 || fread(lenb, 1, 8, f) != 8)
        return ct_error("safetensors_load: %s is truncated: %llu bytes, less than the 8-byte "
                        "header length; the file is not a safetensors checkpoint or was cut short",
                        path, (unsigned long long)*fsize);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | lenb[i];
    if (hlen > ST_MAX_HEADER)
        return ct_error("safetensors_load: %s declares a %llu-byte header (limit %u): not a "
                        "safetensors file or corrupt",
                        path, (unsigned long long)hlen, ST_MAX_HEADER);
    if (hlen + 8 > *fsize)
        return ct_error("safetensors_load: %s is truncated: its header needs %llu bytes but the "
                        "file has %llu after the length field",
                        path, (unsigned long long)hlen, (unsigned long long)(*fsize - 8));
    *text = malloc((size_t)hlen + 1);
    if (!*text) return ct_error("safetensors_load: %s: out of memory for the header", path);
    if (fread(*text, 1, (size_t)hlen, f) != hlen)
        return ct_error("safetensors_load: %s: read error in the header", path);
    if (memchr(*text, '\0', (size_t)hlen))
        return ct_error("safetensors_load: %s: the header is not JSON text (it contains NUL "
                        "bytes); not a safetensors file or corrupt",
                        path);
    *len = hlen;
    return 0;
}

/* Bytes a tensor of e's dtype and shape holds; UINT64_MAX when that overflows. */
static uint64_t entry_bytes(const st_entry *e) {
    uint64_t bytes = st_dtype_size(e->dt);
    for (int d = 0; d < e->ndim; d++)
        if (__builtin_mul_overflow(bytes, (uint64_t)e->shape[d], &bytes)) return UINT64_MAX;
    return bytes;
}

/* Every entry has its three fields, lies inside the data_len data bytes and spans exactly
 * what its dtype and shape need. */
static int check_entries(const st_header *h, const char *path, uint64_t data_len) {
    for (int i = 0; i < h->n; i++) {
        const st_entry *e = &h->e[i];
        if (!e->has_dtype || !e->has_shape || !e->has_offsets)
            return ct_error("safetensors_load: %s: tensor '%s' lacks %s in the header", path,
                            e->name,
                            !e->has_dtype ? "\"dtype\"" : !e->has_shape ? "\"shape\""
                                                                        : "\"data_offsets\"");
        if (e->end < e->begin || e->end > data_len)
            return ct_error("safetensors_load: %s: tensor '%s' has data_offsets [%llu, %llu] "
                            "outside the %llu data bytes; the file is truncated or corrupt",
                            path, e->name, (unsigned long long)e->begin,
                            (unsigned long long)e->end, (unsigned long long)data_len);
        uint64_t bytes = entry_bytes(e);
        if (e->end - e->begin != bytes) {
            char sh[128];
            size_t o = 0;
            sh[o++] = '[';
            for (int d = 0; d < e->ndim && o < sizeof sh - 24; d++)
                o += (size_t)snprintf(sh + o, sizeof sh - o, "%s%lld", d ? ", " : "",
                                      (long long)e->shape[d]);
            snprintf(sh + o, sizeof sh - o, "]");
            return ct_error("safetensors_load: %s: tensor '%s' (%s %s) needs %llu bytes but its "
                            "data_offsets [%llu, %llu] span %llu",
                            path, e->name, ct_safetensors_dtype_name(e->dt), sh,
                            (unsigned long long)bytes, (unsigned long long)e->begin,
                            (unsigned long long)e->end, (unsigned long long)(e->end - e->begin));
        }
    }
    return 0;
}

static int cmp_begin(const void *a, const void *b) {
    const st_entry *x = *(st_entry *const *)a, *y = *(st_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* The entries in data order (malloc'd), checked not to overlap; NULL with the error. */
static st_entry **data_order(st_header *h, const char *path) {
    st_entry **order = malloc((h->n > 0 ? (size_t)h->n : 1) * sizeof *order);
    if (!order) return ct_error_null("safetensors_load: out of memory");
    for (int i = 0; i < h->n; i++) order[i] = &h->e[i];
    qsort(order, (size_t)h->n, sizeof *order, cmp_begin);
    for (int i = 1; i < h->n; i++) {
        if (order[i]->begin < order[i - 1]->end) {
            ct_error("safetensors_load: %s: tensors '%s' and '%s' overlap in the data section; "
                     "the file is corrupt",
                     path, order[i - 1]->name, order[i]->name);
            free(order);
            return NULL;
        }
    }
    return order;
}

/* Copies the __metadata__ strings into st. */
static int copy_metadata(ct_safetensors *st, json_t *meta) {
    size_t n = meta ? json_object_size(meta) : 0;
    st->meta_keys = calloc(n ? n : 1, sizeof(char *));
    st->meta_values = calloc(n ? n : 1, sizeof(char *));
    if (!st->meta_keys || !st->meta_values) return ct_error("safetensors_load: out of memory");
    if (!meta) return 0;
    const char *key;
    json_t *v;
    json_object_foreach(meta, key, v) {
        st->meta_keys[st->n_meta] = strdup(key);
        st->meta_values[st->n_meta] = strdup(json_string_value(v));
        if (!st->meta_keys[st->n_meta] || !st->meta_values[st->n_meta]) {
            free(st->meta_keys[st->n_meta]);
            free(st->meta_values[st->n_meta]);
            return ct_error("safetensors_load: out of memory");
        }
        st->n_meta++;
    }
    return 0;
}

/* Reads the n tensors of order (data starts at byte data_start of f) and the metadata. */
static ct_safetensors *read_tensors(FILE *f, const char *path, uint64_t data_start,
                                    st_entry **order, int n, json_t *meta) {
    ct_safetensors *st = calloc(1, sizeof *st);
    if (!st) return ct_error_null("safetensors_load: out of memory");
    st->names = calloc(n > 0 ? (size_t)n : 1, sizeof(char *));
    st->tensors = calloc(n > 0 ? (size_t)n : 1, sizeof(ct_tensor *));
    if (!st->names || !st->tensors) {
        ct_error("safetensors_load: out of memory");
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        const st_entry *e = order[i];
        ct_tensor *t = ct_empty(e->shape, e->ndim, e->dt);
        if (!t) {
            ct_error_context("safetensors_load: %s: tensor '%s'", path, e->name);
            goto fail;
        }
        st->tensors[st->n] = t;
        st->names[st->n] = strdup(e->name);
        st->n++;
        if (!st->names[st->n - 1]) {
            ct_error("safetensors_load: out of memory");
            goto fail;
        }
        size_t bytes = (size_t)(e->end - e->begin);
        if (bytes == 0) continue;
        if (fseeko(f, (off_t)(data_start + e->begin), SEEK_SET) != 0 ||
            fread(ct_data(t), 1, bytes, f) != bytes) {
            ct_error("safetensors_load: %s: read error in the data of tensor '%s' (file "
                     "truncated while reading?)",
                     path, e->name);
            goto fail;
        }
        if (e->dt == CT_BOOL) { /* a byte other than 0 is true: stored as 1 */
            uint8_t *b = ct_data(t);
            for (size_t k = 0; k < bytes; k++) b[k] = b[k] != 0;
        }
    }
    if (copy_metadata(st, meta) == 0) return st;
fail:
    ct_safetensors_free(st);
    return NULL;
}

ct_safetensors *ct_safetensors_load(const char *path) {
    if (!path) return ct_error_null("safetensors_load: path is NULL");
    FILE *f = fopen(path, "rb");
    if (!f)
        return ct_error_null("safetensors_load: cannot open %s: %s", path, strerror(errno));
    st_header h;
    memset(&h, 0, sizeof h);
    char *text = NULL;
    uint64_t fsize = 0, hlen = 0;
    st_entry **order = NULL;
    ct_safetensors *st = NULL;
    if (read_header_text(f, path, &fsize, &text, &hlen) != 0) goto done;
    if (parse_header(&h, text, (size_t)hlen) != 0) {
        ct_error("safetensors_load: %s: bad header JSON: %s", path, h.err);
        goto done;
    }
    if (check_entries(&h, path, fsize - 8 - hlen) != 0) goto done;
    if (!(order = data_order(&h, path))) goto done;
    st = read_tensors(f, path, 8 + hlen, order, h.n, h.meta);
done:
    header_free(&h);
    free(order);
    free(text);
    fclose(f);
    return st;
}

ct_tensor *ct_safetensors_get(const ct_safetensors *st, const char *name) {
    if (!st || !name) return NULL;
    for (int i = 0; i < st->n; i++)
        if (strcmp(st->names[i], name) == 0) return st->tensors[i];
    return NULL;
}

const char *ct_safetensors_metadata(const ct_safetensors *st, const char *key) {
    if (!st || !key) return NULL;
    for (int i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta_keys[i], key) == 0) return st->meta_values[i];
    return NULL;
}

void ct_safetensors_free(ct_safetensors *st) {
    if (!st) return;
    for (int i = 0; i < st->n; i++) {
        free(st->names[i]);
        ct_free(st->tensors[i]);
    }
    for (int i = 0; i < st->n_meta; i++) {
        free(st->meta_keys[i]);
        free(st->meta_values[i]);
    }
    free(st->names);
    free(st->tensors);
    free(st->meta_keys);
    free(st->meta_values);
    free(st);
}

/* ------------------------------------------------------------------ save */
static int check_save_args(const char *path, const char *const *names,
                           ct_tensor *const *tensors, int n, const char *const *metadata) {
    if (!path || !path[0]) return ct_error("safetensors_save: empty path");
    if (n < 0 || (n > 0 && (!names || !tensors)))
        return ct_error("safetensors_save: %s: need n >= 0 names and tensors", path);
    for (int i = 0; i < n; i++) {
        if (!names[i] || !names[i][0])
            return ct_error("safetensors_save: %s: tensor %d has an empty name", path, i);
        if (strcmp(names[i], "__metadata__") == 0)
            return ct_error("safetensors_save: %s: '__metadata__' is reserved and cannot name "
                            "a tensor",
                            path);
        if (!tensors[i])
            return ct_error("safetensors_save: %s: tensor '%s' is NULL", path, names[i]);
        if (!ct_safetensors_dtype_name(ct_dtype_of(tensors[i])))
            return ct_error("safetensors_save: %s: tensor '%s' has dtype %s, which safetensors "
                            "files from ctorch do not store",
                            path, names[i], ct_dtype_name(ct_dtype_of(tensors[i])));
        for (int j = 0; j < i; j++)
            if (strcmp(names[i], names[j]) == 0)
                return ct_error("safetensors_save: %s: tensor name '%s' is used twice", path,
                                names[i]);
    }
    for (int i = 0; metadata && metadata[i]; i += 2) {
        if (!metadata[i + 1])
            return ct_error("safetensors_save: %s: metadata key '%s' has no value (the list is "
                            "key, value, ..., NULL)",
                            path, metadata[i]);
        for (int j = 0; j < i; j += 2)
            if (strcmp(metadata[i], metadata[j]) == 0)
                return ct_error("safetensors_save: %s: metadata key '%s' is given twice; keys "
                                "must be unique",
                                path, metadata[i]);
    }
    return 0;
}

static uint64_t tensor_bytes(const ct_tensor *t) {
    return (uint64_t)ct_numel(t) * st_dtype_size(ct_dtype_of(t));
}

/* {"dtype": "F32", "shape": [...], "data_offsets": [off, off + bytes]} */
static json_t *tensor_entry(const ct_tensor *t, uint64_t off) {
    json_t *shape = json_array();
    for (int d = 0; shape && d < ct_ndim(t); d++)
        if (json_array_append_new(shape, json_integer(ct_size(t, d))) != 0) {
            json_decref(shape);
            return NULL;
        }
    return json_pack("{s:s, s:o, s:[I, I]}", "dtype", ct_safetensors_dtype_name(ct_dtype_of(t)),
                     "shape", shape, "data_offsets", (json_int_t)off,
                     (json_int_t)(off + tensor_bytes(t)));
}

/* {"key": "value", ...} of the NULL-terminated key, value list. NULL with the error. */
static json_t *metadata_json(const char *path, const char *const *metadata) {
    json_t *meta = json_object();
    if (!meta) return ct_error_null("safetensors_save: %s: out of memory", path);
    for (int i = 0; metadata[i]; i += 2) {
        if (json_object_set_new(meta, metadata[i], json_string(metadata[i + 1])) != 0) {
            json_decref(meta);
            return ct_error_null("safetensors_save: %s: metadata key '%s' or its value is not "
                                 "valid UTF-8 (the safetensors header is JSON text); pass "
                                 "UTF-8 strings",
                                 path, metadata[i]);
        }
    }
    return meta;
}

/* The header object: "__metadata__" first (when given), then the tensors in the order
 * given, their data back to back. NULL with the error. */
static json_t *header_json(const char *path, const char *const *names,
                           ct_tensor *const *tensors, int n, const char *const *metadata) {
    json_t *root = json_object();
    if (!root) return ct_error_null("safetensors_save: %s: out of memory", path);
    if (metadata && metadata[0]) {
        json_t *meta = metadata_json(path, metadata);
        if (!meta || json_object_set_new(root, "__metadata__", meta) != 0) {
            if (meta) ct_error("safetensors_save: %s: out of memory", path);
            json_decref(root);
            return NULL;
        }
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        json_t *e = tensor_entry(tensors[i], off);
        if (!e || json_object_set_new(root, names[i], e) != 0) {
            if (!e) ct_error("safetensors_save: %s: out of memory", path);
            else ct_error("safetensors_save: %s: tensor name '%s' is not valid UTF-8 (the "
                          "safetensors header is JSON text); rename the tensor",
                          path, names[i]);
            json_decref(root);
            return NULL;
        }
        off += tensor_bytes(tensors[i]);
    }
    return root;
}

/* The header text: compact JSON padded with spaces to a multiple of 8 bytes, so that the
 * data starts 8-byte aligned (as the safetensors library writes it). */
static char *header_text(const char *path, const char *const *names, ct_tensor *const *tensors,
                         int n, const char *const *metadata, size_t *len) {
    json_t *root = header_json(path, names, tensors, n, metadata);
    if (!root) return NULL;
    char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    size_t l = s ? strlen(s) : 0, padded = (l + 7) / 8 * 8;
    char *p = s ? realloc(s, padded + 1) : NULL;
    if (!p) {
        free(s);
        ct_error("safetensors_save: %s: out of memory", path);
        return NULL;
    }
    memset(p + l, ' ', padded - l);
    p[padded] = '\0';
    *len = padded;
    return p;
}

/* Appends t's bytes (row-major, from any device and layout) to af. */
static int write_tensor_data(ct_atomic_file *af, const char *path, const char *name,
                             ct_tensor *t) {
    size_t bytes = (size_t)tensor_bytes(t);
    if (bytes == 0) return 0;
    ct_tensor *cpu = NULL;
    if (!ct_device_is_host(ct_device_of(t))) {
        cpu = ct_to_device(t, ct_cpu());
        if (!cpu) {
            ct_error_context("safetensors_save: %s: copying '%s' to the CPU", path, name);
            return -1;
        }
        t = cpu;
    }
    int ok;
    if (ct_is_contiguous(t)) {
        ok = fwrite(ct_data(t), 1, bytes, af->fp) == bytes;
    } else {
        void *buf = malloc(bytes);
        if (!buf || ct_copy_to_buffer(t, buf, bytes) != 0) {
            free(buf);
            ct_free(cpu);
            if (!buf) return ct_error("safetensors_save: %s: out of memory", path);
            ct_error_context("safetensors_save: %s: tensor '%s'", path, name);
            return -1;
        }
        ok = fwrite(buf, 1, bytes, af->fp) == bytes;
        free(buf);
    }
    ct_free(cpu);
    if (!ok)
        return ct_error("safetensors_save: writing %s failed: %s; check free disk space", path,
                        strerror(errno));
    return 0;
}

int ct_safetensors_save(const char *path, const char *const *names, ct_tensor *const *tensors,
                        int n, const char *const *metadata) {
    if (check_save_args(path, names, tensors, n, metadata) != 0) return -1;
    size_t hlen = 0;
    char *text = header_text(path, names, tensors, n, metadata, &hlen);
    if (!text) return -1;
    ct_atomic_file *af = ct_atomic_open(path);
    if (!af) {
        free(text);
        return -1;
    }
    uint8_t lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    int ok = fwrite(lenb, 1, 8, af->fp) == 8 && fwrite(text, 1, hlen, af->fp) == hlen;
    free(text);
    if (!ok) {
        int e = errno;
        ct_atomic_abort(af);
        return ct_error("safetensors_save: writing %s failed: %s; check free disk space", path,
                        strerror(e));
    }
    for (int i = 0; i < n; i++)
        if (write_tensor_data(af, path, names[i], tensors[i]) != 0) {
            ct_atomic_abort(af);
            return -1;
        }
    return ct_atomic_commit(af);
}
