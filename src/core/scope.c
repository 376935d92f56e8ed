/* Scoped tensor lifetime (ct_scope_push / ct_keep / ct_scope_pop, include/ctorch.h).
 *
 * Each thread has a stack of scopes. A scope lists the tensors it holds references to:
 * every reference handed out while it is the innermost scope (a new tensor, ct_retain)
 * adds one to the tensor's scope_refs and lists the tensor once; ct_free first gives back
 * one of those; popping releases the rest. A tensor is held by at most one scope: a new
 * reference to a tensor another scope of this thread already holds is counted there (it
 * lives at least as long). Library code that keeps tensors uses ct__hold / ct__own
 * (tensor_impl.h) so that no scope ever releases them. */
#include "error.h"
#include "tensor_impl.h"

#include <stdint.h>
#include <stdlib.h>

#define SCOPE_MAGIC 0x73636f7065ULL

struct ct_scope {
    uint64_t magic;
    struct ct_scope *parent;
    ct_tensor **items; /* NULL where a tensor left */
    int n, cap;
};

static _Thread_local ct_scope *t_top;
static _Thread_local int t_suspended;

/* Whether s is on this thread's stack. */
static int on_stack(const ct_scope *s) {
    for (const ct_scope *c = t_top; c; c = c->parent)
        if (c == s) return 1;
    return 0;
}

static int scope_add(ct_scope *s, ct_tensor *t, int refs) {
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 64;
        ct_tensor **v = realloc(s->items, sizeof *v * (size_t)cap);
        if (!v) return -1;
        s->items = v;
        s->cap = cap;
    }
    t->scope = s;
    t->scope_refs = refs;
    t->scope_slot = s->n;
    s->items[s->n++] = t;
    return 0;
}

static void scope_remove(ct_tensor *t) {
    t->scope->items[t->scope_slot] = NULL;
    t->scope = NULL;
    t->scope_refs = 0;
}

/* Drops one reference without touching scopes. */
static void release(ct_tensor *t) { ct__unhold(t); }

ct_scope *ct_scope_push(void) {
    ct_scope *s = calloc(1, sizeof *s);
    if (!s) return ct_error_null("scope_push: out of memory");
    s->magic = SCOPE_MAGIC;
    s->parent = t_top;
    t_top = s;
    return s;
}

/* Releases what s holds and frees it (s must be the innermost scope). */
static void pop_one(ct_scope *s) {
    t_top = s->parent;
    for (int i = 0; i < s->n; i++) {
        ct_tensor *t = s->items[i];
        if (!t) continue;
        int k = t->scope_refs;
        t->scope = NULL;
        t->scope_refs = 0;
        while (k-- > 0) release(t);
    }
    free(s->items);
    s->magic = 0;
    free(s);
}

void ct_scope_pop(ct_scope *s) {
    if (!s) return;
    if (!on_stack(s) || s->magic != SCOPE_MAGIC) { /* on_stack first: s may be freed */
        ct_error("scope_pop: not a scope pushed on this thread, or already popped");
        return;
    }
    while (t_top != s) pop_one(t_top); /* the scopes pushed inside s first */
    pop_one(s);
}

void ct__scope_pop_at_exit(ct_scope **s) {
    if (s && *s && on_stack(*s)) ct_scope_pop(*s);
}

ct_tensor *ct_keep(ct_tensor *t) {
    if (!t || !t->scope || !on_stack(t->scope)) return t;
    ct_scope *s = t->scope, *dst = s->parent;
    int k = t->scope_refs;
    scope_remove(t);
    if (dst && scope_add(dst, t, k) == 0) return t;
    while (k-- > 1) release(t); /* the caller keeps one reference */
    return t;
}

ct_tensor *ct__own(ct_tensor *t) {
    if (!t || !t->scope || !on_stack(t->scope)) return t;
    int k = t->scope_refs;
    scope_remove(t);
    while (k-- > 1) release(t);
    return t;
}

void ct__scope_track(ct_tensor *t) {
    if (!t_top || t_suspended) return;
    if (t->scope) {
        if (on_stack(t->scope)) t->scope_refs++;
        return;
    }
    scope_add(t_top, t, 1); /* out of memory: the reference stays the caller's */
}

ct_tensor *ct__scope_adopt(ct_tensor *t) {
    if (t) ct__scope_track(t);
    return t;
}

int ct__scope_untrack(ct_tensor *t) {
    if (!t->scope || t->scope_refs <= 0 || !on_stack(t->scope)) return 0;
    if (--t->scope_refs == 0) scope_remove(t);
    return 1;
}

void ct__scope_forget(ct_tensor *t) {
    if (t->scope && on_stack(t->scope)) scope_remove(t);
}

int ct__scope_suspend(void) { return t_suspended++; }
void ct__scope_resume(int prev) { t_suspended = prev; }
