/* A restricted unpickler for torch.save files (not public).
 *
 * It reads the pickle opcodes of protocols 2-5 that torch.save writes and builds a small
 * tree of values; it never imports or calls anything. Globals are looked up in an
 * allow-list (what a tensor state_dict needs: the idea of torch.load(weights_only=True));
 * any other global, and the opcodes that build arbitrary objects (INST, OBJ, EXT*), are
 * refused with an error naming the global. Tensors are not materialised here: REDUCE of
 * torch._utils._rebuild_tensor_v2 gives a TP_TENSOR describing (storage, offset, size,
 * stride), checked against the storage's size; the caller reads the storages it needs.
 *
 * Memory is bounded by the input: the memo may not hold more entries than the pickle has
 * bytes, strings are at most the bytes left, nothing recurses over the value tree. */
#ifndef CT_TORCH_PICKLE_H
#define CT_TORCH_PICKLE_H

#include "ctorch.h"

#include <stddef.h>
#include <stdint.h>

typedef enum {
    TP_NONE,
    TP_BOOL,
    TP_INT,
    TP_BIGINT, /* an int beyond int64: s/len hold its little-endian two's complement bytes */
    TP_FLOAT,
    TP_STR,    /* UTF-8, NUL-terminated (len excludes the NUL) */
    TP_BYTES,
    TP_TUPLE,
    TP_LIST,
    TP_SET,
    TP_DICT,   /* dict and OrderedDict: items[2k] key, items[2k+1] value, in insertion order
                  (a repeated key appears twice; the last one wins) */
    TP_GLOBAL, /* an allowed global: i is its index in the allow-list */
    TP_OBJECT, /* a harmless object we keep only a description of (torch.device...) */
    TP_STORAGE,
    TP_TENSOR
} tp_kind;

/* One storage of the file (made by the caller's persistent_load). */
typedef struct tp_storage {
    char *key;          /* "0", "1"...: data/<key> in a zip, the legacy key */
    int dtype;          /* ct_dtype, or -1 when ctorch has no such dtype */
    const char *torch_dtype; /* "float32", "int8"... */
    size_t elsize;
    int64_t numel;      /* elements of dtype */
    uint64_t nbytes;    /* numel * elsize */
    int needed;         /* a selected tensor uses it */
    void *impl;         /* the caller's: the loaded ct_storage */
    const uint8_t *raw; /* legacy: its bytes in the file */
} tp_storage;

typedef struct tp_tensor {
    tp_storage *storage;
    int dtype;          /* ct_dtype or -1 */
    const char *torch_dtype;
    size_t elsize;
    int ndim;
    int64_t offset;     /* elements */
    int64_t size[CT_MAX_DIMS];
    int64_t stride[CT_MAX_DIMS];
} tp_tensor;

typedef struct tp_value tp_value;
struct tp_value {
    tp_kind kind;
    tp_value *next_alloc;     /* every value of an arena, for freeing */
    union {                   /* by kind: */
        int64_t i;            /* BOOL, INT, GLOBAL */
        double f;             /* FLOAT */
        struct {              /* STR, BYTES, BIGINT, OBJECT (description) */
            char *s;
            size_t len;
        };
        struct {              /* TUPLE, LIST, SET, DICT (2 per item) */
            tp_value **items;
            size_t n, cap;
        };
        tp_storage *storage;  /* STORAGE (owned by the caller) */
        tp_tensor *tensor;    /* TENSOR (owned by the value) */
    };
};

typedef struct tp_arena {
    tp_value *all;
    size_t count;
} tp_arena;

/* persistent_load: turns a persistent id (the value BINPERSID pops) into a value, usually
 * a TP_STORAGE; NULL with ct_error set refuses it. */
typedef tp_value *(*tp_persistent_load_fn)(void *ctx, tp_arena *a, tp_value *pid);

/* Unpickles one pickle from data[0..n): the result, or NULL with the error set (no
 * context: the caller adds the file's name). *consumed receives the bytes up to and
 * including STOP. Values live in the arena until tp_arena_free. */
tp_value *tp_unpickle(tp_arena *a, const uint8_t *data, size_t n, size_t *consumed,
                      tp_persistent_load_fn persistent_load, void *ctx);
tp_value *tp_new(tp_arena *a, tp_kind kind);
void tp_arena_free(tp_arena *a);

/* "int", "dict", "tensor"... for messages. */
const char *tp_kind_name(tp_kind k);
/* The storage class global (torch.FloatStorage...) of a TP_GLOBAL: 0 and its dtype, or -1. */
int tp_global_storage_type(const tp_value *g, int *dtype, const char **torch_dtype,
                           size_t *elsize);
/* "module.name" of a TP_GLOBAL. */
const char *tp_global_name(const tp_value *g);

#endif
