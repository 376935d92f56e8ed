/* Dtypes and devices: names, sizes, parsing. */
#include "error.h"
#include "tensor_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
} g_dtypes[CT_NUM_DTYPES] = {
    [CT_FLOAT32] = {"float32", 4}, [CT_FLOAT64] = {"float64", 8}, [CT_INT64] = {"int64", 8},
    [CT_INT32] = {"int32", 4},     [CT_UINT8] = {"uint8", 1},     [CT_BFLOAT16] = {"bfloat16", 2},
    [CT_FLOAT16] = {"float16", 2}, [CT_BOOL] = {"bool", 1},
};

const char *ct_dtype_name(ct_dtype dt) {
    return (unsigned)dt < CT_NUM_DTYPES ? g_dtypes[dt].name : "invalid";
}
size_t ct_dtype_size(ct_dtype dt) { return (unsigned)dt < CT_NUM_DTYPES ? g_dtypes[dt].size : 0; }

int ct_dtype_from_name(const char *name, ct_dtype *out) {
    for (int i = 0; i < CT_NUM_DTYPES; i++)
        if (strcmp(name, g_dtypes[i].name) == 0) {
            *out = (ct_dtype)i;
            return 0;
        }
    if (!strcmp(name, "float")) { *out = CT_FLOAT32; return 0; }
    if (!strcmp(name, "double")) { *out = CT_FLOAT64; return 0; }
    if (!strcmp(name, "long")) { *out = CT_INT64; return 0; }
    return ct_error("unknown dtype '%s'; use float32, float64, int64, int32, uint8, bfloat16, "
                    "float16 or bool", name);
}

int ct_is_floating(ct_dtype dt) {
    return dt == CT_FLOAT32 || dt == CT_FLOAT64 || dt == CT_BFLOAT16 || dt == CT_FLOAT16;
}

int ct_is_low_precision(ct_dtype dt) { return dt == CT_BFLOAT16 || dt == CT_FLOAT16; }

ct_device ct_cpu(void) { return (ct_device){CT_CPU, 0}; }

int ct_device_parse(const char *s, ct_device *out) {
    if (!s) return ct_error("device: NULL string; use \"cpu\", \"cuda\" or \"cuda:N\"");
    if (strcmp(s, "cpu") == 0) {
        *out = ct_cpu();
        return 0;
    }
    if (strncmp(s, "cuda", 4) == 0) {
        if (s[4] == 0) {
            *out = (ct_device){CT_CUDA, 0};
            return 0;
        }
        if (s[4] == ':' && s[5]) {
            char *end;
            long idx = strtol(s + 5, &end, 10);
            if (*end == 0 && idx >= 0 && idx < 1024) {
                *out = (ct_device){CT_CUDA, (int)idx};
                return 0;
            }
        }
    }
    return ct_error("unknown device '%s'; use \"cpu\", \"cuda\" or \"cuda:N\" (N a GPU index)", s);
}

int ct_device_str(ct_device d, char *buf, size_t n) {
    /* the name of each device type, and whether its devices are numbered */
    static const struct {
        const char *name;
        int indexed;
    } types[CT_NUM_DEVICE_TYPES] = {[CT_CPU] = {"cpu", 0}, [CT_CUDA] = {"cuda", 1}};
    if ((unsigned)d.type >= CT_NUM_DEVICE_TYPES || !types[d.type].name)
        return snprintf(buf, n, "device%d:%d", (int)d.type, d.index);
    if (!types[d.type].indexed) return snprintf(buf, n, "%s", types[d.type].name);
    return snprintf(buf, n, "%s:%d", types[d.type].name, d.index);
}
