/* safetensors reader and writer with a small hand-written JSON parser.
 * Every length and offset read from a file is checked before use: a corrupt or
 * hostile file yields an error, never a crash or an over-read. */
#include "ctorch_io.h"

#include "core/error.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define ST_MAX_HEADER (100u * 1024u * 1024u) /* as the reference implementation */
#define ST_MAX_DEPTH 64

/* ------------------------------------------------------------------ dtypes */
static const struct {
    const char *name;
    ct_dtype dt;
} k_dtypes[] = {
    {"F32", CT_FLOAT32}, {"F64", CT_FLOAT64}, {"I64", CT_INT64},  {"I32", CT_INT32},
    {"U8", CT_UINT8},    {"BF16", CT_BFLOAT16}, {"F16", CT_FLOAT16},
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
                    "BF16 and F16 (convert the tensor before saving, e.g. t.float())",
                    s ? s : "(null)");
}

static size_t st_dtype_size(ct_dtype dt) {
    switch (dt) {
    case CT_FLOAT32: case CT_INT32: return 4;
    case CT_FLOAT64: case CT_INT64: return 8;
    case CT_UINT8: return 1;
    case CT_BFLOAT16: case CT_FLOAT16: return 2;
    default: return 0;
    }
}

/* ------------------------------------------------------------ JSON reading */
typedef struct {
    const char *s;   /* NUL-terminated copy of the header */
    size_t pos, len;
    const char *path;
    char err[256];   /* first parse error */
} jp;

static int jfail(jp *p, const char *what) {
    if (!p->err[0])
        snprintf(p->err, sizeof p->err, "%s at byte %zu of the header", what, p->pos);
    return -1;
}

static void jws(jp *p) {
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
            p->pos++;
        else
            break;
    }
}

static int jexpect(jp *p, char c) {
    jws(p);
    if (p->pos >= p->len || p->s[p->pos] != c) {
        char msg[64];
        snprintf(msg, sizeof msg, "expected '%c'", c);
        return jfail(p, msg);
    }
    p->pos++;
    return 0;
}

static int jpeek(jp *p, char c) {
    jws(p);
    return p->pos < p->len && p->s[p->pos] == c;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int read_hex4(jp *p, unsigned *out) {
    if (p->pos + 4 > p->len) return jfail(p, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p->s[p->pos + i]);
        if (h < 0) return jfail(p, "bad \\u escape");
        v = v * 16 + (unsigned)h;
    }
    p->pos += 4;
    *out = v;
    return 0;
}

/* Parses a string; *out is malloc'd (NULL out: skip). */
static int jstring(jp *p, char **out) {
    if (jexpect(p, '"') != 0) return -1;
    size_t cap = 32, n = 0;
    char *buf = out ? malloc(cap) : NULL;
    if (out && !buf) return jfail(p, "out of memory");
    for (;;) {
        if (p->pos >= p->len) {
            free(buf);
            return jfail(p, "unterminated string");
        }
        unsigned char c = (unsigned char)p->s[p->pos++];
        char tmp[4];
        int tn = 0;
        if (c == '"') break;
        if (c < 0x20) {
            free(buf);
            return jfail(p, "control character in string");
        }
        if (c != '\\') {
            tmp[tn++] = (char)c;
        } else {
            if (p->pos >= p->len) {
                free(buf);
                return jfail(p, "unterminated escape");
            }
            char e = p->s[p->pos++];
            unsigned cp;
            switch (e) {
            case '"': tmp[tn++] = '"'; break;
            case '\\': tmp[tn++] = '\\'; break;
            case '/': tmp[tn++] = '/'; break;
            case 'b': tmp[tn++] = '\b'; break;
            case 'f': tmp[tn++] = '\f'; break;
            case 'n': tmp[tn++] = '\n'; break;
            case 'r': tmp[tn++] = '\r'; break;
            case 't': tmp[tn++] = '\t'; break;
            case 'u':
                if (read_hex4(p, &cp) != 0) {
                    free(buf);
                    return -1;
                }
                if (cp >= 0xD800 && cp <= 0xDBFF) { /* surrogate pair */
                    unsigned lo;
                    if (p->pos + 2 > p->len || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
                        free(buf);
                        return jfail(p, "lone surrogate in \\u escape");
                    }
                    p->pos += 2;
                    if (read_hex4(p, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF) {
                        free(buf);
                        return jfail(p, "bad surrogate pair");
                    }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    free(buf);
                    return jfail(p, "lone surrogate in \\u escape");
                }
                if (cp == 0) {
                    free(buf);
                    return jfail(p, "NUL character in string");
                }
                if (cp < 0x80) {
                    tmp[tn++] = (char)cp;
                } else if (cp < 0x800) {
                    tmp[tn++] = (char)(0xC0 | (cp >> 6));
                    tmp[tn++] = (char)(0x80 | (cp & 0x3F));
                } else if (cp < 0x10000) {
                    tmp[tn++] = (char)(0xE0 | (cp >> 12));
                    tmp[tn++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                    tmp[tn++] = (char)(0x80 | (cp & 0x3F));
                } else {
                    tmp[tn++] = (char)(0xF0 | (cp >> 18));
                    tmp[tn++] = (char)(0x80 | ((cp >> 12) & 0x3F));
                    tmp[tn++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                    tmp[tn++] = (char)(0x80 | (cp & 0x3F));
                }
                break;
            default:
                free(buf);
                return jfail(p, "bad escape in string");
            }
        }
        if (buf) {
            if (n + (size_t)tn + 1 > cap) {
                cap = cap * 2 + (size_t)tn;
                char *nb = realloc(buf, cap);
                if (!nb) {
                    free(buf);
                    return jfail(p, "out of memory");
                }
                buf = nb;
            }
            memcpy(buf + n, tmp, (size_t)tn);
            n += (size_t)tn;
        }
    }
    if (buf) {
        buf[n] = '\0';
        *out = buf;
    }
    return 0;
}

/* A non-negative JSON integer (no fraction or exponent), at most 2^53. */
static int juint(jp *p, uint64_t *out) {
    jws(p);
    size_t start = p->pos;
    uint64_t v = 0;
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
        v = v * 10 + (uint64_t)(p->s[p->pos] - '0');
        if (v > (1ull << 53)) return jfail(p, "integer too large");
        p->pos++;
    }
    if (p->pos == start) return jfail(p, "expected a non-negative integer");
    if (p->pos - start > 1 && p->s[start] == '0') return jfail(p, "integer with a leading zero");
    if (p->pos < p->len && (p->s[p->pos] == '.' || p->s[p->pos] == 'e' || p->s[p->pos] == 'E'))
        return jfail(p, "expected an integer, found a fraction");
    *out = v;
    return 0;
}

static int jskip(jp *p, int depth);

static int jskip_literal(jp *p, const char *lit) {
    size_t l = strlen(lit);
    if (p->pos + l > p->len || strncmp(p->s + p->pos, lit, l) != 0)
        return jfail(p, "unexpected character");
    p->pos += l;
    return 0;
}

static int jskip_number(jp *p) {
    size_t start = p->pos;
    if (p->pos < p->len && p->s[p->pos] == '-') p->pos++;
    while (p->pos < p->len && strchr("0123456789.eE+-", p->s[p->pos])) p->pos++;
    return p->pos > start ? 0 : jfail(p, "bad number");
}

static int jskip(jp *p, int depth) {
    if (depth > ST_MAX_DEPTH) return jfail(p, "nesting too deep");
    jws(p);
    if (p->pos >= p->len) return jfail(p, "unexpected end");
    char c = p->s[p->pos];
    if (c == '"') return jstring(p, NULL);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        p->pos++;
        if (jpeek(p, close)) {
            p->pos++;
            return 0;
        }
        for (;;) {
            if (c == '{') {
                if (jstring(p, NULL) != 0 || jexpect(p, ':') != 0) return -1;
            }
            if (jskip(p, depth + 1) != 0) return -1;
            if (jpeek(p, ',')) {
                p->pos++;
                continue;
            }
            return jexpect(p, close);
        }
    }
    if (c == 't') return jskip_literal(p, "true");
    if (c == 'f') return jskip_literal(p, "false");
    if (c == 'n') return jskip_literal(p, "null");
    return jskip_number(p);
}

/* ---------------------------------------------------------------- header */
typedef struct {
    char *name;
    ct_dtype dt;
    int ndim;
    int64_t shape[CT_MAX_DIMS];
    uint64_t begin, end;
    int has_dtype, has_shape, has_offsets;
} st_entry;

typedef struct {
    st_entry *e;
    int n, cap;
    char **mk, **mv;
    int nm, capm;
} st_header;

static void header_free(st_header *h) {
    for (int i = 0; i < h->n; i++) free(h->e[i].name);
    for (int i = 0; i < h->nm; i++) {
        free(h->mk[i]);
        free(h->mv[i]);
    }
    free(h->e);
    free(h->mk);
    free(h->mv);
    memset(h, 0, sizeof *h);
}

static int parse_entry(jp *p, st_entry *e) {
    if (jexpect(p, '{') != 0) return -1;
    if (jpeek(p, '}')) {
        p->pos++;
        return 0;
    }
    for (;;) {
        char *key = NULL;
        if (jstring(p, &key) != 0) return -1;
        if (jexpect(p, ':') != 0) {
            free(key);
            return -1;
        }
        int rc = 0;
        if (strcmp(key, "dtype") == 0) {
            char *dt = NULL;
            rc = jstring(p, &dt);
            if (rc == 0) {
                if (ct_safetensors_dtype_parse(dt, &e->dt) != 0) {
                    snprintf(p->err, sizeof p->err, "tensor '%s' has unsupported dtype '%s' "
                             "(supported: F32, F64, I64, I32, U8, BF16, F16)", e->name, dt);
                    rc = -1;
                }
                e->has_dtype = 1;
            }
            free(dt);
        } else if (strcmp(key, "shape") == 0) {
            rc = jexpect(p, '[');
            e->ndim = 0;
            if (rc == 0 && jpeek(p, ']')) {
                p->pos++;
            } else {
                while (rc == 0) {
                    uint64_t d;
                    if ((rc = juint(p, &d)) != 0) break;
                    if (e->ndim >= CT_MAX_DIMS) {
                        rc = jfail(p, "shape has more dimensions than ctorch supports (8)");
                        break;
                    }
                    e->shape[e->ndim++] = (int64_t)d;
                    if (jpeek(p, ',')) {
                        p->pos++;
                        continue;
                    }
                    rc = jexpect(p, ']');
                    break;
                }
            }
            e->has_shape = 1;
        } else if (strcmp(key, "data_offsets") == 0) {
            rc = jexpect(p, '[');
            if (rc == 0) rc = juint(p, &e->begin);
            if (rc == 0) rc = jexpect(p, ',');
            if (rc == 0) rc = juint(p, &e->end);
            if (rc == 0) rc = jexpect(p, ']');
            if (rc != 0 && !strstr(p->err, "data_offsets"))
                snprintf(p->err + strlen(p->err), sizeof p->err - strlen(p->err),
                         " (data_offsets must be [begin, end])");
            e->has_offsets = 1;
        } else {
            rc = jskip(p, 1);
        }
        free(key);
        if (rc != 0) return -1;
        if (jpeek(p, ',')) {
            p->pos++;
            continue;
        }
        return jexpect(p, '}');
    }
}

static int parse_metadata(jp *p, st_header *h) {
    if (jpeek(p, 'n')) return jskip_literal(p, "null");
    if (jexpect(p, '{') != 0) return -1;
    if (jpeek(p, '}')) {
        p->pos++;
        return 0;
    }
    for (;;) {
        char *k = NULL, *v = NULL;
        if (jstring(p, &k) != 0) return -1;
        if (jexpect(p, ':') != 0 || jstring(p, &v) != 0) {
            free(k);
            if (!strstr(p->err, "metadata"))
                snprintf(p->err + strlen(p->err), sizeof p->err - strlen(p->err),
                         " (__metadata__ values must be strings)");
            return -1;
        }
        if (h->nm == h->capm) {
            int nc = h->capm ? h->capm * 2 : 8;
            char **a = realloc(h->mk, (size_t)nc * sizeof(char *));
            if (a) h->mk = a;
            char **b = realloc(h->mv, (size_t)nc * sizeof(char *));
            if (b) h->mv = b;
            if (!a || !b) {
                free(k);
                free(v);
                return jfail(p, "out of memory");
            }
            h->capm = nc;
        }
        h->mk[h->nm] = k;
        h->mv[h->nm] = v;
        h->nm++;
        if (jpeek(p, ',')) {
            p->pos++;
            continue;
        }
        return jexpect(p, '}');
    }
}

static int parse_header(jp *p, st_header *h) {
    if (jexpect(p, '{') != 0) return -1;
    if (jpeek(p, '}')) {
        p->pos++;
    } else {
        for (;;) {
            char *key = NULL;
            if (jstring(p, &key) != 0) return -1;
            if (jexpect(p, ':') != 0) {
                free(key);
                return -1;
            }
            if (strcmp(key, "__metadata__") == 0) {
                free(key);
                if (parse_metadata(p, h) != 0) return -1;
            } else {
                if (h->n == h->cap) {
                    int nc = h->cap ? h->cap * 2 : 16;
                    st_entry *ne = realloc(h->e, (size_t)nc * sizeof(st_entry));
                    if (!ne) {
                        free(key);
                        return jfail(p, "out of memory");
                    }
                    h->e = ne;
                    h->cap = nc;
                }
                st_entry *e = &h->e[h->n++];
                memset(e, 0, sizeof *e);
                e->name = key;
                if (parse_entry(p, e) != 0) {
                    if (!strstr(p->err, "tensor '"))
                        snprintf(p->err + strlen(p->err), sizeof p->err - strlen(p->err),
                                 " (in the entry of tensor '%.60s')", e->name);
                    return -1;
                }
            }
            if (jpeek(p, ',')) {
                p->pos++;
                continue;
            }
            if (jexpect(p, '}') != 0) return -1;
            break;
        }
    }
    jws(p);
    if (p->pos != p->len) return jfail(p, "unexpected data after the JSON object");
    return 0;
}

static int cmp_begin(const void *a, const void *b) {
    const st_entry *x = *(st_entry *const *)a, *y = *(st_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* ------------------------------------------------------------------ load */
ct_safetensors *ct_safetensors_load(const char *path) {
    if (!path) return ct_error_null("safetensors_load: path is NULL");
    FILE *f = fopen(path, "rb");
    if (!f)
        return ct_error_null("safetensors_load: cannot open %s: %s", path, strerror(errno));
    ct_safetensors *st = NULL;
    st_header h;
    memset(&h, 0, sizeof h);
    jp p;
    memset(&p, 0, sizeof p);
    st_entry **order = NULL;
    char *hdr = NULL;
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        ct_error("safetensors_load: %s is not a regular file", path);
        goto fail;
    }
    uint64_t fsize = (uint64_t)sb.st_size;
    uint8_t lenb[8];
    if (fsize < 8 || fread(lenb, 1, 8, f) != 8) {
        ct_error("safetensors_load: %s is truncated: %llu bytes, less than the 8-byte header "
                 "length; the file is not a safetensors checkpoint or was cut short",
                 path, (unsigned long long)fsize);
        goto fail;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | lenb[i];
    if (hlen > ST_MAX_HEADER) {
        ct_error("safetensors_load: %s declares a %llu-byte header (limit %u): not a "
                 "safetensors file or corrupt",
                 path, (unsigned long long)hlen, ST_MAX_HEADER);
        goto fail;
    }
    if (hlen + 8 > fsize) {
        ct_error("safetensors_load: %s is truncated: its header needs %llu bytes but the file "
                 "has %llu after the length field",
                 path, (unsigned long long)hlen, (unsigned long long)(fsize - 8));
        goto fail;
    }
    hdr = malloc((size_t)hlen + 1);
    if (!hdr) {
        ct_error("safetensors_load: %s: out of memory for the header", path);
        goto fail;
    }
    if (fread(hdr, 1, (size_t)hlen, f) != hlen) {
        ct_error("safetensors_load: %s: read error in the header", path);
        goto fail;
    }
    hdr[hlen] = '\0';
    if (memchr(hdr, '\0', (size_t)hlen)) {
        ct_error("safetensors_load: %s: the header is not JSON text (it contains NUL bytes); "
                 "not a safetensors file or corrupt",
                 path);
        goto fail;
    }
    p.s = hdr;
    p.len = (size_t)hlen;
    p.path = path;
    if (parse_header(&p, &h) != 0) {
        ct_error("safetensors_load: %s: bad header JSON: %s", path, p.err);
        goto fail;
    }
    uint64_t data_len = fsize - 8 - hlen;
    for (int i = 0; i < h.n; i++) {
        st_entry *e = &h.e[i];
        if (!e->has_dtype || !e->has_shape || !e->has_offsets) {
            ct_error("safetensors_load: %s: tensor '%s' lacks %s in the header", path, e->name,
                     !e->has_dtype ? "\"dtype\"" : !e->has_shape ? "\"shape\""
                                                                 : "\"data_offsets\"");
            goto fail;
        }
        for (int j = 0; j < i; j++)
            if (strcmp(h.e[j].name, e->name) == 0) {
                ct_error("safetensors_load: %s: tensor name '%s' appears twice in the header",
                         path, e->name);
                goto fail;
            }
        uint64_t bytes = st_dtype_size(e->dt);
        for (int d = 0; d < e->ndim; d++) {
            if (__builtin_mul_overflow(bytes, (uint64_t)e->shape[d], &bytes)) {
                bytes = UINT64_MAX;
                break;
            }
        }
        if (e->end < e->begin || e->end > data_len) {
            ct_error("safetensors_load: %s: tensor '%s' has data_offsets [%llu, %llu] outside "
                     "the %llu data bytes; the file is truncated or corrupt",
                     path, e->name, (unsigned long long)e->begin, (unsigned long long)e->end,
                     (unsigned long long)data_len);
            goto fail;
        }
        if (e->end - e->begin != bytes) {
            char sh[128];
            int64_t tmp[CT_MAX_DIMS];
            memcpy(tmp, e->shape, sizeof tmp);
            size_t o = 0;
            sh[o++] = '[';
            for (int d = 0; d < e->ndim && o < sizeof sh - 24; d++)
                o += (size_t)snprintf(sh + o, sizeof sh - o, "%s%lld", d ? ", " : "",
                                      (long long)tmp[d]);
            snprintf(sh + o, sizeof sh - o, "]");
            ct_error("safetensors_load: %s: tensor '%s' (%s %s) needs %llu bytes but its "
                     "data_offsets [%llu, %llu] span %llu",
                     path, e->name, ct_safetensors_dtype_name(e->dt), sh,
                     (unsigned long long)bytes, (unsigned long long)e->begin,
                     (unsigned long long)e->end, (unsigned long long)(e->end - e->begin));
            goto fail;
        }
    }
    order = malloc((h.n > 0 ? (size_t)h.n : 1) * sizeof *order);
    if (!order) {
        ct_error("safetensors_load: out of memory");
        goto fail;
    }
    for (int i = 0; i < h.n; i++) order[i] = &h.e[i];
    qsort(order, (size_t)h.n, sizeof *order, cmp_begin);
    for (int i = 1; i < h.n; i++) {
        if (order[i]->begin < order[i - 1]->end) {
            ct_error("safetensors_load: %s: tensors '%s' and '%s' overlap in the data "
                     "section; the file is corrupt",
                     path, order[i - 1]->name, order[i]->name);
            goto fail;
        }
    }

    st = calloc(1, sizeof *st);
    if (!st) {
        ct_error("safetensors_load: out of memory");
        goto fail;
    }
    st->names = calloc(h.n > 0 ? (size_t)h.n : 1, sizeof(char *));
    st->tensors = calloc(h.n > 0 ? (size_t)h.n : 1, sizeof(ct_tensor *));
    if (!st->names || !st->tensors) {
        ct_error("safetensors_load: out of memory");
        goto fail;
    }
    for (int i = 0; i < h.n; i++) {
        st_entry *e = order[i];
        ct_tensor *t = ct_empty(e->shape, e->ndim, e->dt);
        if (!t) {
            ct_error_context("safetensors_load: %s: tensor '%s'", path, e->name);
            goto fail;
        }
        st->tensors[st->n] = t;
        st->names[st->n] = e->name;
        e->name = NULL; /* moved */
        st->n++;
        size_t bytes = (size_t)(e->end - e->begin);
        if (bytes == 0) continue;
        if (fseeko(f, (off_t)(8 + hlen + e->begin), SEEK_SET) != 0 ||
            fread(ct_data(t), 1, bytes, f) != bytes) {
            ct_error("safetensors_load: %s: read error in the data of tensor '%s' (file "
                     "truncated while reading?)",
                     path, st->names[st->n - 1]);
            goto fail;
        }
    }
    st->n_meta = h.nm;
    st->meta_keys = h.mk;
    st->meta_values = h.mv;
    h.mk = h.mv = NULL;
    h.nm = 0;
    header_free(&h);
    free(order);
    free(hdr);
    fclose(f);
    return st;
fail:
    ct_safetensors_free(st);
    header_free(&h);
    free(order);
    free(hdr);
    fclose(f);
    return NULL;
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
typedef struct {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t len) {
    if (b->oom) return;
    if (b->n + len + 1 > b->cap) {
        size_t nc = (b->cap ? b->cap * 2 : 1024) + len;
        char *ns = realloc(b->s, nc);
        if (!ns) {
            b->oom = 1;
            return;
        }
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->n, s, len);
    b->n += len;
    b->s[b->n] = '\0';
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_json_string(sbuf *b, const char *s) {
    sb_puts(b, "\"");
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char esc[8];
        if (*c == '"') sb_puts(b, "\\\"");
        else if (*c == '\\') sb_puts(b, "\\\\");
        else if (*c == '\n') sb_puts(b, "\\n");
        else if (*c == '\t') sb_puts(b, "\\t");
        else if (*c == '\r') sb_puts(b, "\\r");
        else if (*c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *c);
            sb_puts(b, esc);
        } else
            sb_put(b, (const char *)c, 1);
    }
    sb_puts(b, "\"");
}

int ct_safetensors_save(const char *path, const char *const *names, ct_tensor *const *tensors,
                        int n, const char *const *metadata) {
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
    if (metadata) {
        for (int i = 0; metadata[i]; i += 2)
            if (!metadata[i + 1])
                return ct_error("safetensors_save: %s: metadata key '%s' has no value (the "
                                "list is key, value, ..., NULL)",
                                path, metadata[i]);
    }

    sbuf b = {0};
    char num[96];
    sb_puts(&b, "{");
    int first = 1;
    if (metadata && metadata[0]) {
        sb_puts(&b, "\"__metadata__\":{");
        for (int i = 0; metadata[i]; i += 2) {
            if (i) sb_puts(&b, ",");
            sb_json_string(&b, metadata[i]);
            sb_puts(&b, ":");
            sb_json_string(&b, metadata[i + 1]);
        }
        sb_puts(&b, "}");
        first = 0;
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const ct_tensor *t = tensors[i];
        uint64_t bytes = (uint64_t)ct_numel(t) * st_dtype_size(ct_dtype_of(t));
        if (!first) sb_puts(&b, ",");
        first = 0;
        sb_json_string(&b, names[i]);
        sb_puts(&b, ":{\"dtype\":\"");
        sb_puts(&b, ct_safetensors_dtype_name(ct_dtype_of(t)));
        sb_puts(&b, "\",\"shape\":[");
        for (int d = 0; d < ct_ndim(t); d++) {
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)ct_size(t, d));
            sb_puts(&b, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                 (unsigned long long)(off + bytes));
        sb_puts(&b, num);
        off += bytes;
    }
    sb_puts(&b, "}");
    while (!b.oom && b.n % 8 != 0) sb_puts(&b, " "); /* data starts 8-byte aligned */
    if (b.oom) {
        free(b.s);
        return ct_error("safetensors_save: %s: out of memory", path);
    }

    ct_atomic_file *af = ct_atomic_open(path);
    if (!af) {
        free(b.s);
        return -1;
    }
    uint8_t lenb[8];
    uint64_t hl = b.n;
    for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)(hl >> (8 * i));
    int ok = fwrite(lenb, 1, 8, af->fp) == 8 && fwrite(b.s, 1, b.n, af->fp) == b.n;
    free(b.s);
    for (int i = 0; ok && i < n; i++) {
        ct_tensor *t = tensors[i];
        size_t bytes = (size_t)ct_numel(t) * st_dtype_size(ct_dtype_of(t));
        if (bytes == 0) continue;
        ct_tensor *cpu = NULL;
        if (ct_device_of(t).type != CT_CPU) {
            cpu = ct_to_device(t, ct_cpu());
            if (!cpu) {
                ct_error_context("safetensors_save: %s: copying '%s' to the CPU", path,
                                 names[i]);
                ct_atomic_abort(af);
                return -1;
            }
            t = cpu;
        }
        if (ct_is_contiguous(t)) {
            ok = fwrite(ct_data(t), 1, bytes, af->fp) == bytes;
        } else {
            void *buf = malloc(bytes);
            if (!buf || ct_copy_to_buffer(t, buf, bytes) != 0) {
                free(buf);
                ct_free(cpu);
                if (!buf) ct_error("safetensors_save: %s: out of memory", path);
                else ct_error_context("safetensors_save: %s: tensor '%s'", path, names[i]);
                ct_atomic_abort(af);
                return -1;
            }
            ok = fwrite(buf, 1, bytes, af->fp) == bytes;
            free(buf);
        }
        ct_free(cpu);
    }
    if (!ok) {
        int e = errno;
        ct_atomic_abort(af);
        return ct_error("safetensors_save: writing %s failed: %s; check free disk space", path,
                        strerror(e));
    }
    return ct_atomic_commit(af);
}
