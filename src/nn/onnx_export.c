/* ONNX export of a module tree (ct_onnx_export, docs/onnx.md).
 *
 * It lives in src/nn because what it writes is each module's configuration (a Conv2d's
 * stride, a BatchNorm2d's eps, ...), which only src/nn can read (nn_config.h, as
 * Sequential's fusion reads it through nn_fusion.h); the file itself goes through the io
 * API (ct_atomic_open). The protobuf messages are protobuf-c's C code for Debian's
 * onnx.proto, generated at build time into $(BUILD)/gen/onnx.
 *
 * One exporter per module type (EXPORTERS below): it receives the module, its dotted path
 * and its input value (name and shape), appends nodes and initializers, and returns its
 * output value. Containers call ox_module / ox_child on their children; a new module type
 * is one function and one row. */
#include "ctorch_nn.h"
#include "ctorch_io.h"
#include "core/error.h"
#include "nn_config.h"
#include "nn_fusion.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef CT_HAVE_ONNX
int ct_onnx_available(void) { return 0; }
int ct_onnx_export(const ct_module *m, const char *path, const ct_onnx_export_opts *o) {
    (void)m, (void)o;
    return ct_error("ONNX export to %s: this ctorch was built without protobuf-c (install "
                    "libprotobuf-c-dev protobuf-c-compiler libonnx-dev and rebuild)",
                    path ? path : "(null)");
}
#else
#include <protobuf-c/protobuf-c.h>

#include "onnx.pb-c.h"

enum { OX_NAME = 256, OX_MAXDIM = 8, OX_MAXATTR = 8 };

/* A value of the graph: its name and static shape (shape[0] < 0: the dynamic batch). */
typedef struct {
    char name[OX_NAME];
    int ndim;
    int64_t shape[OX_MAXDIM];
} ox_val;

typedef struct {
    const ct_onnx_export_opts *o;
    Onnx__NodeProto **nodes;
    size_t n_nodes, cap_nodes;
    Onnx__TensorProto **inits;
    size_t n_inits, cap_inits;
    void **allocs; /* everything the messages point to */
    size_t n_allocs, cap_allocs;
    int counter;
} ox;

int ct_onnx_available(void) { return 1; }

/* ------------------------------------------------------------------ memory */
static int grow(void ***arr, size_t *n, size_t *cap, void *p) {
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        void **a = realloc(*arr, c * sizeof *a);
        if (!a) return ct_error("ONNX export: out of memory");
        *arr = a;
        *cap = c;
    }
    (*arr)[(*n)++] = p;
    return 0;
}

static void *ox_alloc(ox *g, size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p || grow(&g->allocs, &g->n_allocs, &g->cap_allocs, p) != 0) {
        free(p);
        ct_error("ONNX export: out of memory");
        return NULL;
    }
    return p;
}

static char *ox_strdup(ox *g, const char *s) {
    char *d = ox_alloc(g, strlen(s) + 1);
    if (d) memcpy(d, s, strlen(s) + 1);
    return d;
}

static void ox_free(ox *g) {
    for (size_t i = 0; i < g->n_allocs; i++) free(g->allocs[i]);
    free(g->allocs);
    free(g->nodes);
    free(g->inits);
}

/* "path.name", or "name" at the root. */
static void join(char *out, const char *path, const char *name) {
    snprintf(out, OX_NAME, "%s%s%s", path, *path ? "." : "", name);
}

/* A module's path in messages: "(root)" for the module exported. */
static const char *shown(const char *path) { return *path ? path : "(root)"; }

static const char *shape_str(const ox_val *v, char *buf, size_t n) {
    size_t w = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < v->ndim && w < n; i++) {
        if (v->shape[i] < 0) w += (size_t)snprintf(buf + w, n - w, "%sbatch", i ? ", " : "");
        else w += (size_t)snprintf(buf + w, n - w, "%s%lld", i ? ", " : "", (long long)v->shape[i]);
    }
    if (w < n) snprintf(buf + w, n - w, "]");
    return buf;
}

/* ---------------------------------------------------------- initializers */
static Onnx__TensorProto *find_init(ox *g, const char *name) {
    for (size_t i = 0; i < g->n_inits; i++)
        if (!strcmp(g->inits[i]->name, name)) return g->inits[i];
    return NULL;
}

/* An initializer from raw little-endian bytes (copied). */
static int init_raw(ox *g, const char *name, int32_t onnx_type, const int64_t *dims, int ndim,
                    const void *data, size_t nbytes) {
    if (find_init(g, name)) return ct_error("ONNX export: two initializers named '%s'", name);
    Onnx__TensorProto *t = ox_alloc(g, sizeof *t);
    int64_t *d = ox_alloc(g, (size_t)(ndim ? ndim : 1) * sizeof *d);
    void *raw = ox_alloc(g, nbytes);
    char *nm = ox_strdup(g, name);
    if (!t || !d || !raw || !nm) return -1;
    onnx__tensor_proto__init(t);
    memcpy(d, dims, (size_t)ndim * sizeof *d);
    if (nbytes) memcpy(raw, data, nbytes);
    t->n_dims = (size_t)ndim;
    t->dims = d;
    t->has_data_type = 1;
    t->data_type = onnx_type;
    t->name = nm;
    t->has_raw_data = 1;
    t->raw_data.len = nbytes;
    t->raw_data.data = raw;
    return grow((void ***)&g->inits, &g->n_inits, &g->cap_inits, t);
}

/* A module's tensor as an initializer under its state_dict name, float32 or (bf16)
 * bfloat16, whatever its device and dtype. */
static int init_tensor(ox *g, const char *name, const ct_tensor *t, int bf16) {
    ct_dtype dt = bf16 ? CT_BFLOAT16 : CT_FLOAT32;
    ct_tensor *c = ct_to_dtype(t, dt);
    if (!c) return -1;
    size_t nbytes = (size_t)ct_numel(c) * ct_dtype_size(dt);
    void *buf = malloc(nbytes ? nbytes : 1);
    int rc = buf ? ct_copy_to_buffer(c, buf, nbytes) : ct_error("ONNX export: out of memory");
    if (rc == 0)
        rc = init_raw(g, name, bf16 ? ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16
                                    : ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT,
                      ct_shape(c), ct_ndim(c), buf, nbytes);
    free(buf);
    ct_free(c);
    return rc;
}

/* A float32 constant (created once per name). */
static int init_const(ox *g, const char *name, const float *v, const int64_t *dims, int ndim,
                      int64_t n) {
    if (find_init(g, name)) return 0;
    return init_raw(g, name, ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, dims, ndim, v,
                    (size_t)n * sizeof *v);
}

/* ----------------------------------------------------------------- nodes */
/* Appends node op(in...) -> a new value named after path and op; its name in out_name. */
static Onnx__NodeProto *node(ox *g, const char *op, const char *path, const char *const *in,
                             int n_in, char *out_name) {
    Onnx__NodeProto *n = ox_alloc(g, sizeof *n);
    char **ins = ox_alloc(g, (size_t)n_in * sizeof *ins);
    char **outs = ox_alloc(g, sizeof *outs);
    Onnx__AttributeProto **attrs = ox_alloc(g, OX_MAXATTR * sizeof *attrs);
    if (!n || !ins || !outs || !attrs) return NULL;
    onnx__node_proto__init(n);
    char nm[OX_NAME];
    snprintf(nm, sizeof nm, "/%s%s%s_%d", path, *path ? "/" : "", op, g->counter++);
    for (int i = 0; i < n_in; i++)
        if (!(ins[i] = ox_strdup(g, in[i]))) return NULL;
    if (!(outs[0] = ox_strdup(g, nm)) || !(n->name = ox_strdup(g, nm)) ||
        !(n->op_type = ox_strdup(g, op)))
        return NULL;
    n->n_input = (size_t)n_in;
    n->input = ins;
    n->n_output = 1;
    n->output = outs;
    n->attribute = attrs;
    if (grow((void ***)&g->nodes, &g->n_nodes, &g->cap_nodes, n) != 0) return NULL;
    snprintf(out_name, OX_NAME, "%s", nm);
    return n;
}

static Onnx__AttributeProto *attr(ox *g, Onnx__NodeProto *n, const char *name,
                                  Onnx__AttributeProto__AttributeType type) {
    if (!n || n->n_attribute >= OX_MAXATTR) {
        ct_error("ONNX export: too many attributes on a node");
        return NULL;
    }
    Onnx__AttributeProto *a = ox_alloc(g, sizeof *a);
    if (!a) return NULL;
    onnx__attribute_proto__init(a);
    if (!(a->name = ox_strdup(g, name))) return NULL;
    a->has_type = 1;
    a->type = type;
    n->attribute[n->n_attribute++] = a;
    return a;
}

static int attr_int(ox *g, Onnx__NodeProto *n, const char *name, int64_t v) {
    Onnx__AttributeProto *a = attr(g, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    if (!a) return -1;
    a->has_i = 1;
    a->i = v;
    return 0;
}

static int attr_float(ox *g, Onnx__NodeProto *n, const char *name, float v) {
    Onnx__AttributeProto *a = attr(g, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
    if (!a) return -1;
    a->has_f = 1;
    a->f = v;
    return 0;
}

static int attr_str(ox *g, Onnx__NodeProto *n, const char *name, const char *v) {
    Onnx__AttributeProto *a = attr(g, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING);
    char *s = a ? ox_strdup(g, v) : NULL;
    if (!s) return -1;
    a->has_s = 1;
    a->s.len = strlen(v);
    a->s.data = (uint8_t *)s;
    return 0;
}

static int attr_ints(ox *g, Onnx__NodeProto *n, const char *name, const int *v, int k) {
    Onnx__AttributeProto *a = attr(g, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    int64_t *d = a ? ox_alloc(g, (size_t)k * sizeof *d) : NULL;
    if (!d) return -1;
    for (int i = 0; i < k; i++) d[i] = v[i];
    a->n_ints = (size_t)k;
    a->ints = d;
    return 0;
}

/* Cast(x, to) -> a new value. */
static int cast(ox *g, const char *path, const char *x, int32_t to, char *out) {
    Onnx__NodeProto *n = node(g, "Cast", path, &x, 1, out);
    return n ? attr_int(g, n, "to", to) : -1;
}

/* --amp bf16: the value rounded to bfloat16 and back (autocast's rounding, computed by ORT
 * in float32 in between); v is renamed to the rounded value. No-op without amp. */
static int round_bf16(ox *g, const char *path, ox_val *v) {
    if (!g->o->amp_bf16) return 0;
    char b[OX_NAME];
    if (cast(g, path, v->name, ONNX__TENSOR_PROTO__DATA_TYPE__BFLOAT16, b) != 0) return -1;
    return cast(g, path, b, ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, v->name);
}

/* A weight initializer under its state_dict name: the name to feed to a node in `use`
 * (with amp: stored as bfloat16, then a Cast to float32). */
static int weight(ox *g, const char *path, const char *pname, const ct_tensor *t, char *use) {
    char name[OX_NAME];
    join(name, path, pname);
    if (init_tensor(g, name, t, g->o->amp_bf16) != 0) return -1;
    if (!g->o->amp_bf16) {
        snprintf(use, OX_NAME, "%s", name);
        return 0;
    }
    return cast(g, path, name, ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, use);
}

/* --------------------------------------------------------------- the walk */
typedef int (*ox_export_fn)(ox *g, const ct_module *m, const char *path, const ox_val *in,
                            ox_val *out);
static int ox_module(ox *g, const ct_module *m, const char *path, const ox_val *in, ox_val *out);

/* The child `name` of m (at path), run on in. */
static int ox_child(ox *g, const ct_module *m, const char *path, const char *name,
                    const ox_val *in, ox_val *out) {
    ct_module *c = ct_module_get(m, name);
    if (!c || c->parent != m)
        return ct_error("ONNX export: %s '%s' has no child '%s' (the exporter of %s expects "
                        "torchvision's layout)", m->type, shown(path), name, m->type);
    char p[OX_NAME];
    join(p, path, name);
    return ox_module(g, c, p, in, out);
}

/* m's children in order, each on the previous one's output, from `first` to before `end`. */
static int ox_chain(ox *g, const ct_module *m, const char *path, int first, int end,
                    const ox_val *in, ox_val *out) {
    ox_val cur = *in;
    for (int i = first; i < end; i++) {
        ox_val next;
        if (ox_child(g, m, path, m->children[i]->name, &cur, &next) != 0) return -1;
        cur = next;
    }
    *out = cur;
    return 0;
}

static int need_4d(const ct_module *m, const char *path, const ox_val *in) {
    char s[128];
    if (in->ndim == 4) return 0;
    return ct_error("ONNX export: %s '%s' gets a %d-D value %s; it is exported for [N, C, H, "
                    "W] inputs", m->type, shown(path), in->ndim, shape_str(in, s, sizeof s));
}

/* --------------------------------------------------------------- layers */
static int64_t pool_out(int64_t n, int k, int s, int p, int d, int ceil_mode) {
    int64_t span = n + 2 * p - (int64_t)d * (k - 1) - 1;
    int64_t o = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
    if (ceil_mode && (o - 1) * s >= n + p) o--; /* PyTorch: the last window starts inside */
    return o;
}

static int ex_conv(ox *g, const ct_module *m, const char *path, const ox_val *in, ox_val *out) {
    ct_tensor *w, *b;
    ct_conv2d_options o;
    if (!ct_nn__conv2d_info(m, &w, &b, &o))
        return ct_error("ONNX export: '%s' is a Conv2d that is not ctorch's", shown(path));
    if (need_4d(m, path, in) != 0) return -1;
    char s[128];
    if (in->shape[1] != ct_size(w, 1) * o.groups)
        return ct_error("ONNX export: Conv2d '%s' expects %lld input channels, gets %s", shown(path),
                        (long long)(ct_size(w, 1) * o.groups), shape_str(in, s, sizeof s));
    char x[OX_NAME], wn[OX_NAME], bn[OX_NAME];
    ox_val xin = *in;
    if (round_bf16(g, path, &xin) != 0 || weight(g, path, "weight", w, wn) != 0 ||
        (b && weight(g, path, "bias", b, bn) != 0))
        return -1;
    snprintf(x, sizeof x, "%s", xin.name);
    const char *ins[3] = {x, wn, bn};
    Onnx__NodeProto *n = node(g, "Conv", path, ins, b ? 3 : 2, out->name);
    int pads[4] = {o.padding[0], o.padding[1], o.padding[0], o.padding[1]};
    if (!n || attr_ints(g, n, "kernel_shape", o.kernel, 2) || attr_ints(g, n, "strides", o.stride, 2) ||
        attr_ints(g, n, "pads", pads, 4) || attr_ints(g, n, "dilations", o.dilation, 2) ||
        attr_int(g, n, "group", o.groups))
        return -1;
    out->ndim = 4;
    out->shape[0] = in->shape[0];
    out->shape[1] = ct_size(w, 0);
    for (int i = 0; i < 2; i++)
        out->shape[2 + i] = pool_out(in->shape[2 + i], o.kernel[i], o.stride[i], o.padding[i],
                                     o.dilation[i], 0);
    if (out->shape[2] < 1 || out->shape[3] < 1)
        return ct_error("ONNX export: Conv2d '%s': input %s is smaller than its kernel", shown(path),
                        shape_str(in, s, sizeof s));
    return round_bf16(g, path, out);
}

static int ex_batch_norm(ox *g, const ct_module *m, const char *path, const ox_val *in,
                         ox_val *out) {
    double eps;
    int affine, track;
    if (!ct_nn__batch_norm2d_info(m, &eps, &affine, &track))
        return ct_error("ONNX export: '%s' is a BatchNorm2d that is not ctorch's", shown(path));
    if (!track)
        return ct_error("ONNX export: BatchNorm2d '%s' has track_running_stats=False: it "
                        "normalises with each batch's statistics even in eval mode, which "
                        "ONNX's BatchNormalization cannot do", shown(path));
    if (need_4d(m, path, in) != 0) return -1;
    int64_t c = ct_size(m->buffers[0], 0);
    char s[128];
    if (in->shape[1] != c)
        return ct_error("ONNX export: BatchNorm2d '%s' has %lld features, gets %s", shown(path),
                        (long long)c, shape_str(in, s, sizeof s));
    char sc[OX_NAME], bi[OX_NAME], mean[OX_NAME], var[OX_NAME];
    join(mean, path, "running_mean");
    join(var, path, "running_var");
    if (affine) {
        join(sc, path, "weight");
        join(bi, path, "bias");
    } else { /* affine=False: scale 1, shift 0 */
        snprintf(sc, sizeof sc, "%s.onnx_ones", path);
        snprintf(bi, sizeof bi, "%s.onnx_zeros", path);
    }
    float *ones = calloc((size_t)c, sizeof *ones), *zeros = calloc((size_t)c, sizeof *zeros);
    for (int64_t i = 0; ones && i < c; i++) ones[i] = 1;
    int rc = !ones || !zeros ? ct_error("ONNX export: out of memory")
             : affine ? init_tensor(g, sc, m->params[0], 0) || init_tensor(g, bi, m->params[1], 0)
                      : init_const(g, sc, ones, &c, 1, c) || init_const(g, bi, zeros, &c, 1, c);
    free(ones);
    free(zeros);
    if (rc || init_tensor(g, mean, m->buffers[0], 0) || init_tensor(g, var, m->buffers[1], 0))
        return -1;
    const char *ins[5] = {in->name, sc, bi, mean, var};
    Onnx__NodeProto *n = node(g, "BatchNormalization", path, ins, 5, out->name);
    if (!n || attr_float(g, n, "epsilon", (float)eps) != 0) return -1;
    out->ndim = 4;
    memcpy(out->shape, in->shape, sizeof out->shape);
    return round_bf16(g, path, out);
}

static int ex_linear(ox *g, const ct_module *m, const char *path, const ox_val *in, ox_val *out) {
    ct_tensor *w, *b;
    if (!ct_nn__linear_info(m, &w, &b))
        return ct_error("ONNX export: '%s' is a Linear that is not ctorch's", shown(path));
    char s[128];
    if (in->ndim != 2 || in->shape[1] != ct_size(w, 1))
        return ct_error("ONNX export: Linear '%s' (in_features=%lld) gets %s; it is exported "
                        "as Gemm, for [N, in_features] inputs", shown(path), (long long)ct_size(w, 1),
                        shape_str(in, s, sizeof s));
    char wn[OX_NAME], bn[OX_NAME];
    ox_val xin = *in;
    if (round_bf16(g, path, &xin) != 0 || weight(g, path, "weight", w, wn) != 0 ||
        (b && weight(g, path, "bias", b, bn) != 0))
        return -1;
    const char *ins[3] = {xin.name, wn, bn};
    Onnx__NodeProto *n = node(g, "Gemm", path, ins, b ? 3 : 2, out->name);
    if (!n || attr_int(g, n, "transB", 1) != 0) return -1;
    out->ndim = 2;
    out->shape[0] = in->shape[0];
    out->shape[1] = ct_size(w, 0);
    return round_bf16(g, path, out);
}

/* One node of one input and no attribute, shape unchanged. */
static int unary(ox *g, const char *op, const char *path, const ox_val *in, ox_val *out) {
    const char *x = in->name;
    if (!node(g, op, path, &x, 1, out->name)) return -1;
    out->ndim = in->ndim;
    memcpy(out->shape, in->shape, sizeof out->shape);
    return 0;
}

static int ex_relu(ox *g, const ct_module *m, const char *path, const ox_val *in, ox_val *out) {
    (void)m;
    return unary(g, "Relu", path, in, out);
}

/* ReLU6 = Clip(x, 0, 6) (min and max are inputs since opset 11). */
static int ex_relu6(ox *g, const ct_module *m, const char *path, const ox_val *in, ox_val *out) {
    (void)m;
    float lo = 0, hi = 6;
    if (init_const(g, "onnx_const.zero", &lo, NULL, 0, 1) ||
        init_const(g, "onnx_const.six", &hi, NULL, 0, 1))
        return -1;
    const char *ins[3] = {in->name, "onnx_const.zero", "onnx_const.six"};
    if (!node(g, "Clip", path, ins, 3, out->name)) return -1;
    out->ndim = in->ndim;
    memcpy(out->shape, in->shape, sizeof out->shape);
    return 0;
}

/* Dropout (eval) and Identity: no node. */
static int ex_pass(ox *g, const ct_module *m, const char *path, const ox_val *in, ox_val *out) {
    (void)g, (void)m, (void)path;
    *out = *in;
    return 0;
}

static int ex_pool(ox *g, const ct_module *m, const char *path, const ox_val *in, ox_val *out) {
    ct_nn_pool2d_info p;
    if (!ct_nn__pool2d_info(m, &p))
        return ct_error("ONNX export: '%s' is a %s that is not ctorch's", shown(path), m->type);
    if (need_4d(m, path, in) != 0) return -1;
    const char *x = in->name;
    Onnx__NodeProto *n = node(g, p.is_max ? "MaxPool" : "AveragePool", path, &x, 1, out->name);
    int pads[4] = {p.padding[0], p.padding[1], p.padding[0], p.padding[1]};
    if (!n || attr_ints(g, n, "kernel_shape", p.kernel, 2) || attr_ints(g, n, "strides", p.stride, 2) ||
        attr_ints(g, n, "pads", pads, 4) || attr_int(g, n, "ceil_mode", p.ceil_mode))
        return -1;
    if (p.is_max && (p.dilation[0] != 1 || p.dilation[1] != 1) &&
        attr_ints(g, n, "dilations", p.dilation, 2) != 0)
        return -1;
    if (!p.is_max && attr_int(g, n, "count_include_pad", p.count_include_pad) != 0) return -1;
    out->ndim = 4;
    out->shape[0] = in->shape[0];
    out->shape[1] = in->shape[1];
    for (int i = 0; i < 2; i++)
        out->shape[2 + i] = pool_out(in->shape[2 + i], p.kernel[i], p.stride[i], p.padding[i],
                                     p.dilation[i], p.ceil_mode);
    return p.is_max ? 0 : round_bf16(g, path, out);
}

/* GlobalAveragePool: [N, C, H, W] -> [N, C, 1, 1]. */
static int global_avg(ox *g, const char *path, const ox_val *in, ox_val *out) {
    if (unary(g, "GlobalAveragePool", path, in, out) != 0) return -1;
    out->shape[2] = out->shape[3] = 1;
    return round_bf16(g, path, out);
}

/* AdaptiveAvgPool2d: GlobalAveragePool to 1x1, AveragePool when the output size divides
 * the input's (PyTorch's windows are then exactly kernel = stride = in / out). */
static int ex_adaptive(ox *g, const ct_module *m, const char *path, const ox_val *in,
                       ox_val *out) {
    int os[2];
    if (!ct_nn__adaptive_avg_pool2d_info(m, os))
        return ct_error("ONNX export: '%s' is an AdaptiveAvgPool2d that is not ctorch's", shown(path));
    if (need_4d(m, path, in) != 0) return -1;
    if (os[0] == 1 && os[1] == 1) return global_avg(g, path, in, out);
    char s[128];
    if (in->shape[2] % os[0] || in->shape[3] % os[1])
        return ct_error("ONNX export: AdaptiveAvgPool2d '%s' (output_size=(%d, %d)) on %s: "
                        "ONNX has no adaptive pooling, and windows of unequal sizes (an output "
                        "size that does not divide the input's) have no AveragePool equivalent; "
                        "export with an input size divisible by the output size", shown(path), os[0],
                        os[1], shape_str(in, s, sizeof s));
    int k[2] = {(int)(in->shape[2] / os[0]), (int)(in->shape[3] / os[1])}, pads[4] = {0};
    const char *x = in->name;
    Onnx__NodeProto *n = node(g, "AveragePool", path, &x, 1, out->name);
    if (!n || attr_ints(g, n, "kernel_shape", k, 2) || attr_ints(g, n, "strides", k, 2) ||
        attr_ints(g, n, "pads", pads, 4))
        return -1;
    *out = (ox_val){.ndim = 4, .shape = {in->shape[0], in->shape[1], os[0], os[1]}};
    snprintf(out->name, sizeof out->name, "%s", n->output[0]);
    return round_bf16(g, path, out);
}

/* torch.flatten(x, 1): ONNX Flatten(axis=1). */
static int flatten1(ox *g, const char *path, const ox_val *in, ox_val *out) {
    const char *x = in->name;
    Onnx__NodeProto *n = node(g, "Flatten", path, &x, 1, out->name);
    if (!n || attr_int(g, n, "axis", 1) != 0) return -1;
    int64_t k = 1;
    for (int i = 1; i < in->ndim; i++) k *= in->shape[i];
    out->ndim = 2;
    out->shape[0] = in->shape[0];
    out->shape[1] = k;
    return 0;
}

/* Flatten(start_dim, end_dim): Flatten(axis=1) for (1, last), else Reshape to the static
 * shape with 0 (copy) for the batch. The batch dimension itself stays. */
static int ex_flatten(ox *g, const ct_module *m, const char *path, const ox_val *in,
                      ox_val *out) {
    int s, e;
    if (!ct_nn__flatten_info(m, &s, &e))
        return ct_error("ONNX export: '%s' is a Flatten that is not ctorch's", shown(path));
    int nd = in->ndim;
    if (s < 0) s += nd;
    if (e < 0) e += nd;
    if (s < 1 || e >= nd || s > e)
        return ct_error("ONNX export: Flatten '%s' (start_dim=%d, end_dim=%d) on a %d-D value: "
                        "only dimensions after the batch can be flattened", shown(path), s, e, nd);
    if (s == 1 && e == nd - 1) return flatten1(g, path, in, out);
    ox_val r = {.ndim = 0};
    r.shape[r.ndim++] = in->shape[0];
    for (int i = 1; i < nd; i++) {
        if (i <= s || i > e) r.shape[r.ndim++] = in->shape[i];
        else r.shape[r.ndim - 1] *= in->shape[i];
    }
    int64_t dims[OX_MAXDIM], nr = r.ndim;
    for (int i = 0; i < r.ndim; i++) dims[i] = i == 0 ? 0 : r.shape[i];
    char shp[OX_NAME];
    snprintf(shp, sizeof shp, "%s.onnx_shape", path);
    if (init_raw(g, shp, ONNX__TENSOR_PROTO__DATA_TYPE__INT64, &nr, 1, dims,
                 (size_t)nr * sizeof *dims) != 0)
        return -1;
    const char *ins[2] = {in->name, shp};
    if (!node(g, "Reshape", path, ins, 2, r.name)) return -1;
    *out = r;
    return 0;
}

/* x op y (two values of the same shape) -> a new value. */
static int binary(ox *g, const char *op, const char *path, const char *x, const char *y,
                  char *out) {
    const char *ins[2] = {x, y};
    return node(g, op, path, ins, 2, out) ? 0 : -1;
}

/* GELU: the Gelu node from opset 20; before, 0.5 x (1 + erf(x / sqrt(2))). */
static int ex_gelu(ox *g, const ct_module *m, const char *path, const ox_val *in, ox_val *out) {
    int tanh_approx;
    if (!ct_nn__gelu_info(m, &tanh_approx))
        return ct_error("ONNX export: '%s' is a GELU that is not ctorch's", shown(path));
    if (g->o->opset >= 20) {
        const char *x = in->name;
        Onnx__NodeProto *n = node(g, "Gelu", path, &x, 1, out->name);
        if (!n || attr_str(g, n, "approximate", tanh_approx ? "tanh" : "none") != 0) return -1;
    } else if (tanh_approx) {
        return ct_error("ONNX export: GELU '%s' (approximate='tanh') needs --opset 20 or "
                        "later (ONNX's Gelu)", shown(path));
    } else {
        float c[3] = {(float)M_SQRT2, 1.0f, 0.5f};
        char a[OX_NAME], d[OX_NAME], e[OX_NAME];
        if (init_const(g, "onnx_const.sqrt2", &c[0], NULL, 0, 1) ||
            init_const(g, "onnx_const.one", &c[1], NULL, 0, 1) ||
            init_const(g, "onnx_const.half", &c[2], NULL, 0, 1) ||
            binary(g, "Div", path, in->name, "onnx_const.sqrt2", a) ||
            !node(g, "Erf", path, (const char *[]){a}, 1, d) ||
            binary(g, "Add", path, d, "onnx_const.one", e) ||
            binary(g, "Mul", path, in->name, e, a) ||
            binary(g, "Mul", path, a, "onnx_const.half", out->name))
            return -1;
    }
    out->ndim = in->ndim;
    memcpy(out->shape, in->shape, sizeof out->shape);
    return 0;
}

/* ------------------------------------------------------------ containers */
static int ex_sequential(ox *g, const ct_module *m, const char *path, const ox_val *in,
                         ox_val *out) {
    return ox_chain(g, m, path, 0, m->n_children, in, out);
}

/* Add(main, shortcut) then Relu through the block's "relu" path. */
static int add_relu(ox *g, const char *path, const ox_val *a, const ox_val *b, int relu,
                    ox_val *out) {
    char s1[128], s2[128];
    if (a->ndim != b->ndim || memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof *a->shape))
        return ct_error("ONNX export: '%s': the residual branch %s and the shortcut %s differ "
                        "in shape", shown(path), shape_str(a, s1, sizeof s1), shape_str(b, s2, sizeof s2));
    ox_val sum = *a;
    if (binary(g, "Add", path, a->name, b->name, sum.name) != 0 || round_bf16(g, path, &sum) != 0)
        return -1;
    if (!relu) {
        *out = sum;
        return 0;
    }
    char rp[OX_NAME];
    join(rp, path, "relu");
    return unary(g, "Relu", rp, &sum, out);
}

/* The shortcut of a torchvision block: downsample(x) when the block has one, else x. */
static int shortcut(ox *g, const ct_module *m, const char *path, const ox_val *in, ox_val *out) {
    if (!ct_module_get(m, "downsample")) {
        *out = *in;
        return 0;
    }
    return ox_child(g, m, path, "downsample", in, out);
}

/* torchvision's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)). */
static int ex_basic_block(ox *g, const ct_module *m, const char *path, const ox_val *in,
                          ox_val *out) {
    static const char *const seq[] = {"conv1", "bn1", "relu", "conv2", "bn2"};
    ox_val cur = *in, next, id;
    for (size_t i = 0; i < sizeof seq / sizeof *seq; i++, cur = next)
        if (ox_child(g, m, path, seq[i], &cur, &next) != 0) return -1;
    if (shortcut(g, m, path, in, &id) != 0) return -1;
    return add_relu(g, path, &cur, &id, 1, out);
}

/* torchvision's Bottleneck (ResNet-50):
 * relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x)). */
static int ex_bottleneck(ox *g, const ct_module *m, const char *path, const ox_val *in,
                         ox_val *out) {
    static const char *const seq[] = {"conv1", "bn1", "relu", "conv2", "bn2", "relu",
                                      "conv3", "bn3"};
    ox_val cur = *in, next, id;
    for (size_t i = 0; i < sizeof seq / sizeof *seq; i++, cur = next)
        if (ox_child(g, m, path, seq[i], &cur, &next) != 0) return -1;
    if (shortcut(g, m, path, in, &id) != 0) return -1;
    return add_relu(g, path, &cur, &id, 1, out);
}

/* Whether some Conv2d below m has a stride other than 1. */
static int has_stride(const ct_module *m) {
    ct_tensor *w, *b;
    ct_conv2d_options o;
    if (ct_nn__conv2d_info(m, &w, &b, &o) && (o.stride[0] != 1 || o.stride[1] != 1)) return 1;
    for (int i = 0; i < m->n_children; i++)
        if (has_stride(m->children[i])) return 1;
    return 0;
}

/* torchvision's InvertedResidual (MobileNetV2): conv(x), plus x when
 * use_res_connect = (stride == 1 and inp == oup). */
static int ex_inverted_residual(ox *g, const ct_module *m, const char *path, const ox_val *in,
                                ox_val *out) {
    ox_val y;
    if (ox_child(g, m, path, "conv", in, &y) != 0) return -1;
    int res = !has_stride(m) && y.ndim == 4 && y.shape[1] == in->shape[1];
    if (!res) {
        *out = y;
        return 0;
    }
    return add_relu(g, path, &y, in, 0, out);
}

/* --------------------------------------------------------------- models
 * The built-in models' forward functions are C code (src/models): each is described here
 * by the graph it computes. */
/* SimpleCNN: classifier(flatten(features(x), 1)). */
static int ex_simple_cnn(ox *g, const ct_module *m, const char *path, const ox_val *in,
                         ox_val *out) {
    ox_val f, flat;
    if (ox_child(g, m, path, "features", in, &f) != 0 || flatten1(g, path, &f, &flat) != 0)
        return -1;
    return ox_child(g, m, path, "classifier", &flat, out);
}

/* MLP: its children in order on flatten(x, 1). */
static int ex_mlp(ox *g, const ct_module *m, const char *path, const ox_val *in, ox_val *out) {
    ox_val flat = *in;
    if (in->ndim > 2 && flatten1(g, path, in, &flat) != 0) return -1;
    return ox_chain(g, m, path, 0, m->n_children, &flat, out);
}

/* ResNet (ctorch's CIFAR variant and torchvision's): every child up to avgpool, then
 * fc(flatten(x, 1)). */
static int ex_resnet(ox *g, const ct_module *m, const char *path, const ox_val *in, ox_val *out) {
    int fc = m->n_children - 1;
    if (fc < 0 || strcmp(m->children[fc]->name, "fc") != 0)
        return ct_error("ONNX export: ResNet '%s' does not end with its 'fc' layer", shown(path));
    ox_val f, flat;
    if (ox_chain(g, m, path, 0, fc, in, &f) != 0 || flatten1(g, path, &f, &flat) != 0) return -1;
    return ox_child(g, m, path, "fc", &flat, out);
}

/* torchvision's MobileNetV2: classifier(flatten(adaptive_avg_pool2d(features(x), 1), 1)). */
static int ex_mobilenet_v2(ox *g, const ct_module *m, const char *path, const ox_val *in,
                           ox_val *out) {
    ox_val f, p, flat;
    if (ox_child(g, m, path, "features", in, &f) != 0 || global_avg(g, path, &f, &p) != 0 ||
        flatten1(g, path, &p, &flat) != 0)
        return -1;
    return ox_child(g, m, path, "classifier", &flat, out);
}

/* AdaptiveNet in eval mode (ct_module_forward): main_head(backbone(x)); the auxiliary head
 * only runs in training. */
static int ex_adaptive_net(ox *g, const ct_module *m, const char *path, const ox_val *in,
                           ox_val *out) {
    ox_val h;
    if (ox_child(g, m, path, "backbone", in, &h) != 0) return -1;
    return ox_child(g, m, path, "main_head", &h, out);
}

/* --------------------------------------------------------------- registry */
static const struct {
    const char *type;
    ox_export_fn fn;
} EXPORTERS[] = {
    {"Conv2d", ex_conv},
    {"BatchNorm2d", ex_batch_norm},
    {"Linear", ex_linear},
    {"ReLU", ex_relu},
    {"ReLU6", ex_relu6},
    {"GELU", ex_gelu},
    {"MaxPool2d", ex_pool},
    {"AvgPool2d", ex_pool},
    {"AdaptiveAvgPool2d", ex_adaptive},
    {"Flatten", ex_flatten},
    {"Dropout", ex_pass},
    {"Identity", ex_pass},
    {"Sequential", ex_sequential},
    {"Conv2dNormActivation", ex_sequential}, /* torchvision's: a Sequential */
    {"BasicBlock", ex_basic_block},
    {"Bottleneck", ex_bottleneck},
    {"InvertedResidual", ex_inverted_residual},
    {"SimpleCNN", ex_simple_cnn},
    {"MLP", ex_mlp},
    {"ResNet", ex_resnet},
    {"MobileNetV2", ex_mobilenet_v2},
    {"AdaptiveNet", ex_adaptive_net},
};

static int ox_module(ox *g, const ct_module *m, const char *path, const ox_val *in, ox_val *out) {
    for (size_t i = 0; i < sizeof EXPORTERS / sizeof *EXPORTERS; i++)
        if (!strcmp(m->type, EXPORTERS[i].type)) return EXPORTERS[i].fn(g, m, path, in, out);
    char types[1024];
    size_t w = 0;
    for (size_t i = 0; i < sizeof EXPORTERS / sizeof *EXPORTERS && w < sizeof types; i++)
        w += (size_t)snprintf(types + w, sizeof types - w, "%s%s", i ? ", " : "",
                              EXPORTERS[i].type);
    return ct_error("ONNX export: module '%s' of type %s has no ONNX exporter (exported "
                    "types: %s; docs/onnx.md)", shown(path), m->type, types);
}

/* ------------------------------------------------------------------ the model */
/* A float32 tensor value's description: [dims], shape[0] < 0 is dim_param "batch". */
static Onnx__ValueInfoProto *value_info(ox *g, const char *name, const ox_val *v) {
    Onnx__ValueInfoProto *vi = ox_alloc(g, sizeof *vi);
    Onnx__TypeProto *tp = ox_alloc(g, sizeof *tp);
    Onnx__TypeProto__Tensor *tt = ox_alloc(g, sizeof *tt);
    Onnx__TensorShapeProto *sh = ox_alloc(g, sizeof *sh);
    Onnx__TensorShapeProto__Dimension **dims = ox_alloc(g, (size_t)v->ndim * sizeof *dims);
    if (!vi || !tp || !tt || !sh || !dims || !(vi->name = ox_strdup(g, name))) return NULL;
    char *nm = vi->name;
    onnx__value_info_proto__init(vi);
    onnx__type_proto__init(tp);
    onnx__type_proto__tensor__init(tt);
    onnx__tensor_shape_proto__init(sh);
    vi->name = nm;
    for (int i = 0; i < v->ndim; i++) {
        Onnx__TensorShapeProto__Dimension *d = ox_alloc(g, sizeof *d);
        if (!d) return NULL;
        onnx__tensor_shape_proto__dimension__init(d);
        if (v->shape[i] < 0) {
            d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            if (!(d->dim_param = ox_strdup(g, "batch"))) return NULL;
        } else {
            d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            d->dim_value = v->shape[i];
        }
        dims[i] = d;
    }
    sh->n_dim = (size_t)v->ndim;
    sh->dim = dims;
    tt->has_elem_type = 1;
    tt->elem_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    tt->shape = sh;
    tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    tp->tensor_type = tt;
    vi->type = tp;
    return vi;
}

/* The graph's output is named "logits": the node that produces the last value is renamed
 * (an Identity when the graph has no node, or when that value is the input). */
static int name_output(ox *g, ox_val *v) {
    for (size_t i = g->n_nodes; i-- > 0;)
        if (!strcmp(g->nodes[i]->output[0], v->name)) {
            for (size_t j = i + 1; j < g->n_nodes; j++) /* later readers (none today) */
                for (size_t k = 0; k < g->nodes[j]->n_input; k++)
                    if (!strcmp(g->nodes[j]->input[k], v->name))
                        g->nodes[j]->input[k] = g->nodes[i]->output[0];
            char *o = ox_strdup(g, "logits");
            if (!o) return -1;
            g->nodes[i]->output[0] = o;
            snprintf(v->name, sizeof v->name, "logits");
            return 0;
        }
    ox_val r;
    if (unary(g, "Identity", "output", v, &r) != 0) return -1;
    return name_output(g, &r) == 0 ? (*v = r, 0) : -1;
}

/* protobuf-c writes through this into the atomic file. */
typedef struct {
    ProtobufCBuffer base;
    FILE *fp;
    int failed;
} file_buffer;

static void file_append(ProtobufCBuffer *b, size_t len, const uint8_t *data) {
    file_buffer *f = (file_buffer *)b;
    if (!f->failed && fwrite(data, 1, len, f->fp) != len) f->failed = 1;
}

static int ir_version(int opset) { return opset <= 18 ? 8 : opset <= 20 ? 9 : 10; }

/* Packs g's nodes and initializers with the input and output descriptions into path. */
static int write_model(ox *g, const ct_module *root, const ox_val *in, const ox_val *out,
                       const char *path) {
    Onnx__ModelProto model = ONNX__MODEL_PROTO__INIT;
    Onnx__GraphProto graph = ONNX__GRAPH_PROTO__INIT;
    Onnx__OperatorSetIdProto opset = ONNX__OPERATOR_SET_ID_PROTO__INIT, *opsets[1] = {&opset};
    Onnx__ValueInfoProto *gin[1] = {value_info(g, "input", in)};
    Onnx__ValueInfoProto *gout[1] = {value_info(g, "logits", out)};
    if (!gin[0] || !gout[0]) return -1;
    opset.domain = "";
    opset.has_version = 1;
    opset.version = g->o->opset;
    model.has_ir_version = 1;
    model.ir_version = ir_version(g->o->opset);
    model.n_opset_import = 1;
    model.opset_import = opsets;
    model.producer_name = "ctorch";
    model.producer_version = CT_VERSION;
    model.doc_string = (char *)(g->o->doc ? g->o->doc : "");
    graph.name = (char *)root->type;
    graph.n_node = g->n_nodes;
    graph.node = g->nodes;
    graph.n_initializer = g->n_inits;
    graph.initializer = g->inits;
    graph.n_input = 1;
    graph.input = gin;
    graph.n_output = 1;
    graph.output = gout;
    model.graph = &graph;
    size_t size = onnx__model_proto__get_packed_size(&model);
    if (size >= (size_t)INT32_MAX)
        return ct_error("ONNX export to %s: the model is %zu bytes, over protobuf's 2 GiB "
                        "limit (ONNX's external data is not written)", path, size);
    ct_atomic_file *f = ct_atomic_open(path);
    if (!f) return -1;
    file_buffer fb = {{file_append}, f->fp, 0};
    size_t wrote = onnx__model_proto__pack_to_buffer(&model, &fb.base);
    if (fb.failed || wrote != size) {
        ct_atomic_abort(f);
        return ct_error("ONNX export: writing %s failed (disk full?)", path);
    }
    return ct_atomic_commit(f);
}

static int check_opts(const ct_module *m, const char *path, const ct_onnx_export_opts *o) {
    if (!m || !path || !o) return ct_error("ONNX export: NULL module, path or options");
    if (o->opset < 13 || o->opset > 21)
        return ct_error("ONNX export: opset %d is not supported (13 to 21; default 17)", o->opset);
    if (o->batch < 0)
        return ct_error("ONNX export: batch %lld must be >= 1, or 0 for a dynamic batch",
                        (long long)o->batch);
    if (o->channels < 1 || o->height < 1 || o->width < 1)
        return ct_error("ONNX export: the input size %dx%dx%d (C x H x W) must be positive",
                        o->channels, o->height, o->width);
    return 0;
}

int ct_onnx_export(const ct_module *m, const char *path, const ct_onnx_export_opts *opts) {
    ct_onnx_export_opts o = opts ? *opts : (ct_onnx_export_opts){0};
    if (opts && o.opset == 0) o.opset = 17;
    if (check_opts(m, path, opts ? &o : NULL) != 0) return -1;
    ox g = {.o = &o};
    ox_val in = {.name = "input", .ndim = 4,
                 .shape = {o.batch > 0 ? o.batch : -1, o.channels, o.height, o.width}};
    ox_val out;
    int prev = ct_set_grad_enabled(0);
    int rc = ox_module(&g, m, "", &in, &out);
    if (rc == 0) rc = name_output(&g, &out);
    if (rc == 0) rc = write_model(&g, m, &in, &out, path);
    ct_set_grad_enabled(prev);
    ox_free(&g);
    return rc;
}
#endif /* CT_HAVE_ONNX */
