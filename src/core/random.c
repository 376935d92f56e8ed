/* Counter-based random numbers: element i of a draw is a pure function of
 * (seed, stream offset + i), so results never depend on the thread count. */
#include "parallel.h"
#include "random.h"
#include "tensor_impl.h"
#include "backend.h"

#include <math.h>
#include <stdatomic.h>

static uint64_t g_seed = 0x853c49e6748fea9bULL;
static atomic_uint_fast64_t g_offset;

void ct_manual_seed(uint64_t seed) {
    g_seed = seed;
    atomic_store(&g_offset, 0);
}
uint64_t ct_seed(void) { return g_seed; }

void ct_get_rng_state(uint64_t *seed, uint64_t *offset) {
    if (seed) *seed = g_seed;
    if (offset) *offset = atomic_load(&g_offset);
}
void ct_set_rng_state(uint64_t seed, uint64_t offset) {
    g_seed = seed;
    atomic_store(&g_offset, offset);
}

uint64_t ct_rng_reserve(uint64_t n) { return atomic_fetch_add(&g_offset, n); }

static inline uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t ct_rng_bits(uint64_t seed, uint64_t counter) {
    return mix(mix(seed + 0x9e3779b97f4a7c15ULL) ^ (counter * 0xd1b54a32d192ed03ULL));
}

double ct_rng_uniform(uint64_t seed, uint64_t counter) {
    return (double)(ct_rng_bits(seed, counter) >> 11) * (1.0 / 9007199254740992.0);
}

double ct_rng_normal(uint64_t seed, uint64_t counter) {
    double u1 = ct_rng_uniform(seed, 2 * counter), u2 = ct_rng_uniform(seed, 2 * counter + 1);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

typedef struct {
    void *p;
    ct_dtype dt;
    uint64_t seed, base;
    int normal;
} fill_ctx;

static void fill_range(void *vc, int64_t b, int64_t e) {
    fill_ctx *c = vc;
    for (int64_t i = b; i < e; i++) {
        double v = c->normal ? ct_rng_normal(c->seed, c->base + (uint64_t)i)
                             : ct_rng_uniform(c->seed, c->base + (uint64_t)i);
        if (c->dt == CT_FLOAT64) ((double *)c->p)[i] = v;
        else {
            float f = (float)v;
            if (!c->normal && f >= 1.0f) f = 0x1.fffffep-1f; /* keep [0,1) after rounding */
            ((float *)c->p)[i] = f;
        }
    }
}

static ct_tensor *random_tensor(const int64_t *shape, int ndim, ct_dtype dt, int normal) {
    if (dt != CT_FLOAT32 && dt != CT_FLOAT64)
        return ct_error_null("%s: dtype %s not supported; use float32 or float64",
                             normal ? "randn" : "rand", ct_dtype_name(dt));
    ct_tensor *t = ct_empty(shape, ndim, dt);
    if (!t) return NULL;
    int64_t n = ct_numel(t);
    fill_ctx c = {ct_ptr(t), dt, g_seed, ct_rng_reserve((uint64_t)n), normal};
    ct_parallel_for(n, 4096, fill_range, &c);
    return t;
}

ct_tensor *ct_rand(const int64_t *shape, int ndim, ct_dtype dt) {
    return random_tensor(shape, ndim, dt, 0);
}
ct_tensor *ct_randn(const int64_t *shape, int ndim, ct_dtype dt) {
    return random_tensor(shape, ndim, dt, 1);
}
