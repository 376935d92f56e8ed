/* Define-by-run autograd: nodes recorded by ops, and the engine that runs them in
 * reverse topological order, accumulating gradients into leaves' .grad. */
#include "autograd.h"
#include "backend.h"
#include "error.h"

#include <stdlib.h>
#include <string.h>

static _Thread_local int t_grad_disabled;
static atomic_uint_fast64_t g_seq;

int ct_set_grad_enabled(int enabled) {
    int prev = !t_grad_disabled;
    t_grad_disabled = !enabled;
    return prev;
}
int ct_is_grad_enabled(void) { return !t_grad_disabled; }

int ct_needs_grad(const ct_tensor *const *inputs, int n) {
    if (t_grad_disabled) return 0;
    for (int i = 0; i < n; i++)
        if (inputs[i] && inputs[i]->requires_grad) return 1;
    return 0;
}

ct_node *ct_node_new(const char *name, ct_backward_fn fn, int n_inputs) {
    ct_node *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    atomic_init(&n->refcount, 1);
    n->name = name;
    n->backward = fn;
    n->n_inputs = n_inputs;
    n->inputs = calloc((size_t)(n_inputs > 0 ? n_inputs : 1), sizeof(ct_edge));
    if (!n->inputs) {
        free(n);
        return NULL;
    }
    n->seq = atomic_fetch_add(&g_seq, 1);
    return n;
}

ct_tensor *ct_node_record(const char *name, ct_backward_fn fn, const ct_tensor *const *inputs,
                          int n_inputs, ct_tensor *y, ct_node **node) {
    *node = NULL;
    if (!y || !ct_needs_grad(inputs, n_inputs)) return y;
    ct_node *n = ct_node_new(name, fn, n_inputs);
    if (!n) {
        ct_free(y);
        return ct_error_null("%s: out of memory recording the autograd graph", name);
    }
    for (int i = 0; i < n_inputs; i++) ct_node_set_input(n, i, inputs[i]);
    ct_node_attach(n, y);
    *node = n;
    return y;
}

ct_node *ct_node_retain(ct_node *n) {
    if (n) atomic_fetch_add(&n->refcount, 1);
    return n;
}

static void free_saved(ct_node *n) {
    for (int i = 0; i < n->n_saved; i++) {
        ct_free(n->saved[i].t);
        n->saved[i].t = NULL;
    }
}

/* Drops the edges and saved tensors (what "freeing the graph" means). */
static void release_graph(ct_node *n) {
    free_saved(n);
    for (int i = 0; i < n->n_inputs; i++) {
        ct_node *f = n->inputs[i].fn;
        ct_tensor *l = n->inputs[i].leaf;
        n->inputs[i].fn = NULL;
        n->inputs[i].leaf = NULL;
        if (f) ct_node_release(f);
        if (l) ct__unhold(l);
    }
    n->released = 1;
}

void ct_node_release(ct_node *n) {
    /* Iterative to avoid deep recursion on long chains. */
    while (n && atomic_fetch_sub(&n->refcount, 1) == 1) {
        ct_node *next = NULL;
        free_saved(n);
        for (int i = 0; i < n->n_inputs; i++) {
            ct__unhold(n->inputs[i].leaf);
            ct_node *f = n->inputs[i].fn;
            if (!f) continue;
            if (!next) next = f;
            else ct_node_release(f);
        }
        if (n->ctx_heap) free(n->ctx);
        free(n->inputs);
        free(n);
        n = next;
    }
}

void *ct_node_ctx_new(ct_node *n, size_t size) {
    if (size <= CT_NODE_CTX_BYTES) {
        memset(n->ctx_inline.bytes, 0, size);
        n->ctx = n->ctx_inline.bytes;
        return n->ctx;
    }
    n->ctx = calloc(1, size);
    if (!n->ctx) return ct_error_null("%s: out of memory for the backward context", n->name);
    n->ctx_heap = 1;
    return n->ctx;
}

void ct_node_set_input(ct_node *n, int i, const ct_tensor *t) {
    ct_edge *e = &n->inputs[i];
    if (!t) return;
    memcpy(e->shape, t->shape, sizeof e->shape);
    e->ndim = t->ndim;
    e->dtype = t->dtype;
    if (!t->requires_grad) return;
    if (t->grad_fn) e->fn = ct_node_retain(t->grad_fn);
    else e->leaf = ct__hold((ct_tensor *)t);
}

int ct_node_save(ct_node *n, const ct_tensor *t) {
    if (n->n_saved >= CT_NODE_MAX_SAVED) return -1;
    int i = n->n_saved++;
    n->saved[i].t = t ? ct__own(ct_alias(t)) : NULL; /* the node's, never a scope's */
    n->saved[i].version = t ? atomic_load(&t->storage->version) : 0;
    return i;
}

const ct_tensor *ct_node_saved(ct_node *n, int i) {
    if (n->released)
        return ct_error_null("%s: trying to backward through the graph a second time; pass "
                             "retain_graph=1 to the first ct_backward", n->name);
    ct_saved *s = &n->saved[i];
    if (!s->t) return NULL;
    uint64_t v = atomic_load(&s->t->storage->version);
    if (v != s->version) {
        char b[96];
        return ct_error_null(
            "%s: one of the tensors needed for gradient computation (saved tensor %d, shape %s) "
            "has been modified by an in-place operation: it is at version %llu, expected %llu. "
            "Use an out-of-place op or clone() the tensor before changing it",
            n->name, i, ct_shape_str(s->t, b, sizeof b), (unsigned long long)v,
            (unsigned long long)s->version);
    }
    return s->t;
}

int ct_node_needs_grad(const ct_node *n, int i) {
    return i < n->n_inputs && (n->inputs[i].fn || n->inputs[i].leaf);
}

void ct_node_attach(ct_node *n, ct_tensor *y) {
    memcpy(n->out_shape, y->shape, sizeof n->out_shape);
    n->out_ndim = y->ndim;
    if (y->grad_fn) ct_node_release(y->grad_fn);
    y->grad_fn = n;
    y->requires_grad = 1;
}

/* ------------------------------------------------------------ tensor API */
int ct_set_requires_grad(ct_tensor *t, int rg) {
    if (ct__check_tensor(t, "set_requires_grad")) return -1;
    if (t->grad_fn) {
        if (!rg)
            return ct_error("set_requires_grad: tensor is not a leaf (produced by %s); use "
                            "ct_detach() to get a tensor that does not require grad",
                            t->grad_fn->name);
        return 0;
    }
    if (rg && !ct_is_floating(t->dtype))
        return ct_error("set_requires_grad: only floating-point tensors can require gradients "
                        "(this one is %s)", ct_dtype_name(t->dtype));
    t->requires_grad = rg != 0;
    return 0;
}
int ct_requires_grad(const ct_tensor *t) { return t && t->requires_grad; }
int ct_is_leaf(const ct_tensor *t) { return t && !t->grad_fn; }
ct_tensor *ct_grad(const ct_tensor *t) { return t ? t->grad : NULL; }
int ct_set_grad(ct_tensor *t, ct_tensor *g) {
    if (!t) return ct_error("set_grad: NULL tensor");
    if (g && !ct_same_shape(t, g)) {
        char a[96], b[96];
        return ct_error("set_grad: gradient shape %s does not match tensor shape %s",
                        ct_shape_str(g, a, sizeof a), ct_shape_str(t, b, sizeof b));
    }
    ct__hold(g);
    ct__unhold(t->grad);
    t->grad = g;
    return 0;
}
void ct_zero_grad(ct_tensor *t) {
    if (!t) return;
    ct__unhold(t->grad);
    t->grad = NULL;
}
int ct_retain_grad(ct_tensor *t) {
    if (!t || !t->requires_grad)
        return ct_error("retain_grad: tensor does not require grad");
    if (t->grad_fn) t->grad_fn->retain_target = t;
    return 0;
}
const char *ct_grad_fn_name(const ct_tensor *t) { return t && t->grad_fn ? t->grad_fn->name : NULL; }
uint64_t ct_version(const ct_tensor *t) { return atomic_load(&t->storage->version); }

/* --------------------------------------------------------------- hooks */
int ct__set_post_accumulate_grad_hook(ct_tensor *leaf, ct_post_acc_hook_fn fn, void *user) {
    if (ct__check_tensor(leaf, "post_accumulate_grad_hook")) return -1;
    if (leaf->grad_fn) return ct_error("post_accumulate_grad_hook: the tensor is not a leaf");
    leaf->post_acc_hook = fn;
    leaf->post_acc_user = fn ? user : NULL;
    return 0;
}

typedef struct {
    ct_backward_callback_fn fn;
    void *user;
} queued_cb;
static _Thread_local queued_cb *t_cbs;
static _Thread_local int t_ncb, t_capcb, t_in_backward;

int ct__queue_backward_callback(ct_backward_callback_fn fn, void *user) {
    if (!t_in_backward) return ct_error("queue_backward_callback: not inside ct_backward");
    if (t_ncb == t_capcb) {
        int cap = t_capcb ? 2 * t_capcb : 8;
        queued_cb *v = realloc(t_cbs, sizeof *v * (size_t)cap);
        if (!v) return ct_error("queue_backward_callback: out of memory");
        t_cbs = v;
        t_capcb = cap;
    }
    t_cbs[t_ncb++] = (queued_cb){fn, user};
    return 0;
}

static int run_callbacks(int rc) {
    for (int i = 0; i < t_ncb; i++) {
        int r = t_cbs[i].fn(t_cbs[i].user, rc);
        if (rc == 0 && r != 0) rc = r;
    }
    t_ncb = 0;
    return rc;
}

/* --------------------------------------------------------------- engine */
typedef struct {
    ct_node *node;
    ct_tensor *grad; /* accumulated gradient of the node's output */
    int deps;        /* consumers not yet processed */
} slot;

typedef struct {
    slot *v;
    int n, cap;
    /* node -> index into v: open addressing keyed by the node's address */
    ct_node **keys;
    int *idx;
    int hcap; /* power of two, >= 2 * n */
    /* leaves with a post-accumulate hook: edges still to process, and whether a
     * gradient arrived (open addressing keyed by the leaf's address; NULL when none) */
    ct_tensor **lkeys;
    int *lleft, *lgot;
    int lcap;
} slots;

static size_t node_hash(const ct_node *n, int hcap) {
    uint64_t x = (uint64_t)(uintptr_t)n;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 29;
    return (size_t)x & (size_t)(hcap - 1);
}

static int find_slot(const slots *s, const ct_node *n) {
    if (!s->hcap) return -1;
    for (size_t h = node_hash(n, s->hcap);; h = (h + 1) & (size_t)(s->hcap - 1)) {
        if (!s->keys[h]) return -1;
        if (s->keys[h] == n) return s->idx[h];
    }
}

static void map_put(slots *s, ct_node *n, int i) {
    size_t h = node_hash(n, s->hcap);
    while (s->keys[h] && s->keys[h] != n) h = (h + 1) & (size_t)(s->hcap - 1);
    s->keys[h] = n;
    s->idx[h] = i;
}

/* Rebuilds the index (after growing, or after the slots were reordered). */
static int map_rebuild(slots *s, int hcap) {
    if (hcap != s->hcap) {
        ct_node **k = calloc((size_t)hcap, sizeof *k);
        int *ix = malloc(sizeof(int) * (size_t)hcap);
        if (!k || !ix) {
            free(k);
            free(ix);
            return -1;
        }
        free(s->keys);
        free(s->idx);
        s->keys = k;
        s->idx = ix;
        s->hcap = hcap;
    } else {
        memset(s->keys, 0, sizeof(ct_node *) * (size_t)hcap);
    }
    for (int i = 0; i < s->n; i++) map_put(s, s->v[i].node, i);
    return 0;
}

static int add_slot(slots *s, ct_node *n) {
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 64;
        slot *v = realloc(s->v, sizeof(slot) * (size_t)cap);
        if (!v) return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n] = (slot){ct_node_retain(n), NULL, 0}; /* held until the engine is done */
    int i = s->n++;
    if (2 * s->n > s->hcap) {
        if (map_rebuild(s, s->hcap ? s->hcap * 2 : 128) != 0) {
            s->n--;
            ct_node_release(n);
            return -1;
        }
    } else {
        map_put(s, n, i);
    }
    return i;
}

/* Accumulates g into *dst (takes ownership of g). */
static int accumulate(ct_tensor **dst, ct_tensor *g) {
    if (!*dst) {
        *dst = g;
        return 0;
    }
    ct_tensor *sum = ct_add(*dst, g);
    ct_free(g);
    if (!sum) return -1;
    ct_free(*dst);
    *dst = sum;
    return 0;
}

static int accumulate_leaf(ct_tensor *leaf, ct_tensor *g) {
    if (!leaf->grad) {
        /* Own a private contiguous copy unless nobody else holds g or its memory (a view
         * of a buffer another tensor still uses is copied: the grad is added to in place). */
        if (atomic_load(&g->refcount) == 1 && atomic_load(&g->storage->refcount) == 1 &&
            ct_is_contiguous(g) && !g->grad_fn) {
            leaf->grad = g;
            return 0;
        }
        leaf->grad = ct_clone(g);
        ct_free(g);
        return leaf->grad ? 0 : -1;
    }
    int rc = ct_add_(leaf->grad, g, 1.0);
    ct_free(g);
    return rc;
}

static int check_grad_shape(const char *who, const ct_tensor *g, const int64_t *shape, int ndim) {
    if (g->ndim == ndim && memcmp(g->shape, shape, sizeof(int64_t) * (size_t)ndim) == 0) return 0;
    char a[96], b[96];
    return ct_error("%s returned a gradient of shape %s for an input of shape %s (internal "
                    "error in the op's backward formula; please report it)",
                    who, ct_shape_str(g, a, sizeof a), ct_fmt_shape(shape, ndim, b, sizeof b));
}

static int cmp_seq_desc(const void *a, const void *b) {
    const slot *x = a, *y = b;
    return x->node->seq < y->node->seq ? 1 : x->node->seq > y->node->seq ? -1 : 0;
}

static const char *const k_second_backward =
    "backward: trying to backward through the graph a second time (%s was already freed); "
    "pass retain_graph=1 to the first ct_backward";

/* Checks root and grad_output; *g0 = the gradient of root (grad_output retained, or a
 * copy of it, or ones for a scalar). */
static int root_gradient(ct_tensor *root, const ct_tensor *grad_output, ct_tensor **g0) {
    char b1[96], b2[96];
    *g0 = NULL;
    if (!root) return ct_error("backward: NULL tensor");
    if (ct__check_tensor(root, "backward") ||
        (grad_output && ct__check_tensor(grad_output, "backward")))
        return -1; /* a released tensor */
    if (!root->requires_grad)
        return ct_error("backward: tensor of shape %s does not require grad and has no grad_fn; "
                        "call ct_set_requires_grad on the inputs before computing it",
                        ct_shape_str(root, b1, sizeof b1));
    if (grad_output) {
        if (!ct_same_shape(root, grad_output))
            return ct_error("backward: grad_output shape %s does not match the tensor's shape %s",
                            ct_shape_str(grad_output, b1, sizeof b1),
                            ct_shape_str(root, b2, sizeof b2));
        if (grad_output->dtype != root->dtype)
            return ct_error("backward: grad_output is %s but the tensor is %s",
                            ct_dtype_name(grad_output->dtype), ct_dtype_name(root->dtype));
        /* Used as it is (as PyTorch does) when the kernels can take it: nothing writes into
         * a gradient it did not make, and a leaf copies one its caller still holds. */
        *g0 = ct_is_contiguous(grad_output) && !grad_output->grad_fn
                  ? ct_retain((ct_tensor *)grad_output)
                  : ct_clone(grad_output);
    } else {
        if (ct_numel(root) != 1)
            return ct_error("backward: grad can be implicitly created only for scalar outputs "
                            "(this tensor has shape %s); pass grad_output",
                            ct_shape_str(root, b1, sizeof b1));
        *g0 = ct_ones_like(root);
    }
    return *g0 ? 0 : -1;
}

/* Collects the graph below root (one slot per node) and counts each node's consumers;
 * then orders the slots for execution: nodes are created in execution order, so
 * descending creation order is a valid reverse topological order. */
static int collect_graph(slots *s, ct_node *root) {
    ct_node **stack = NULL;
    int sp = 0, scap = 0, rc = 0;
    if (add_slot(s, root) < 0) return ct_error("backward: out of memory collecting the graph");
    for (ct_node *n = root; n && rc == 0; n = sp ? stack[--sp] : NULL) {
        for (int i = 0; i < n->n_inputs && rc == 0; i++) {
            ct_node *f = n->inputs[i].fn;
            if (!f) continue;
            int k = find_slot(s, f);
            if (k < 0) {
                if (sp == scap) {
                    ct_node **st = realloc(stack, sizeof *st * (size_t)(scap ? 2 * scap : 64));
                    if (!st) {
                        rc = ct_error("backward: out of memory collecting the graph");
                        break;
                    }
                    stack = st;
                    scap = scap ? 2 * scap : 64;
                }
                if ((k = add_slot(s, f)) < 0) {
                    rc = ct_error("backward: out of memory collecting the graph");
                    break;
                }
                stack[sp++] = f;
            }
            s->v[k].deps++;
        }
    }
    free(stack);
    qsort(s->v, (size_t)s->n, sizeof(slot), cmp_seq_desc);
    if (rc == 0 && map_rebuild(s, s->hcap) != 0) rc = ct_error("backward: out of memory");
    return rc;
}

/* Hands input i's gradient g (owned) to its producer's slot or its leaf. */
static int route_gradient(slots *s, ct_node *n, int i, ct_tensor *g, int rc) {
    ct_edge *e = &n->inputs[i];
    if (rc == 0 && (e->fn || e->leaf)) {
        rc = check_grad_shape(n->name, g, e->shape, e->ndim);
        if (rc == 0 && e->fn) return accumulate(&s->v[find_slot(s, e->fn)].grad, g);
        if (rc == 0) return accumulate_leaf(e->leaf, g);
    }
    ct_free(g);
    return rc;
}

static int leaf_find(const slots *s, const ct_tensor *t) {
    size_t h = ((uintptr_t)t >> 4) * 0x9E3779B97F4A7C15ull;
    for (int i = (int)(h & (size_t)(s->lcap - 1));; i = (i + 1) & (s->lcap - 1))
        if (!s->lkeys[i] || s->lkeys[i] == t) return i;
}

/* The hooked leaves reached from the graph's edges, with their edge counts. */
static int collect_leaf_hooks(slots *s) {
    int nl = 0;
    for (int k = 0; k < s->n; k++)
        for (int i = 0; i < s->v[k].node->n_inputs; i++) {
            ct_tensor *l = s->v[k].node->inputs[i].leaf;
            nl += l && l->post_acc_hook;
        }
    if (!nl) return 0;
    s->lcap = 16;
    while (s->lcap < 2 * nl) s->lcap *= 2;
    s->lkeys = calloc((size_t)s->lcap, sizeof *s->lkeys);
    s->lleft = calloc((size_t)s->lcap, sizeof *s->lleft);
    s->lgot = calloc((size_t)s->lcap, sizeof *s->lgot);
    if (!s->lkeys || !s->lleft || !s->lgot) return ct_error("backward: out of memory");
    for (int k = 0; k < s->n; k++)
        for (int i = 0; i < s->v[k].node->n_inputs; i++) {
            ct_tensor *l = s->v[k].node->inputs[i].leaf;
            if (!l || !l->post_acc_hook) continue;
            int j = leaf_find(s, l);
            s->lkeys[j] = l;
            s->lleft[j]++;
        }
    return 0;
}

/* One edge of node n to a hooked leaf is done (got: a gradient was accumulated). */
static int leaf_edge_done(slots *s, ct_tensor *l, int got, int rc) {
    int j = leaf_find(s, l);
    s->lgot[j] |= got;
    if (--s->lleft[j] == 0 && rc == 0) rc = l->post_acc_hook(l, s->lgot[j], l->post_acc_user);
    return rc;
}

/* Runs the backward formula of slot sl's node on its accumulated gradient. */
static int run_node(slots *s, slot *sl) {
    ct_node *n = sl->node;
    if (n->retain_target) {
        ct_tensor *t = n->retain_target, *gc = ct_clone(sl->grad);
        if (t->grad) {
            ct_add_(t->grad, gc, 1.0);
            ct_free(gc);
        } else {
            t->grad = gc;
        }
    }
    if (n->released) return ct_error(k_second_backward, n->name);
    ct_tensor *gx_stack[16];
    ct_tensor **gx = n->n_inputs <= 16 ? gx_stack : calloc((size_t)n->n_inputs, sizeof *gx);
    if (!gx) return ct_error("backward: out of memory");
    memset(gx, 0, sizeof(ct_tensor *) * (size_t)n->n_inputs);
    int rc = n->backward(n, sl->grad, gx);
    if (rc != 0) ct_error_context("backward of %s", n->name);
    /* The node's gradient released before its inputs' are routed: a gx that is sl->grad
     * itself (a pass-through such as an expand that broadcast nothing) is then held by gx
     * alone, and a leaf takes it without a copy. */
    ct_free(sl->grad);
    sl->grad = NULL;
    for (int i = 0; i < n->n_inputs; i++) {
        ct_tensor *leaf = n->inputs[i].leaf;
        int got = gx[i] != NULL;
        if (gx[i]) rc = route_gradient(s, n, i, gx[i], rc);
        if (s->lcap && leaf && leaf->post_acc_hook) rc = leaf_edge_done(s, leaf, got && rc == 0, rc);
    }
    if (gx != gx_stack) free(gx);
    return rc;
}

/* The engine proper (grad mode off, scopes suspended: what it creates is ctorch's). */
static int backward_graph(ct_tensor *root, ct_tensor *g0, int retain_graph) {
    if (!root->grad_fn) { /* a leaf */
        int rc = accumulate_leaf(root, g0);
        if (rc == 0 && root->post_acc_hook) rc = root->post_acc_hook(root, 1, root->post_acc_user);
        return rc;
    }
    if (root->grad_fn->released) {
        ct_free(g0);
        return ct_error(k_second_backward, root->grad_fn->name);
    }
    slots s = {0};
    int rc = collect_graph(&s, root->grad_fn);
    if (rc == 0) rc = collect_leaf_hooks(&s);
    if (rc == 0) s.v[0].grad = g0; /* root's node has the highest seq among its ancestors */
    else ct_free(g0);
    for (int idx = 0; idx < s.n && rc == 0; idx++)
        if (s.v[idx].grad) rc = run_node(&s, &s.v[idx]); /* else no gradient reached it */
    for (int i = 0; i < s.n; i++) {
        ct_free(s.v[i].grad);
        if (!retain_graph) release_graph(s.v[i].node);
    }
    for (int i = 0; i < s.n; i++) ct_node_release(s.v[i].node);
    free(s.v);
    free(s.keys);
    free(s.idx);
    free(s.lkeys);
    free(s.lleft);
    free(s.lgot);
    return rc;
}

int ct_backward(ct_tensor *root, const ct_tensor *grad_output, int retain_graph) {
    int scopes = ct__scope_suspend();
    ct_tensor *g0;
    int rc = root_gradient(root, grad_output, &g0);
    if (rc == 0) {
        int prev = ct_set_grad_enabled(0);
        int nested = t_in_backward;
        t_in_backward = 1;
        rc = backward_graph(root, g0, retain_graph);
        if (!nested) {
            t_in_backward = 0;
            rc = run_callbacks(rc);
        }
        ct_set_grad_enabled(prev);
    }
    ct__scope_resume(scopes);
    return rc;
}
