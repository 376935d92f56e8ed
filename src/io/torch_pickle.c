/* The restricted unpickler of torch.save files: see torch_pickle.h. Opcodes and their
 * meaning: CPython's Lib/pickletools.py. */
#include "io/torch_pickle.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ allow-list */
typedef enum {
    K_ORDERED_DICT, /* collections.OrderedDict, builtins.dict */
    K_SET,          /* builtins.set, builtins.frozenset */
    K_SIZE,         /* torch.Size */
    K_DEVICE,       /* torch.device */
    K_ENCODE,       /* _codecs.encode: bytes in protocol 2 */
    K_REBUILD_TENSOR,
    K_REBUILD_TENSOR_V2,
    K_REBUILD_TENSOR_V3,
    K_REBUILD_PARAMETER,
    K_REBUILD_PARAMETER_STATE,
    K_REBUILD_FROM_TYPE_V2,
    K_TENSOR_CLASS, /* torch.Tensor, torch.nn.parameter.Parameter: only as new_type */
    K_STORAGE,      /* torch.FloatStorage...: only inside persistent ids */
    K_DTYPE         /* torch.float32...: values */
} gkind;

typedef struct {
    const char *module, *name, *full;
    gkind kind;
    int dtype; /* K_STORAGE, K_DTYPE: ct_dtype or -1 */
    const char *torch_dtype;
    size_t elsize;
} allowed_global;

#define STORAGE(n, dt, tn, sz) {"torch", n, "torch." n, K_STORAGE, dt, tn, sz}
#define DTYPE(n, dt, tn, sz) {"torch", n, "torch." n, K_DTYPE, dt, tn, sz}
static const allowed_global ALLOWED[] = {
    {"collections", "OrderedDict", "collections.OrderedDict", K_ORDERED_DICT, -1, NULL, 0},
    {"builtins", "dict", "builtins.dict", K_ORDERED_DICT, -1, NULL, 0},
    {"builtins", "set", "builtins.set", K_SET, -1, NULL, 0},
    {"builtins", "frozenset", "builtins.frozenset", K_SET, -1, NULL, 0},
    {"torch", "Size", "torch.Size", K_SIZE, -1, NULL, 0},
    {"torch", "device", "torch.device", K_DEVICE, -1, NULL, 0},
    {"_codecs", "encode", "_codecs.encode", K_ENCODE, -1, NULL, 0},
    {"torch._utils", "_rebuild_tensor", "torch._utils._rebuild_tensor", K_REBUILD_TENSOR, -1,
     NULL, 0},
    {"torch._utils", "_rebuild_tensor_v2", "torch._utils._rebuild_tensor_v2",
     K_REBUILD_TENSOR_V2, -1, NULL, 0},
    {"torch._utils", "_rebuild_tensor_v3", "torch._utils._rebuild_tensor_v3",
     K_REBUILD_TENSOR_V3, -1, NULL, 0},
    {"torch._utils", "_rebuild_parameter", "torch._utils._rebuild_parameter",
     K_REBUILD_PARAMETER, -1, NULL, 0},
    {"torch._utils", "_rebuild_parameter_with_state", "torch._utils._rebuild_parameter_with_state",
     K_REBUILD_PARAMETER_STATE, -1, NULL, 0},
    {"torch._tensor", "_rebuild_from_type_v2", "torch._tensor._rebuild_from_type_v2",
     K_REBUILD_FROM_TYPE_V2, -1, NULL, 0},
    {"torch", "Tensor", "torch.Tensor", K_TENSOR_CLASS, -1, NULL, 0},
    {"torch._tensor", "Tensor", "torch._tensor.Tensor", K_TENSOR_CLASS, -1, NULL, 0},
    {"torch.nn.parameter", "Parameter", "torch.nn.parameter.Parameter", K_TENSOR_CLASS, -1,
     NULL, 0},
    STORAGE("FloatStorage", CT_FLOAT32, "float32", 4),
    STORAGE("DoubleStorage", CT_FLOAT64, "float64", 8),
    STORAGE("HalfStorage", CT_FLOAT16, "float16", 2),
    STORAGE("BFloat16Storage", CT_BFLOAT16, "bfloat16", 2),
    STORAGE("LongStorage", CT_INT64, "int64", 8),
    STORAGE("IntStorage", CT_INT32, "int32", 4),
    STORAGE("ShortStorage", -1, "int16", 2),
    STORAGE("CharStorage", -1, "int8", 1),
    STORAGE("ByteStorage", CT_UINT8, "uint8", 1),
    STORAGE("BoolStorage", CT_BOOL, "bool", 1),
    STORAGE("ComplexFloatStorage", -1, "complex64", 8),
    STORAGE("ComplexDoubleStorage", -1, "complex128", 16),
    STORAGE("UntypedStorage", CT_UINT8, "uint8", 1),
    /* PyTorch 2.x pickles it under its defining module (_rebuild_tensor_v3's storages) */
    {"torch.storage", "UntypedStorage", "torch.storage.UntypedStorage", K_STORAGE, CT_UINT8,
     "uint8", 1},
    DTYPE("float32", CT_FLOAT32, "float32", 4),
    DTYPE("float", CT_FLOAT32, "float32", 4),
    DTYPE("float64", CT_FLOAT64, "float64", 8),
    DTYPE("double", CT_FLOAT64, "float64", 8),
    DTYPE("float16", CT_FLOAT16, "float16", 2),
    DTYPE("half", CT_FLOAT16, "float16", 2),
    DTYPE("bfloat16", CT_BFLOAT16, "bfloat16", 2),
    DTYPE("int64", CT_INT64, "int64", 8),
    DTYPE("long", CT_INT64, "int64", 8),
    DTYPE("int32", CT_INT32, "int32", 4),
    DTYPE("int", CT_INT32, "int32", 4),
    DTYPE("int16", -1, "int16", 2),
    DTYPE("short", -1, "int16", 2),
    DTYPE("int8", -1, "int8", 1),
    DTYPE("uint8", CT_UINT8, "uint8", 1),
    DTYPE("bool", CT_BOOL, "bool", 1),
    DTYPE("uint16", -1, "uint16", 2),
    DTYPE("uint32", -1, "uint32", 4),
    DTYPE("uint64", -1, "uint64", 8),
    DTYPE("complex64", -1, "complex64", 8),
    DTYPE("complex128", -1, "complex128", 16),
    DTYPE("float8_e4m3fn", -1, "float8_e4m3fn", 1),
    DTYPE("float8_e5m2", -1, "float8_e5m2", 1),
};
#define N_ALLOWED ((int)(sizeof ALLOWED / sizeof *ALLOWED))

const char *tp_global_name(const tp_value *g) {
    return g && g->kind == TP_GLOBAL && g->i >= 0 && g->i < N_ALLOWED ? ALLOWED[g->i].full : "?";
}

int tp_global_storage_type(const tp_value *g, int *dtype, const char **torch_dtype,
                           size_t *elsize) {
    if (!g || g->kind != TP_GLOBAL || ALLOWED[g->i].kind != K_STORAGE) return -1;
    *dtype = ALLOWED[g->i].dtype;
    *torch_dtype = ALLOWED[g->i].torch_dtype;
    *elsize = ALLOWED[g->i].elsize;
    return 0;
}

const char *tp_kind_name(tp_kind k) {
    static const char *const N[] = {"None",  "bool",  "int",  "int",    "float",  "str",
                                    "bytes", "tuple", "list", "set",    "dict",   "global",
                                    "object", "storage", "tensor"};
    return (unsigned)k < sizeof N / sizeof *N ? N[k] : "?";
}

/* ----------------------------------------------------------------------- arena */
/* More values than this from one file is not a state_dict (a large model's pickle holds
 * some tens per tensor): refused before it takes gigabytes. */
#define MAX_VALUES ((size_t)1 << 21)

tp_value *tp_new(tp_arena *a, tp_kind kind) {
    if (a->count >= MAX_VALUES)
        return ct_error_null("the pickle builds more than %zu values (corrupt or malicious file)",
                             MAX_VALUES);
    tp_value *v = calloc(1, sizeof *v);
    if (!v) return ct_error_null("out of memory unpickling");
    v->kind = kind;
    v->next_alloc = a->all;
    a->all = v;
    a->count++;
    return v;
}

void tp_arena_free(tp_arena *a) {
    if (!a) return;
    for (tp_value *v = a->all; v;) {
        tp_value *next = v->next_alloc;
        switch (v->kind) {
        case TP_STR: case TP_BYTES: case TP_BIGINT: case TP_OBJECT: free(v->s); break;
        case TP_TUPLE: case TP_LIST: case TP_SET: case TP_DICT: free(v->items); break;
        case TP_TENSOR: free(v->tensor); break;
        default: break;
        }
        free(v);
        v = next;
    }
    a->all = NULL;
    a->count = 0;
}

static int push_item(tp_value *c, tp_value *x) {
    if (c->n == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 2;
        tp_value **ni = realloc(c->items, nc * sizeof *ni);
        if (!ni) return ct_error("out of memory unpickling");
        c->items = ni;
        c->cap = nc;
    }
    c->items[c->n++] = x;
    return 0;
}

/* ------------------------------------------------------------------ unpickler */
typedef struct {
    tp_arena *a;
    const uint8_t *p, *end, *start;
    tp_value **stack;
    size_t sp, stack_cap;
    size_t *marks;
    size_t nmarks, marks_cap;
    tp_value **memo;
    size_t memo_cap, memo_len; /* memo_len: entries set (MEMOIZE's next index) */
    size_t memo_limit;
    int proto;
    tp_persistent_load_fn persistent_load;
    void *ctx;
    tp_value *none, *bools[2]; /* shared: never modified */
} unpickler;

#define OFF(u) ((size_t)((u)->p - (u)->start))

static int need(unpickler *u, size_t n, const char *what) {
    if ((size_t)(u->end - u->p) < n)
        return ct_error("the pickle ends inside %s at byte %zu (truncated file?)", what, OFF(u));
    return 0;
}

static int push(unpickler *u, tp_value *v) {
    if (!v) return -1;
    if (u->sp == u->stack_cap) {
        size_t nc = u->stack_cap ? u->stack_cap * 2 : 64;
        tp_value **ns = realloc(u->stack, nc * sizeof *ns);
        if (!ns) return ct_error("out of memory unpickling");
        u->stack = ns;
        u->stack_cap = nc;
    }
    u->stack[u->sp++] = v;
    return 0;
}

static size_t floor_sp(const unpickler *u) { return u->nmarks ? u->marks[u->nmarks - 1] : 0; }

static tp_value *pop(unpickler *u, const char *op) {
    if (u->sp <= floor_sp(u))
        return ct_error_null("pickle opcode %s at byte %zu pops an empty stack", op, OFF(u));
    return u->stack[--u->sp];
}

static tp_value *top(unpickler *u, const char *op) {
    if (u->sp <= floor_sp(u))
        return ct_error_null("pickle opcode %s at byte %zu needs a value on the stack", op, OFF(u));
    return u->stack[u->sp - 1];
}

/* Pops to the last MARK: the items are stack[*from..sp) (still valid until the next push). */
static int pop_mark(unpickler *u, const char *op, size_t *from) {
    if (!u->nmarks) return ct_error("pickle opcode %s at byte %zu without a MARK", op, OFF(u));
    *from = u->marks[--u->nmarks];
    return 0;
}

static uint64_t le(const uint8_t *b, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | b[i];
    return v;
}

static tp_value *new_int(unpickler *u, int64_t i) {
    tp_value *v = tp_new(u->a, TP_INT);
    if (v) v->i = i;
    return v;
}

static tp_value *new_bytes(unpickler *u, tp_kind kind, const uint8_t *b, size_t n) {
    tp_value *v = tp_new(u->a, kind);
    if (!v) return NULL;
    v->s = malloc(n + 1);
    if (!v->s) return ct_error_null("out of memory unpickling a %zu-byte string", n);
    if (n) memcpy(v->s, b, n);
    v->s[n] = 0;
    v->len = n;
    return v;
}

/* A string or bytes of n bytes (n read from the pickle: checked against what is left). */
static int op_string(unpickler *u, tp_kind kind, uint64_t n, const char *op) {
    if (n > (uint64_t)(u->end - u->p))
        return ct_error("pickle opcode %s at byte %zu: a %llu-byte string but only %zu bytes "
                        "left (truncated or corrupt file)",
                        op, OFF(u), (unsigned long long)n, (size_t)(u->end - u->p));
    if (kind == TP_STR && memchr(u->p, 0, (size_t)n))
        return ct_error("pickle opcode %s at byte %zu: a string with a NUL byte", op, OFF(u));
    tp_value *v = new_bytes(u, kind, u->p, (size_t)n);
    u->p += n;
    return push(u, v);
}

/* LONG1/LONG4: little-endian two's complement. */
static int op_long(unpickler *u, uint64_t n) {
    if (n > (uint64_t)(u->end - u->p)) return need(u, (size_t)-1, "a LONG");
    const uint8_t *b = u->p;
    u->p += n;
    if (n == 0) return push(u, new_int(u, 0));
    if (n <= 8) {
        uint64_t v = le(b, (int)n);
        if (n < 8 && (b[n - 1] & 0x80)) v |= ~(uint64_t)0 << (8 * n); /* sign-extend */
        return push(u, new_int(u, (int64_t)v));
    }
    return push(u, new_bytes(u, TP_BIGINT, b, (size_t)n));
}

static int memo_put(unpickler *u, uint64_t idx) {
    tp_value *v = top(u, "PUT");
    if (!v) return -1;
    if (idx >= u->memo_limit)
        return ct_error("pickle memo index %llu at byte %zu is beyond the pickle's size "
                        "(corrupt file)", (unsigned long long)idx, OFF(u));
    if (idx >= u->memo_cap) {
        size_t nc = u->memo_cap ? u->memo_cap : 64;
        while (nc <= idx) nc *= 2;
        tp_value **nm = realloc(u->memo, nc * sizeof *nm);
        if (!nm) return ct_error("out of memory unpickling");
        memset(nm + u->memo_cap, 0, (nc - u->memo_cap) * sizeof *nm);
        u->memo = nm;
        u->memo_cap = nc;
    }
    if (!u->memo[idx]) u->memo_len++;
    u->memo[idx] = v;
    return 0;
}

static int memo_get(unpickler *u, uint64_t idx) {
    if (idx >= u->memo_cap || !u->memo[idx])
        return ct_error("pickle opcode GET at byte %zu: memo entry %llu was never stored "
                        "(corrupt file)", OFF(u), (unsigned long long)idx);
    return push(u, u->memo[idx]);
}

static int find_global(unpickler *u, const char *module, size_t mlen, const char *name,
                       size_t nlen, const char *how) {
    char mod[256], nm[256];
    if (mlen >= sizeof mod || nlen >= sizeof nm)
        return ct_error("forbidden global in the pickle (byte %zu): a %zu-byte name", OFF(u),
                        mlen + nlen);
    memcpy(mod, module, mlen);
    mod[mlen] = 0;
    memcpy(nm, name, nlen);
    nm[nlen] = 0;
    /* Python 2 names that protocol 2 writes (pickle's fix_imports) */
    if (u->proto < 3) {
        if (!strcmp(mod, "__builtin__")) strcpy(mod, "builtins");
        else if (!strcmp(mod, "copy_reg")) strcpy(mod, "copyreg");
    }
    if (how == NULL) {
        for (int i = 0; i < N_ALLOWED; i++)
            if (!strcmp(ALLOWED[i].module, mod) && !strcmp(ALLOWED[i].name, nm)) {
                tp_value *g = tp_new(u->a, TP_GLOBAL);
                if (g) g->i = i;
                return push(u, g);
            }
    }
    /* printable in the message */
    for (char *c = mod; *c; c++)
        if ((unsigned char)*c < 32 || (unsigned char)*c >= 127) *c = '?';
    for (char *c = nm; *c; c++)
        if ((unsigned char)*c < 32 || (unsigned char)*c >= 127) *c = '?';
    return ct_error("forbidden global %s.%s in the pickle (byte %zu%s): ctorch loads tensor "
                    "state_dicts only and never runs code from a file; the file was made by "
                    "pickling a Python object (torch.save(model) instead of "
                    "torch.save(model.state_dict())?) or is malicious. If you trust it, load it "
                    "in Python and save its state_dict with safetensors.torch.save_file",
                    mod, nm, OFF(u), how ? how : "");
}

/* GLOBAL / INST: "module\nname\n". */
static int op_global_text(unpickler *u, const char *how) {
    const uint8_t *nl1 = memchr(u->p, '\n', (size_t)(u->end - u->p));
    if (!nl1) return need(u, (size_t)-1, "a GLOBAL's module name");
    const uint8_t *nl2 = memchr(nl1 + 1, '\n', (size_t)(u->end - nl1 - 1));
    if (!nl2) return need(u, (size_t)-1, "a GLOBAL's name");
    const char *m = (const char *)u->p, *n = (const char *)nl1 + 1;
    size_t ml = (size_t)(nl1 - u->p), nl = (size_t)(nl2 - nl1 - 1);
    u->p = nl2 + 1;
    return find_global(u, m, ml, n, nl, how);
}

/* ------------------------------------------------------- calls (REDUCE, NEWOBJ) */
static int is_int(const tp_value *v) { return v && (v->kind == TP_INT || v->kind == TP_BOOL); }

static int int_tuple(const tp_value *v, int64_t *out, int *n, const char *what) {
    if (!v || (v->kind != TP_TUPLE && v->kind != TP_LIST))
        return ct_error("a tensor's %s is a %s, not a tuple", what, v ? tp_kind_name(v->kind) : "?");
    if (v->n > CT_MAX_DIMS)
        return ct_error("a tensor with %zu dimensions (ctorch has at most %d)", v->n, CT_MAX_DIMS);
    for (size_t i = 0; i < v->n; i++) {
        if (!is_int(v->items[i]) || v->items[i]->i < 0)
            return ct_error("a tensor's %s holds a %s", what,
                            is_int(v->items[i]) ? "negative number" : tp_kind_name(v->items[i]->kind));
        out[i] = v->items[i]->i;
    }
    *n = (int)v->n;
    return 0;
}

/* _rebuild_tensor*(storage, storage_offset, size, stride, ...). dtype_arg: v3's dtype. */
static tp_value *rebuild_tensor(unpickler *u, tp_value *const *args, const tp_value *dtype_arg) {
    tp_value *st = args[0];
    if (st->kind != TP_STORAGE)
        return ct_error_null("a tensor's storage is a %s, not a storage (persistent id)",
                             tp_kind_name(st->kind));
    if (!is_int(args[1]) || args[1]->i < 0)
        return ct_error_null("a tensor's storage offset is not a non-negative int");
    tp_tensor tt, *t = &tt;
    memset(t, 0, sizeof *t);
    int nsz = 0, nst = 0;
    if (int_tuple(args[2], t->size, &nsz, "size") || int_tuple(args[3], t->stride, &nst, "stride"))
        return NULL;
    if (nsz != nst) {
        return ct_error_null("a tensor with %d sizes but %d strides", nsz, nst);
    }
    t->storage = st->storage;
    t->ndim = nsz;
    t->offset = args[1]->i;
    t->dtype = st->storage->dtype;
    t->torch_dtype = st->storage->torch_dtype;
    t->elsize = st->storage->elsize;
    if (dtype_arg) {
        if (dtype_arg->kind != TP_GLOBAL || ALLOWED[dtype_arg->i].kind != K_DTYPE) {
                return ct_error_null("_rebuild_tensor_v3's dtype is not a torch dtype");
        }
        t->dtype = ALLOWED[dtype_arg->i].dtype;
        t->torch_dtype = ALLOWED[dtype_arg->i].torch_dtype;
        t->elsize = ALLOWED[dtype_arg->i].elsize;
    }
    /* the elements it reaches must lie in the storage: offset + sum((size-1)*stride) */
    if (t->offset > ((int64_t)1 << 48)) {
        return ct_error_null("a tensor at storage offset %lld (corrupt file?)", (long long)t->offset);
    }
    uint64_t last = (uint64_t)t->offset, numel = 1;
    int empty = 0;
    for (int d = 0; d < t->ndim; d++) {
        if (t->size[d] == 0) empty = 1;
        if (t->size[d] > ((int64_t)1 << 40) || t->stride[d] > ((int64_t)1 << 40)) {
                return ct_error_null("a tensor with size %lld and stride %lld in one dimension "
                                 "(corrupt file?)", (long long)t->size[d], (long long)t->stride[d]);
        }
        if (t->size[d] > 0) last += (uint64_t)(t->size[d] - 1) * (uint64_t)t->stride[d];
        if (t->size[d] > 0 && numel > ((uint64_t)1 << 40) / (uint64_t)t->size[d]) {
                return ct_error_null("a tensor of more than 2^40 elements (corrupt file?)");
        }
        numel *= (uint64_t)t->size[d];
        if (last > ((uint64_t)1 << 48)) {
                return ct_error_null("a tensor reaching beyond element 2^48 (corrupt file?)");
        }
    }
    if (!empty && (last + 1) * t->elsize > st->storage->nbytes) {
        return ct_error_null("a tensor reaches byte %llu of storage %s, which has %llu bytes "
                             "(corrupt file)",
                             (unsigned long long)((last + 1) * t->elsize), st->storage->key,
                             (unsigned long long)st->storage->nbytes);
    }
    tp_value *v = tp_new(u->a, TP_TENSOR);
    if (!v) return NULL;
    v->tensor = malloc(sizeof *t);
    if (!v->tensor) return ct_error_null("out of memory unpickling");
    *v->tensor = tt;
    return v;
}

/* _codecs.encode(str, "latin1"): the str's code points (all below 256) as bytes. */
static tp_value *encode_latin1(unpickler *u, tp_value *const *a, size_t n) {
    if (a[0]->kind != TP_STR) return ct_error_null("_codecs.encode of a %s", tp_kind_name(a[0]->kind));
    if (n == 2 && (a[1]->kind != TP_STR || (strcmp(a[1]->s, "latin1") && strcmp(a[1]->s, "latin-1"))))
        return ct_error_null("_codecs.encode with an encoding other than latin1");
    tp_value *v = new_bytes(u, TP_BYTES, (const uint8_t *)a[0]->s, a[0]->len);
    if (!v) return NULL;
    /* UTF-8 code points below 256 -> one byte each */
    size_t o = 0;
    for (size_t i = 0; i < v->len; i++) {
        unsigned char c = (unsigned char)v->s[i];
        if (c < 0x80) v->s[o++] = (char)c;
        else if ((c == 0xC2 || c == 0xC3) && i + 1 < v->len) {
            v->s[o++] = (char)(((c & 3) << 6) | ((unsigned char)v->s[i + 1] & 0x3F));
            i++;
        } else return ct_error_null("_codecs.encode of a character beyond latin1");
    }
    v->len = o;
    v->s[o] = 0;
    return v;
}

static tp_value *call(unpickler *u, const tp_value *fn, tp_value *args, const char *op);

static tp_value *seq_to(unpickler *u, tp_kind kind, const tp_value *src) {
    tp_value *v = tp_new(u->a, kind);
    if (!v) return NULL;
    if (src && src->n) {
        v->items = malloc(src->n * sizeof *v->items);
        if (!v->items) return ct_error_null("out of memory unpickling");
        memcpy(v->items, src->items, src->n * sizeof *v->items);
        v->n = v->cap = src->n;
    }
    return v;
}

static tp_value *call(unpickler *u, const tp_value *fn, tp_value *args, const char *op) {
    if (fn->kind != TP_GLOBAL)
        return ct_error_null("pickle opcode %s at byte %zu calls a %s (only allowed globals can "
                             "be called)", op, OFF(u), tp_kind_name(fn->kind));
    if (args->kind != TP_TUPLE)
        return ct_error_null("pickle opcode %s at byte %zu: %s's arguments are a %s, not a tuple",
                             op, OFF(u), tp_global_name(fn), tp_kind_name(args->kind));
    const allowed_global *g = &ALLOWED[fn->i];
    tp_value *const *a = args->items;
    size_t n = args->n;
#define NARGS(lo, hi)                                                                         \
    if ((long)n < (lo) || (long)n > (hi))                                                                 \
        return ct_error_null("%s called with %zu arguments at byte %zu (corrupt file)", g->full, \
                             n, OFF(u));
    switch (g->kind) {
    case K_ORDERED_DICT: {
        NARGS(0, 1);
        tp_value *d = tp_new(u->a, TP_DICT);
        if (!d || n == 0) return d;
        if (a[0]->kind != TP_LIST && a[0]->kind != TP_TUPLE)
            return ct_error_null("%s of a %s", g->full, tp_kind_name(a[0]->kind));
        for (size_t i = 0; i < a[0]->n; i++) {
            tp_value *kv = a[0]->items[i];
            if ((kv->kind != TP_TUPLE && kv->kind != TP_LIST) || kv->n != 2)
                return ct_error_null("%s of items that are not pairs", g->full);
            if (push_item(d, kv->items[0]) || push_item(d, kv->items[1])) return NULL;
        }
        return d;
    }
    case K_SET:
        NARGS(0, 1);
        if (n && a[0]->kind != TP_LIST && a[0]->kind != TP_TUPLE && a[0]->kind != TP_SET)
            return ct_error_null("%s of a %s", g->full, tp_kind_name(a[0]->kind));
        return seq_to(u, TP_SET, n ? a[0] : NULL);
    case K_SIZE:
        NARGS(0, 1);
        if (n && a[0]->kind != TP_LIST && a[0]->kind != TP_TUPLE)
            return ct_error_null("%s of a %s", g->full, tp_kind_name(a[0]->kind));
        return seq_to(u, TP_TUPLE, n ? a[0] : NULL);
    case K_DEVICE: {
        NARGS(1, 2);
        if (a[0]->kind != TP_STR) return ct_error_null("torch.device of a %s", tp_kind_name(a[0]->kind));
        return new_bytes(u, TP_OBJECT, (const uint8_t *)a[0]->s, a[0]->len);
    }
    case K_ENCODE:
        /* _codecs.encode(str, "latin1"): how protocol 2 writes bytes under Python 3 */
        NARGS(1, 2);
        return encode_latin1(u, a, n);
    case K_REBUILD_TENSOR:
        NARGS(4, 4);
        return rebuild_tensor(u, a, NULL);
    case K_REBUILD_TENSOR_V2:
        NARGS(6, 7);
        return rebuild_tensor(u, a, NULL);
    case K_REBUILD_TENSOR_V3:
        NARGS(7, 8);
        return rebuild_tensor(u, a, a[6]);
    case K_REBUILD_PARAMETER:
    case K_REBUILD_PARAMETER_STATE:
        if (g->kind == K_REBUILD_PARAMETER) { NARGS(3, 3); } else { NARGS(4, 4); }
        if (a[0]->kind != TP_TENSOR)
            return ct_error_null("%s of a %s, not a tensor", g->full, tp_kind_name(a[0]->kind));
        return a[0];
    case K_REBUILD_FROM_TYPE_V2: {
        /* (func, new_type, args, state): a plain Tensor or Parameter rebuilt by func */
        NARGS(4, 4);
        if (a[1]->kind != TP_GLOBAL || ALLOWED[a[1]->i].kind != K_TENSOR_CLASS)
            return ct_error_null("%s of the type %s (only torch.Tensor and Parameter are "
                                 "allowed)", g->full, a[1]->kind == TP_GLOBAL ? tp_global_name(a[1]) : tp_kind_name(a[1]->kind));
        if (a[0]->kind != TP_GLOBAL || a[0]->i == fn->i || a[2]->kind != TP_TUPLE)
            return ct_error_null("%s with a function that is not a tensor rebuild", g->full);
        gkind fk = ALLOWED[a[0]->i].kind;
        if (fk != K_REBUILD_TENSOR && fk != K_REBUILD_TENSOR_V2 && fk != K_REBUILD_TENSOR_V3 &&
            fk != K_REBUILD_PARAMETER && fk != K_REBUILD_PARAMETER_STATE)
            return ct_error_null("%s with the function %s", g->full, tp_global_name(a[0]));
        return call(u, a[0], a[2], op);
    }
    case K_TENSOR_CLASS:
    case K_STORAGE:
    case K_DTYPE:
        break;
    }
#undef NARGS
    return ct_error_null("pickle opcode %s at byte %zu calls %s, which ctorch does not allow "
                         "to be called", op, OFF(u), g->full);
}

/* ----------------------------------------------------------------- the loop */
enum {
    MARK = '(', STOP = '.', POP = '0', POP_MARK = '1', DUP = '2', FLOAT = 'F', INT = 'I',
    BININT = 'J', BININT1 = 'K', LONG = 'L', BININT2 = 'M', NONE = 'N', PERSID = 'P',
    BINPERSID = 'Q', REDUCE = 'R', STRING = 'S', BINSTRING = 'T', SHORT_BINSTRING = 'U',
    UNICODE = 'V', BINUNICODE = 'X', APPEND = 'a', BUILD = 'b', GLOBAL = 'c', DICT = 'd',
    EMPTY_DICT = '}', APPENDS = 'e', GET = 'g', BINGET = 'h', INST = 'i', LONG_BINGET = 'j',
    LIST = 'l', EMPTY_LIST = ']', OBJ = 'o', PUT = 'p', BINPUT = 'q', LONG_BINPUT = 'r',
    SETITEM = 's', TUPLE = 't', EMPTY_TUPLE = ')', SETITEMS = 'u', BINFLOAT = 'G',
    PROTO = 0x80, NEWOBJ = 0x81, EXT1 = 0x82, EXT2 = 0x83, EXT4 = 0x84, TUPLE1 = 0x85,
    TUPLE2 = 0x86, TUPLE3 = 0x87, NEWTRUE = 0x88, NEWFALSE = 0x89, LONG1 = 0x8a, LONG4 = 0x8b,
    BINBYTES = 'B', SHORT_BINBYTES = 'C', SHORT_BINUNICODE = 0x8c, BINUNICODE8 = 0x8d,
    BINBYTES8 = 0x8e, EMPTY_SET = 0x8f, ADDITEMS = 0x90, FROZENSET = 0x91, NEWOBJ_EX = 0x92,
    STACK_GLOBAL = 0x93, MEMOIZE = 0x94, FRAME = 0x95, BYTEARRAY8 = 0x96, NEXT_BUFFER = 0x97,
    READONLY_BUFFER = 0x98
};

/* A new tuple/list of stack[from..sp), which is popped. */
static int collect(unpickler *u, tp_kind kind, size_t from) {
    tp_value *v = tp_new(u->a, kind);
    if (!v) return -1;
    size_t n = u->sp - from;
    if (n) {
        v->items = malloc(n * sizeof *v->items);
        if (!v->items) return ct_error("out of memory unpickling");
        memcpy(v->items, u->stack + from, n * sizeof *v->items);
        v->n = v->cap = n;
    }
    u->sp = from;
    return push(u, v);
}

static int add_items(unpickler *u, tp_value *c, size_t from, const char *op) {
    size_t n = u->sp - from;
    if (c->kind == TP_DICT) {
        if (n % 2) return ct_error("pickle opcode %s at byte %zu: an odd number of items", op, OFF(u));
    } else if (c->kind != TP_LIST && c->kind != TP_SET) {
        return ct_error("pickle opcode %s at byte %zu on a %s", op, OFF(u), tp_kind_name(c->kind));
    }
    for (size_t i = from; i < u->sp; i++)
        if (push_item(c, u->stack[i])) return -1;
    u->sp = from;
    return 0;
}

/* BINFLOAT: an 8-byte big-endian double. */
static int op_binfloat(unpickler *u) {
    if (need(u, 8, "BINFLOAT")) return -1;
    uint64_t bits = 0;
    for (int i = 0; i < 8; i++) bits = (bits << 8) | u->p[i];
    u->p += 8;
    tp_value *v = tp_new(u->a, TP_FLOAT);
    if (v) memcpy(&v->f, &bits, 8);
    return push(u, v);
}

/* step() returns this for an opcode its group does not handle */
enum { NOT_MINE = 2 };

/* Protocol, stack and scalar opcodes. */
static int step_values(unpickler *u, int opc, tp_value **result) {
    switch (opc) {
    case PROTO:
        if (need(u, 1, "PROTO")) return -1;
        u->proto = *u->p++;
        if (u->proto > 5)
            return ct_error("pickle protocol %d (this reader knows 2 to 5)", u->proto);
        return 0;
    case FRAME:
        if (need(u, 8, "FRAME")) return -1;
        u->p += 8; /* frames only group opcodes */
        return 0;
    case STOP: {
        tp_value *v = pop(u, "STOP");
        if (!v) return -1;
        *result = v;
        return 1;
    }
    case MARK:
        if (u->nmarks == u->marks_cap) {
            size_t nc = u->marks_cap ? u->marks_cap * 2 : 16;
            size_t *nm = realloc(u->marks, nc * sizeof *nm);
            if (!nm) return ct_error("out of memory unpickling");
            u->marks = nm;
            u->marks_cap = nc;
        }
        u->marks[u->nmarks++] = u->sp;
        return 0;
    case POP:
        return pop(u, "POP") ? 0 : -1;
    case POP_MARK: {
        size_t from = 0;
        if (pop_mark(u, "POP_MARK", &from)) return -1;
        u->sp = from;
        return 0;
    }
    case DUP: {
        tp_value *v = top(u, "DUP");
        return v ? push(u, v) : -1;
    }
    case NONE:
        if (!u->none) u->none = tp_new(u->a, TP_NONE);
        return push(u, u->none);
    case NEWTRUE:
    case NEWFALSE: {
        int b = opc == NEWTRUE;
        if (!u->bools[b] && (u->bools[b] = tp_new(u->a, TP_BOOL))) u->bools[b]->i = b;
        return push(u, u->bools[b]);
    }
    case BININT:
        if (need(u, 4, "BININT")) return -1;
        u->p += 4;
        return push(u, new_int(u, (int32_t)(uint32_t)le(u->p - 4, 4)));
    case BININT1:
        if (need(u, 1, "BININT1")) return -1;
        return push(u, new_int(u, *u->p++));
    case BININT2:
        if (need(u, 2, "BININT2")) return -1;
        u->p += 2;
        return push(u, new_int(u, (int64_t)le(u->p - 2, 2)));
    case LONG1:
        if (need(u, 1, "LONG1")) return -1;
        return op_long(u, *u->p++);
    case LONG4:
        if (need(u, 4, "LONG4")) return -1;
        u->p += 4;
        return op_long(u, le(u->p - 4, 4));
    case BINFLOAT:
        return op_binfloat(u);
    case SHORT_BINUNICODE:
        if (need(u, 1, "SHORT_BINUNICODE")) return -1;
        return op_string(u, TP_STR, *u->p++, "SHORT_BINUNICODE");
    case BINUNICODE:
        if (need(u, 4, "BINUNICODE")) return -1;
        u->p += 4;
        return op_string(u, TP_STR, le(u->p - 4, 4), "BINUNICODE");
    case BINUNICODE8:
        if (need(u, 8, "BINUNICODE8")) return -1;
        u->p += 8;
        return op_string(u, TP_STR, le(u->p - 8, 8), "BINUNICODE8");
    case SHORT_BINBYTES:
    case SHORT_BINSTRING:
        if (need(u, 1, "SHORT_BINBYTES")) return -1;
        return op_string(u, TP_BYTES, *u->p++, "SHORT_BINBYTES");
    case BINBYTES:
    case BINSTRING:
        if (need(u, 4, "BINBYTES")) return -1;
        u->p += 4;
        return op_string(u, TP_BYTES, le(u->p - 4, 4), "BINBYTES");
    case BINBYTES8:
    case BYTEARRAY8:
        if (need(u, 8, "BINBYTES8")) return -1;
        u->p += 8;
        return op_string(u, TP_BYTES, le(u->p - 8, 8), "BINBYTES8");
    default:
        return NOT_MINE;
    }
}

/* Tuples, lists, dicts, sets and the memo. */
static int step_containers(unpickler *u, int opc) {
    switch (opc) {
    case EMPTY_DICT: return push(u, tp_new(u->a, TP_DICT));
    case EMPTY_LIST: return push(u, tp_new(u->a, TP_LIST));
    case EMPTY_TUPLE: return push(u, tp_new(u->a, TP_TUPLE));
    case EMPTY_SET: return push(u, tp_new(u->a, TP_SET));
    case TUPLE1:
    case TUPLE2:
    case TUPLE3: {
        size_t k = (size_t)(opc - TUPLE1 + 1);
        if (u->sp < floor_sp(u) + k)
            return ct_error("pickle opcode TUPLE%zu at byte %zu: too few values", k, OFF(u));
        return collect(u, TP_TUPLE, u->sp - k);
    }
    case TUPLE:
    case LIST:
    case FROZENSET: {
        size_t from = 0;
        if (pop_mark(u, "TUPLE", &from)) return -1;
        return collect(u, opc == TUPLE ? TP_TUPLE : opc == LIST ? TP_LIST : TP_SET, from);
    }
    case DICT: {
        size_t from = 0;
        if (pop_mark(u, "DICT", &from)) return -1;
        tp_value *d = tp_new(u->a, TP_DICT);
        if (!d || add_items(u, d, from, "DICT")) return -1;
        return push(u, d);
    }
    case APPEND: {
        tp_value *v = pop(u, "APPEND"), *l = v ? top(u, "APPEND") : NULL;
        if (!l) return -1;
        if (l->kind != TP_LIST)
            return ct_error("pickle opcode APPEND at byte %zu on a %s", OFF(u), tp_kind_name(l->kind));
        return push_item(l, v);
    }
    case APPENDS:
    case ADDITEMS:
    case SETITEMS: {
        size_t from = 0;
        if (pop_mark(u, "APPENDS", &from)) return -1;
        if (from == 0 || from <= floor_sp(u))
            return ct_error("pickle opcode 0x%02x at byte %zu has no container", opc, OFF(u));
        tp_value *c = u->stack[from - 1];
        if ((opc == SETITEMS) != (c->kind == TP_DICT) || (opc == ADDITEMS && c->kind != TP_SET))
            return ct_error("pickle opcode 0x%02x at byte %zu on a %s", opc, OFF(u),
                            tp_kind_name(c->kind));
        return add_items(u, c, from, "SETITEMS");
    }
    case SETITEM: {
        tp_value *v = pop(u, "SETITEM"), *k = v ? pop(u, "SETITEM") : NULL;
        tp_value *d = k ? top(u, "SETITEM") : NULL;
        if (!d) return -1;
        if (d->kind != TP_DICT)
            return ct_error("pickle opcode SETITEM at byte %zu on a %s", OFF(u), tp_kind_name(d->kind));
        return push_item(d, k) || push_item(d, v) ? -1 : 0;
    }
    case BINPUT:
        if (need(u, 1, "BINPUT")) return -1;
        return memo_put(u, *u->p++);
    case LONG_BINPUT:
        if (need(u, 4, "LONG_BINPUT")) return -1;
        u->p += 4;
        return memo_put(u, le(u->p - 4, 4));
    case MEMOIZE:
        return memo_put(u, u->memo_len);
    case BINGET:
        if (need(u, 1, "BINGET")) return -1;
        return memo_get(u, *u->p++);
    case LONG_BINGET:
        if (need(u, 4, "LONG_BINGET")) return -1;
        u->p += 4;
        return memo_get(u, le(u->p - 4, 4));
    default:
        return NOT_MINE;
    }
}

/* Globals, calls, persistent ids, and the opcodes refused outright. */
static int step_objects(unpickler *u, int opc) {
    switch (opc) {
    case GLOBAL: return op_global_text(u, NULL);
    case INST: return op_global_text(u, ", opcode INST");
    case STACK_GLOBAL: {
        tp_value *name = pop(u, "STACK_GLOBAL"), *mod = name ? pop(u, "STACK_GLOBAL") : NULL;
        if (!mod) return -1;
        if (name->kind != TP_STR || mod->kind != TP_STR)
            return ct_error("pickle opcode STACK_GLOBAL at byte %zu on a %s and a %s", OFF(u),
                            tp_kind_name(mod->kind), tp_kind_name(name->kind));
        return find_global(u, mod->s, mod->len, name->s, name->len, NULL);
    }
    case REDUCE:
    case NEWOBJ: {
        const char *nm = opc == REDUCE ? "REDUCE" : "NEWOBJ";
        tp_value *args = pop(u, nm), *fn = args ? pop(u, nm) : NULL;
        if (!fn) return -1;
        return push(u, call(u, fn, args, nm));
    }
    case NEWOBJ_EX: {
        tp_value *kw = pop(u, "NEWOBJ_EX"), *args = kw ? pop(u, "NEWOBJ_EX") : NULL;
        tp_value *fn = args ? pop(u, "NEWOBJ_EX") : NULL;
        if (!fn) return -1;
        if (kw->kind != TP_DICT || kw->n)
            return ct_error("pickle opcode NEWOBJ_EX at byte %zu with keyword arguments", OFF(u));
        return push(u, call(u, fn, args, "NEWOBJ_EX"));
    }
    case BUILD: {
        /* obj.__setstate__(state): the attributes of an OrderedDict (a state_dict's
         * _metadata) or of a tensor; ignored, never executed */
        tp_value *state = pop(u, "BUILD"), *obj = state ? top(u, "BUILD") : NULL;
        if (!obj) return -1;
        if (obj->kind != TP_DICT && obj->kind != TP_TENSOR)
            return ct_error("pickle opcode BUILD at byte %zu on a %s (only dicts and tensors "
                            "may have a state)", OFF(u), tp_kind_name(obj->kind));
        return 0;
    }
    case BINPERSID: {
        tp_value *pid = pop(u, "BINPERSID");
        if (!pid) return -1;
        if (!u->persistent_load)
            return ct_error("pickle opcode BINPERSID at byte %zu where no storage may be", OFF(u));
        return push(u, u->persistent_load(u->ctx, u->a, pid));
    }
    case OBJ:
        return ct_error("pickle opcode OBJ at byte %zu refused: it builds an arbitrary Python "
                        "object (ctorch loads tensor state_dicts only)", OFF(u));
    case EXT1:
    case EXT2:
    case EXT4:
        return ct_error("pickle opcode EXT%d at byte %zu refused: copyreg extension codes name "
                        "arbitrary globals (ctorch loads tensor state_dicts only)",
                        opc == EXT1 ? 1 : opc == EXT2 ? 2 : 4, OFF(u));
    case NEXT_BUFFER:
    case READONLY_BUFFER:
        return ct_error("pickle opcode 0x%02x at byte %zu: out-of-band buffers are not "
                        "supported", opc, OFF(u));
    case FLOAT: case INT: case LONG: case PERSID: case STRING: case UNICODE: case GET:
    case PUT:
        return ct_error("pickle opcode '%c' at byte %zu is from text protocol 0, which torch.save "
                        "does not write; save the file again with pickle_protocol=2 or more",
                        opc, OFF(u));
    default:
        return ct_error("unknown pickle opcode 0x%02x at byte %zu (not a pickle, or a corrupt "
                        "one)", opc, OFF(u) - 1);
    }
}


/* One opcode: 0 to go on, 1 at STOP (*result set), -1 on error. */
static int step(unpickler *u, int opc, tp_value **result) {
    int r = step_values(u, opc, result);
    if (r == NOT_MINE) r = step_containers(u, opc);
    if (r == NOT_MINE) r = step_objects(u, opc);
    return r;
}

tp_value *tp_unpickle(tp_arena *a, const uint8_t *data, size_t n, size_t *consumed,
                      tp_persistent_load_fn persistent_load, void *ctx) {
    unpickler u = {.a = a, .p = data, .end = data + n, .start = data, .proto = 2,
                   .memo_limit = n + 1, .persistent_load = persistent_load, .ctx = ctx};
    tp_value *result = NULL;
    int rc = 0;
    if (n == 0) rc = ct_error("an empty pickle");
    while (rc == 0) {
        if (u.p >= u.end) {
            rc = ct_error("the pickle ends at byte %zu without STOP (truncated file?)", OFF(&u));
            break;
        }
        int opc = *u.p++;
        rc = step(&u, opc, &result);
    }
    if (consumed) *consumed = OFF(&u);
    free(u.stack);
    free(u.marks);
    free(u.memo);
    return rc == 1 ? result : NULL;
}
