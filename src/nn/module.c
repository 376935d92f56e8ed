/* The module tree: children, parameters, buffers, train/eval, state_dict / load_state_dict
 * with PyTorch's names, device/dtype conversion, repr. Running modules: forward.c. */
#include "ctorch_nn.h"
#include "core/error.h"
#include "core/tensor_impl.h"
#include "nn_internal.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *r = malloc(n);
    if (r) memcpy(r, s, n);
    return r;
}

ct_module *ct_module_new(const char *type, ct_module_forward_fn forward, void *impl,
                         void (*impl_free)(void *impl)) {
    ct_module *m = calloc(1, sizeof *m);
    if (!m || !(m->name = xstrdup(""))) {
        free(m);
        if (impl && impl_free) impl_free(impl);
        return ct_error_null("module: out of memory");
    }
    m->type = type ? type : "Module";
    m->forward = forward;
    m->impl = impl;
    m->impl_free = impl_free;
    m->training = 1;
    return m;
}

void ct_module_free(ct_module *m) {
    if (!m) return;
    for (int i = 0; i < m->n_children; i++) ct_module_free(m->children[i]);
    for (int i = 0; i < m->n_params; i++) {
        free(m->param_names[i]);
        ct__unhold(m->params[i]);
    }
    for (int i = 0; i < m->n_buffers; i++) {
        free(m->buffer_names[i]);
        ct__unhold(m->buffers[i]);
    }
    free(m->children);
    free(m->param_names);
    free(m->params);
    free(m->buffer_names);
    free(m->buffers);
    if (m->impl && m->impl_free) m->impl_free(m->impl);
    free(m->name);
    free(m);
}

/* name must be non-empty, dot-free and unused in m. */
static int check_new_name(const ct_module *m, const char *name, const char *what) {
    if (!name || !*name || strchr(name, '.'))
        return ct_error("%s: %s name \"%s\" must be non-empty and contain no '.'", m->type, what,
                        name ? name : "(null)");
    for (int i = 0; i < m->n_children; i++)
        if (!strcmp(m->children[i]->name, name))
            return ct_error("%s: name \"%s\" is already used by a child module", m->type, name);
    for (int i = 0; i < m->n_params; i++)
        if (!strcmp(m->param_names[i], name))
            return ct_error("%s: name \"%s\" is already used by a parameter", m->type, name);
    for (int i = 0; i < m->n_buffers; i++)
        if (!strcmp(m->buffer_names[i], name))
            return ct_error("%s: name \"%s\" is already used by a buffer", m->type, name);
    return 0;
}

static int grow(void **arr, int *cap, int need, size_t elt) {
    if (need <= *cap) return 0;
    int nc = *cap ? *cap * 2 : 4;
    while (nc < need) nc *= 2;
    void *p = realloc(*arr, (size_t)nc * elt);
    if (!p) return ct_error("module: out of memory");
    *arr = p;
    *cap = nc;
    return 0;
}

int ct_module_add_child(ct_module *m, const char *name, ct_module *child) {
    if (!m) {
        ct_module_free(child);
        return ct_error("module add_child: NULL module");
    }
    if (!child) { /* typically a failed constructor: keep its message */
        ct_error_context("%s: child \"%s\"", m->type, name ? name : "(null)");
        return -1;
    }
    if (child->parent) /* not freed: it belongs to its parent */
        return ct_error("%s: module \"%s\" already has a parent", m->type, name);
    char *nm = NULL;
    if (check_new_name(m, name, "child") != 0 || !(nm = xstrdup(name)) ||
        grow((void **)&m->children, &m->cap_children, m->n_children + 1, sizeof(ct_module *))) {
        free(nm);
        ct_module_free(child);
        return -1;
    }
    free(child->name);
    child->name = nm;
    child->parent = m;
    m->children[m->n_children++] = child;
    return 0;
}

static int add_tensor(ct_module *m, const char *name, ct_tensor *t, int param) {
    if (!m || !t) return ct_error("module: NULL %s", m ? "tensor" : "module");
    const char *what = param ? "parameter" : "buffer";
    if (check_new_name(m, name, what) != 0) return -1;
    if (param) {
        if (!ct_is_floating(t->dtype) || t->dtype == CT_BFLOAT16 || t->dtype == CT_FLOAT16)
            return ct_error("%s: parameter \"%s\" must be float32 or float64, got %s", m->type,
                            name, ct_dtype_name(t->dtype));
        if (t->grad_fn)
            return ct_error("%s: parameter \"%s\" must be a leaf tensor (detach it first)",
                            m->type, name);
    }
    int *n = param ? &m->n_params : &m->n_buffers;
    int *cap = param ? &m->cap_params : &m->cap_buffers;
    char ***names = param ? &m->param_names : &m->buffer_names;
    ct_tensor ***ts = param ? &m->params : &m->buffers;
    if (*n + 1 > *cap) {
        int nc = *cap ? *cap * 2 : 4;
        char **a = realloc(*names, (size_t)nc * sizeof(char *));
        if (!a) return ct_error("module: out of memory");
        *names = a;
        ct_tensor **b = realloc(*ts, (size_t)nc * sizeof(ct_tensor *));
        if (!b) return ct_error("module: out of memory");
        *ts = b;
        *cap = nc;
    }
    char *nm = xstrdup(name);
    if (!nm) return ct_error("module: out of memory");
    if (param && ct_set_requires_grad(t, 1) != 0) {
        free(nm);
        return -1;
    }
    (*names)[*n] = nm;
    (*ts)[*n] = ct__hold(t);
    return (*n)++;
}

int ct_module_add_parameter(ct_module *m, const char *name, ct_tensor *t) {
    return add_tensor(m, name, t, 1);
}
int ct_module_add_buffer(ct_module *m, const char *name, ct_tensor *t) {
    return add_tensor(m, name, t, 0);
}

/* --------------------------------------------------------------- tree access */
void ct_module_train(ct_module *m, int training) {
    if (!m) return;
    m->training = training != 0;
    for (int i = 0; i < m->n_children; i++) ct_module_train(m->children[i], training);
}
void ct_module_eval(ct_module *m) { ct_module_train(m, 0); }
int ct_module_is_training(const ct_module *m) { return m ? m->training : 0; }

const char *ct_module_path(const ct_module *m, char *buf, size_t n) {
    if (!buf || n == 0) return buf;
    const ct_module *chain[64];
    int k = 0;
    for (const ct_module *p = m; p && p->parent && k < 64; p = p->parent) chain[k++] = p;
    size_t pos = 0;
    buf[0] = 0;
    if (k == 0) {
        snprintf(buf, n, "%s", m && m->parent == NULL ? "" : "?");
        return buf;
    }
    for (int i = k - 1; i >= 0 && pos < n; i--) {
        int w = snprintf(buf + pos, n - pos, "%s%s", i == k - 1 ? "" : ".", chain[i]->name);
        if (w < 0) break;
        pos += (size_t)w;
    }
    return buf;
}

static ct_module *child_named(const ct_module *m, const char *name, size_t len) {
    for (int i = 0; i < m->n_children; i++)
        if (strlen(m->children[i]->name) == len && !strncmp(m->children[i]->name, name, len))
            return m->children[i];
    return NULL;
}

ct_module *ct_module_get(const ct_module *m, const char *path) {
    if (!m || !path) return NULL;
    const ct_module *cur = m;
    const char *p = path;
    while (*p && cur) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        cur = child_named(cur, p, len);
        p += len + (dot ? 1 : 0);
    }
    return (ct_module *)cur;
}

ct_tensor *ct_module_get_tensor(const ct_module *m, const char *name) {
    if (!m || !name) return NULL;
    const ct_module *cur = m;
    const char *p = name;
    for (;;) {
        const char *dot = strchr(p, '.');
        if (!dot) break;
        cur = child_named(cur, p, (size_t)(dot - p));
        if (!cur) return NULL;
        p = dot + 1;
    }
    for (int i = 0; i < cur->n_params; i++)
        if (!strcmp(cur->param_names[i], p)) return cur->params[i];
    for (int i = 0; i < cur->n_buffers; i++)
        if (!strcmp(cur->buffer_names[i], p)) return cur->buffers[i];
    return NULL;
}

/* Visits every parameter (and buffer when `buffers`) in state_dict order. */
typedef int (*visit_fn)(void *ctx, const char *name, ct_tensor **slot, int is_param);

static int visit(const ct_module *m, char *prefix, size_t plen, size_t cap, int buffers,
                 visit_fn fn, void *ctx) {
    for (int pass = 0; pass < (buffers ? 2 : 1); pass++) {
        int n = pass ? m->n_buffers : m->n_params;
        for (int i = 0; i < n; i++) {
            const char *nm = pass ? m->buffer_names[i] : m->param_names[i];
            snprintf(prefix + plen, cap - plen, "%s", nm);
            int rc = fn(ctx, prefix, pass ? &m->buffers[i] : &m->params[i], !pass);
            prefix[plen] = 0;
            if (rc) return rc;
        }
    }
    for (int i = 0; i < m->n_children; i++) {
        int w = snprintf(prefix + plen, cap - plen, "%s.", m->children[i]->name);
        size_t np = plen + (size_t)(w > 0 ? w : 0);
        if (np >= cap) np = cap - 1;
        int rc = visit(m->children[i], prefix, np, cap, buffers, fn, ctx);
        prefix[plen] = 0;
        if (rc) return rc;
    }
    return 0;
}

static int walk(const ct_module *m, int buffers, visit_fn fn, void *ctx) {
    char prefix[1024];
    prefix[0] = 0;
    return visit(m, prefix, 0, sizeof prefix, buffers, fn, ctx);
}

typedef struct {
    ct_tensor **arr;
    int n, cap;
} tlist;

static int collect_params(void *ctx, const char *name, ct_tensor **slot, int is_param) {
    (void)name;
    (void)is_param;
    tlist *l = ctx;
    if (grow((void **)&l->arr, &l->cap, l->n + 1, sizeof(ct_tensor *)) != 0) return -1;
    l->arr[l->n++] = *slot;
    return 0;
}

ct_tensor **ct_module_parameters(const ct_module *m, int *n) {
    if (n) *n = 0;
    if (!m) return ct_error_null("parameters: NULL module");
    tlist l = {NULL, 0, 0};
    if (grow((void **)&l.arr, &l.cap, 1, sizeof(ct_tensor *)) != 0) return NULL;
    if (walk(m, 0, collect_params, &l) != 0) {
        free(l.arr);
        return NULL;
    }
    if (n) *n = l.n;
    return l.arr;
}

static int count_params(void *ctx, const char *name, ct_tensor **slot, int is_param) {
    (void)name;
    (void)is_param;
    *(int64_t *)ctx += ct_numel(*slot);
    return 0;
}

int64_t ct_module_num_parameters(const ct_module *m) {
    int64_t total = 0;
    if (m) walk(m, 0, count_params, &total);
    return total;
}

static int zero_grad_visit(void *ctx, const char *name, ct_tensor **slot, int is_param) {
    (void)ctx;
    (void)name;
    (void)is_param;
    ct_zero_grad(*slot);
    return 0;
}

void ct_module_zero_grad(ct_module *m) {
    if (m) walk(m, 0, zero_grad_visit, NULL);
}

/* ------------------------------------------------------------- device/dtype */
typedef struct {
    ct_device d;
    int dt;
} to_ctx;

static int to_visit(void *vc, const char *name, ct_tensor **slot, int is_param) {
    to_ctx *c = vc;
    ct_tensor *t = *slot;
    int convert_dtype = c->dt >= 0 && (ct_dtype)c->dt != t->dtype && ct_is_floating(t->dtype);
    ct_device cur = t->storage->device;
    int move = !ct_device_equal(cur, c->d);
    if (!convert_dtype && !move) {
        ct_zero_grad(t);
        return 0;
    }
    int prev = ct_set_grad_enabled(0);
    ct_tensor *a = ct_detach(t);
    ct_tensor *b = a && move ? ct_to_device(a, c->d) : (a ? ct_retain(a) : NULL);
    ct_tensor *r = b && convert_dtype ? ct_to_dtype(b, (ct_dtype)c->dt) : (b ? ct_retain(b) : NULL);
    ct_free(a);
    ct_free(b);
    ct_set_grad_enabled(prev);
    if (!r) {
        ct_error_context("module to: %s", name);
        return -1;
    }
    /* a fresh leaf (never shares the autograd identity of the old one) */
    if (r == t || r->grad_fn) {
        ct_tensor *x = ct_detach(r);
        ct_free(r);
        r = x;
        if (!r) return -1;
    }
    if (is_param && ct_set_requires_grad(r, 1) != 0) {
        ct_free(r);
        return -1;
    }
    ct__unhold(t);
    *slot = ct__own(r); /* the module's, never a scope's */
    return 0;
}

int ct_module_to(ct_module *m, ct_device d, int dt) {
    if (!m) return ct_error("module to: NULL module");
    if (dt >= 0 && dt != CT_FLOAT32 && dt != CT_FLOAT64)
        return ct_error("module to: dtype %s not supported for parameters; use float32 or "
                        "float64", ct_dtype_name((ct_dtype)dt));
    to_ctx c = {d, dt};
    return walk(m, 1, to_visit, &c);
}

/* -------------------------------------------------------------------- repr */
static void print_rec(const ct_module *m, FILE *f, int indent, const char *label) {
    char extra[256] = "";
    if (m->extra_repr) m->extra_repr(m, extra, sizeof extra);
    fprintf(f, "%*s%s%s%s(%s", indent, "", label ? label : "", label ? ": " : "", m->type, extra);
    if (m->n_children) {
        fprintf(f, "\n");
        for (int i = 0; i < m->n_children; i++) {
            char lab[300];
            snprintf(lab, sizeof lab, "(%s)", m->children[i]->name);
            print_rec(m->children[i], f, indent + 2, lab);
        }
        fprintf(f, "%*s)\n", indent, "");
    } else {
        fprintf(f, ")\n");
    }
}

void ct_module_print(const ct_module *m, FILE *f) {
    if (m && f) print_rec(m, f, 0, NULL);
}

/* --------------------------------------------------------------- state_dict */
ct_state_dict *ct_state_dict_new(void) {
    ct_state_dict *sd = calloc(1, sizeof *sd);
    if (!sd) return ct_error_null("state_dict: out of memory");
    return sd;
}

void ct_state_dict_free(ct_state_dict *sd) {
    if (!sd) return;
    for (int i = 0; i < sd->n; i++) {
        free(sd->names[i]);
        ct__unhold(sd->tensors[i]);
    }
    free(sd->names);
    free(sd->tensors);
    free(sd);
}

int ct_state_dict_add(ct_state_dict *sd, const char *name, ct_tensor *t) {
    if (!sd || !name || !t) return ct_error("state_dict add: NULL argument");
    if (ct_state_dict_get(sd, name))
        return ct_error("state_dict add: duplicate name \"%s\"", name);
    char **nn = realloc(sd->names, (size_t)(sd->n + 1) * sizeof(char *));
    if (!nn) return ct_error("state_dict: out of memory");
    sd->names = nn;
    ct_tensor **nt = realloc(sd->tensors, (size_t)(sd->n + 1) * sizeof(ct_tensor *));
    if (!nt) return ct_error("state_dict: out of memory");
    sd->tensors = nt;
    char *nm = xstrdup(name);
    if (!nm) return ct_error("state_dict: out of memory");
    sd->names[sd->n] = nm;
    sd->tensors[sd->n] = ct__hold(t);
    sd->n++;
    return 0;
}

ct_tensor *ct_state_dict_get(const ct_state_dict *sd, const char *name) {
    if (!sd || !name) return NULL;
    for (int i = 0; i < sd->n; i++)
        if (!strcmp(sd->names[i], name)) return sd->tensors[i];
    return NULL;
}

static int sd_visit(void *ctx, const char *name, ct_tensor **slot, int is_param) {
    (void)is_param;
    return ct_state_dict_add(ctx, name, *slot);
}

ct_state_dict *ct_module_state_dict(const ct_module *m) {
    if (!m) return ct_error_null("state_dict: NULL module");
    ct_state_dict *sd = ct_state_dict_new();
    if (!sd) return NULL;
    if (walk(m, 1, sd_visit, sd) != 0) {
        ct_state_dict_free(sd);
        return NULL;
    }
    return sd;
}

/* growing string */
typedef struct {
    char *s;
    size_t len, cap;
    int lines;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) CT_PRINTF(2, 3);
static void sb_printf(sbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (need < 0) return;
    if (b->len + (size_t)need + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->len + (size_t)need + 1) nc *= 2;
        char *p = realloc(b->s, nc);
        if (!p) return;
        b->s = p;
        b->cap = nc;
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)need;
}

static const char *shape_dt(const ct_tensor *t, char *buf, size_t n) {
    char s[128];
    snprintf(buf, n, "%s %s", ct_shape_str(t, s, sizeof s), ct_dtype_name(t->dtype));
    return buf;
}

char *ct_module_check_state_dict(const ct_module *m, const ct_state_dict *sd, int strict) {
    if (!m || !sd) return xstrdup("NULL module or state_dict");
    ct_state_dict *own = ct_module_state_dict(m);
    if (!own) return xstrdup(ct_last_error());
    sbuf b = {0};
    char s1[160], s2[160];
    for (int i = 0; i < own->n; i++) {
        ct_tensor *t = ct_state_dict_get(sd, own->names[i]);
        if (!t) {
            if (strict) {
                sb_printf(&b, "  missing: %s %s\n", own->names[i],
                          shape_dt(own->tensors[i], s1, sizeof s1));
                b.lines++;
            }
            continue;
        }
        if (!ct_same_shape(t, own->tensors[i])) {
            sb_printf(&b, "  size mismatch: %s: given %s, model has %s\n", own->names[i],
                      ct_shape_str(t, s1, sizeof s1), ct_shape_str(own->tensors[i], s2, sizeof s2));
            b.lines++;
        } else if (!ct_is_floating(t->dtype) && ct_is_floating(own->tensors[i]->dtype)) {
            sb_printf(&b, "  dtype mismatch: %s: given %s, model has %s\n", own->names[i],
                      ct_dtype_name(t->dtype), ct_dtype_name(own->tensors[i]->dtype));
            b.lines++;
        }
    }
    if (strict)
        for (int i = 0; i < sd->n; i++)
            if (!ct_state_dict_get(own, sd->names[i])) {
                sb_printf(&b, "  unexpected: %s %s\n", sd->names[i],
                          shape_dt(sd->tensors[i], s1, sizeof s1));
                b.lines++;
            }
    ct_state_dict_free(own);
    if (b.lines == 0) {
        free(b.s);
        return NULL;
    }
    if (!b.s) return xstrdup("state_dict mismatch (out of memory while listing it)");
    return b.s;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

/* Sets the error: header + as many report lines as fit + a count of the rest. */
int ct_nn_report_error(const char *header, const char *report, const char *fix) {
    char msg[1024];
    size_t fixlen = strlen(fix) + 40;
    int total = count_lines(report);
    int w = snprintf(msg, sizeof msg, "%s (%d problem%s):\n", header, total, total == 1 ? "" : "s");
    size_t pos = w > 0 ? (size_t)w : 0;
    int shown = 0;
    const char *p = report;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p + 1) : strlen(p);
        if (pos + len + fixlen >= sizeof msg) break;
        memcpy(msg + pos, p, len);
        pos += len;
        msg[pos] = 0;
        shown++;
        p += len;
    }
    if (pos >= sizeof msg) pos = sizeof msg - 1;
    if (shown < total)
        snprintf(msg + pos, sizeof msg - pos, "  ... and %d more\n%s", total - shown, fix);
    else
        snprintf(msg + pos, sizeof msg - pos, "%s", fix);
    return ct_error("%s", msg);
}

int ct_module_load_state_dict(ct_module *m, const ct_state_dict *sd, int strict) {
    if (!m || !sd) return ct_error("load_state_dict: NULL %s", m ? "state_dict" : "module");
    char *rep = ct_module_check_state_dict(m, sd, strict);
    if (rep) {
        char header[160];
        snprintf(header, sizeof header, "load_state_dict: the weights do not match %s", m->type);
        ct_nn_report_error(header, rep,
                     "fix: load weights saved from a model of the same architecture and "
                     "number of classes (strict = 0 ignores missing and unexpected names, "
                     "not shape mismatches)");
        free(rep);
        return -1;
    }
    ct_state_dict *own = ct_module_state_dict(m);
    if (!own) return -1;
    int prev = ct_set_grad_enabled(0), rc = 0;
    for (int i = 0; i < own->n && rc == 0; i++) {
        ct_tensor *src = ct_state_dict_get(sd, own->names[i]);
        if (!src) continue;
        rc = ct_copy_(own->tensors[i], src);
        if (rc) ct_error_context("load_state_dict: %s", own->names[i]);
    }
    ct_set_grad_enabled(prev);
    ct_state_dict_free(own);
    return rc;
}

