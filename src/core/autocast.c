/* Autocast regions (torch.autocast) and their per-thread cast cache.
 *
 * The policies are PyTorch's (torch/csrc/autograd autocast_mode.cpp and the "Autocast Op
 * Reference" of the torch.amp docs), device type by device type:
 *   LOWER   runs in the region's dtype: every float32 / float16 / bfloat16 input is cast
 *           (float64 inputs are left alone, as PyTorch does);
 *   FP32    runs in float32: low-precision inputs are cast up;
 *   ---     the op is untouched (it runs in its inputs' dtype).
 * Casts of leaf tensors that require grad (a model's parameters) are cached for the life
 * of the outermost region, so each parameter is converted once per step. */
#include "autocast.h"

#include "backend.h"
#include "ctorch.h"
#include "error.h"

#include <stdio.h>
#include <stdlib.h>

enum { P_NONE = 0, P_LOWER, P_FP32 };
_Static_assert(CT_AC_COUNT <= 32, "ct_backend.autocast_fp32 holds one bit per autocast op");

static const char *const g_op_names[CT_AC_COUNT] = {
#define CT__AC_NAME(ID, name) [CT_AC_##ID] = name,
    CT_AUTOCAST_OPS(CT__AC_NAME)
#undef CT__AC_NAME
};

/* The list every device shares (PyTorch's lower_precision_fp and fp32 lists, for the ops
 * ctorch has): convolutions, linear and matmul in the region's dtype, the losses in
 * float32. A backend adds the ops its device runs in float32 too (ct_backend's
 * autocast_fp32: CUDA's softmax, layer_norm, sum, exp, log, pow). (PyTorch's promote list,
 * cat and stack among it, is not applied: ctorch's cat and stack need one dtype.) */
static const unsigned char g_common[CT_AC_COUNT] = {
    [CT_AC_CONV2D] = P_LOWER,       [CT_AC_LINEAR] = P_LOWER,   [CT_AC_MATMUL] = P_LOWER,
    [CT_AC_CROSS_ENTROPY] = P_FP32, [CT_AC_NLL_LOSS] = P_FP32, [CT_AC_MSE_LOSS] = P_FP32,
    [CT_AC_SDPA] = P_LOWER,
};

#define AC_MAX_DEPTH 32
#define AC_CACHE_MAX 512

typedef struct {
    ct_device_type dev;
    ct_dtype dtype; /* CT_FLOAT32: autocast off inside this region */
} region;

typedef struct {
    ct_tensor *src, *cast; /* both held: src so that its address cannot be reused */
} cache_entry;

static _Thread_local region g_stack[AC_MAX_DEPTH];
static _Thread_local int g_depth;
static _Thread_local cache_entry g_cache[AC_CACHE_MAX];
static _Thread_local int g_ncache;

static void cache_clear(void) {
    for (int i = 0; i < g_ncache; i++) {
        ct__unhold(g_cache[i].cast);
        ct__unhold(g_cache[i].src);
    }
    g_ncache = 0;
}

int ct_autocast_push(ct_device_type device, ct_dtype dtype) {
    if ((unsigned)device >= CT_NUM_DEVICE_TYPES)
        return ct_error("autocast: unknown device type %d (CT_CPU or CT_CUDA)", (int)device);
    if (dtype != CT_BFLOAT16 && dtype != CT_FLOAT16 && dtype != CT_FLOAT32)
        return ct_error("autocast: dtype %s cannot be autocast to; use CT_BFLOAT16 or "
                        "CT_FLOAT16 (or CT_FLOAT32 to turn autocast off inside a region)",
                        ct_dtype_name(dtype));
    if (g_depth >= AC_MAX_DEPTH)
        return ct_error("autocast: more than %d nested regions; pop the ones you are done "
                        "with (ct_autocast_pop)", AC_MAX_DEPTH);
    const ct_backend *b = dtype == CT_FLOAT16 ? ct_backend_get(device) : NULL;
    if (b && b->fp16_emulated) {
        static int warned;
        if (!__atomic_exchange_n(&warned, 1, __ATOMIC_RELAXED))
            fprintf(stderr, "ctorch: warning: float16 autocast on %s is emulated (computed in "
                            "float32, rounded to float16); bfloat16 is its fast 16-bit type\n",
                    b->name);
    }
    g_stack[g_depth++] = (region){device, dtype};
    return 0;
}

int ct_autocast_pop(void) {
    if (g_depth == 0) return ct_error("autocast: ct_autocast_pop without a matching push");
    if (--g_depth == 0) cache_clear();
    return 0;
}

ct_dtype ct_autocast_dtype(ct_device_type device) {
    for (int i = g_depth - 1; i >= 0; i--)
        if (g_stack[i].dev == device) return g_stack[i].dtype;
    return CT_FLOAT32;
}

const char *ct_autocast_op_name(int op) {
    return (unsigned)op < CT_AC_COUNT ? g_op_names[op] : "?";
}

/* A cast of t to dt; parameters (leaves that require grad) through the cache. */
static ct_tensor *cached_cast(const ct_tensor *t, ct_dtype dt) {
    int cacheable = t->requires_grad && !t->grad_fn && ct_is_grad_enabled();
    if (cacheable)
        for (int i = 0; i < g_ncache; i++)
            if (g_cache[i].src == t && g_cache[i].cast->dtype == dt)
                return ct_retain(g_cache[i].cast);
    ct_tensor *c = ct_to_dtype(t, dt);
    if (c && cacheable && g_ncache < AC_CACHE_MAX) {
        g_cache[g_ncache].src = ct__hold((ct_tensor *)t);
        g_cache[g_ncache].cast = ct__hold(c);
        g_ncache++;
    }
    return c;
}

static int eligible(const ct_tensor *t) {
    return t && ct_is_floating(t->dtype) && t->dtype != CT_FLOAT64;
}

int ct__autocast(ct_autocast_op op, const ct_tensor *const *in, int n, ct_tensor **ac) {
    if (g_depth == 0 || (unsigned)op >= CT_AC_COUNT) return 0;
    const ct_tensor *first = NULL;
    for (int i = 0; i < n && !first; i++) first = in[i];
    if (!first || ct__check_tensor(first, g_op_names[op])) return 0;
    ct_device_type dev = first->storage->device.type;
    const ct_backend *b = ct_backend_of(first);
    int policy = g_common[op];
    if (b && (b->autocast_fp32 >> op & 1u)) policy = P_FP32;
    ct_dtype region_dt = ct_autocast_dtype(dev);
    if (policy == P_NONE || region_dt == CT_FLOAT32) return 0;
    ct_dtype to = policy == P_LOWER ? region_dt : CT_FLOAT32;
    int need = 0;
    for (int i = 0; i < n; i++)
        if (eligible(in[i]) && in[i]->dtype != to) need = 1;
    if (!need) return 0;
    for (int i = 0; i < n; i++) ac[i] = NULL;
    for (int i = 0; i < n; i++) {
        if (!in[i]) continue;
        ac[i] = eligible(in[i]) && in[i]->dtype != to ? cached_cast(in[i], to)
                                                       : ct_retain((ct_tensor *)in[i]);
        if (!ac[i]) {
            ct__autocast_release(ac, n);
            ct_error_context("autocast to %s for %s", ct_dtype_name(to), g_op_names[op]);
            return -1;
        }
    }
    return 1;
}

void ct__autocast_release(ct_tensor **ac, int n) {
    for (int i = 0; i < n; i++) {
        ct_free(ac[i]);
        ac[i] = NULL;
    }
}
