/* Fused optimizer steps over lists of tensors (multi-tensor apply): the host packs up to
 * MT_TENSORS tensors and MT_BLOCKS chunks of MT_CHUNK elements into one kernel argument;
 * each block updates one chunk of one tensor. A whole model's parameters take a handful
 * of launches instead of several kernels per parameter. Math in the parameter's dtype,
 * torch.optim's formulas (the kernel table's sgd_step / adam_step, src/core/backend.h). */
#include "cuda_common.cuh"

#define MT_TENSORS 24
#define MT_BLOCKS 256
#define MT_CHUNK 65536

template <int NPTR>
struct MTList {
    void *ptr[NPTR][MT_TENSORS];
    int64_t numel[MT_TENSORS];
    unsigned char tensor[MT_BLOCKS];
    int chunk[MT_BLOCKS];
};

struct SgdArgs {
    double lr, momentum, dampening, wd;
    int nesterov, maximize, first;
};

template <typename T>
__global__ void k_sgd(MTList<3> l, SgdArgs a) {
    const int t = l.tensor[blockIdx.x];
    const int64_t n = l.numel[t];
    const int64_t i0 = (int64_t)l.chunk[blockIdx.x] * MT_CHUNK;
    const int64_t i1 = i0 + MT_CHUNK < n ? i0 + MT_CHUNK : n;
    T *p = (T *)l.ptr[0][t];
    const T *gr = (const T *)l.ptr[1][t];
    T *buf = (T *)l.ptr[2][t];
    const T lr = (T)a.lr, mom = (T)a.momentum, damp = (T)a.dampening, wd = (T)a.wd;
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        T g = a.maximize ? -gr[i] : gr[i];
        const T pv = p[i];
        if (wd != 0) g += wd * pv;
        if (mom != 0) {
            T b = a.first ? g : mom * buf[i] + ((T)1 - damp) * g;
            buf[i] = b;
            g = a.nesterov ? g + mom * b : b;
        }
        p[i] = pv - lr * g;
    }
}

struct AdamArgs {
    double lr, beta1, beta2, eps, wd, bc1, bc2;
    int decoupled, amsgrad, maximize;
};

template <typename T>
__global__ void k_adam(MTList<5> l, AdamArgs a) {
    const int t = l.tensor[blockIdx.x];
    const int64_t n = l.numel[t];
    const int64_t i0 = (int64_t)l.chunk[blockIdx.x] * MT_CHUNK;
    const int64_t i1 = i0 + MT_CHUNK < n ? i0 + MT_CHUNK : n;
    T *p = (T *)l.ptr[0][t];
    const T *gr = (const T *)l.ptr[1][t];
    T *m = (T *)l.ptr[2][t];
    T *v = (T *)l.ptr[3][t];
    T *vmax = (T *)l.ptr[4][t];
    const T lr = (T)a.lr, b1 = (T)a.beta1, b2 = (T)a.beta2, eps = (T)a.eps, wd = (T)a.wd;
    const T step_size = (T)(a.lr / a.bc1), bc2_sqrt = (T)sqrt(a.bc2);
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        T g = a.maximize ? -gr[i] : gr[i], pv = p[i];
        if (wd != 0) {
            if (a.decoupled) pv = pv * ((T)1 - lr * wd);
            else g = g + wd * pv;
        }
        const T mi = b1 * m[i] + ((T)1 - b1) * g;
        const T vi = b2 * v[i] + ((T)1 - b2) * g * g;
        m[i] = mi;
        v[i] = vi;
        T vu = vi;
        if (a.amsgrad) { /* torch.maximum: a NaN wins */
            T mx = vmax[i] > vi ? vmax[i] : vi;
            if (vi != vi) mx = vi;
            vmax[i] = mx;
            vu = mx;
        }
        const T denom = cu_sqrt(vu) / bc2_sqrt + eps;
        p[i] = pv - step_size * mi / denom;
    }
}

/* Packs tensors into MTList launches; `launch` is called for each full (or final) list. */
template <int NPTR, typename Launch>
static int multi_tensor(int n, void *const *const *lists, const int64_t *numel, Launch launch) {
    MTList<NPTR> l;
    int nt = 0, nb = 0;
    for (int t = 0; t < n; t++) {
        if (numel[t] <= 0) continue;
        for (int k = 0; k < NPTR; k++) l.ptr[k][nt] = lists[k] ? lists[k][t] : NULL;
        l.numel[nt] = numel[t];
        const int64_t chunks = (numel[t] + MT_CHUNK - 1) / MT_CHUNK;
        for (int64_t ch = 0; ch < chunks; ch++) {
            l.tensor[nb] = (unsigned char)nt;
            l.chunk[nb] = (int)ch;
            nb++;
            const bool last_chunk = ch == chunks - 1;
            if (nb == MT_BLOCKS || (last_chunk && nt + 1 == MT_TENSORS)) {
                int rc = launch(l, nb);
                if (rc) return rc;
                nb = 0;
                if (last_chunk) {
                    nt = -1; /* incremented below */
                } else {  /* the rest of this tensor continues in slot 0 of a new list */
                    for (int k = 0; k < NPTR; k++) l.ptr[k][0] = l.ptr[k][nt];
                    l.numel[0] = l.numel[nt];
                    nt = 0;
                }
            }
        }
        nt++;
    }
    if (nb > 0) return launch(l, nb);
    return 0;
}

extern "C" int cuk_sgd(const cuk_ctx *c, int dt, int n, void *const *params,
                       const void *const *grads, void *const *bufs, const int64_t *numel,
                       double lr, double momentum, double dampening, double weight_decay,
                       int nesterov, int maximize, int first_step) {
    SgdArgs a = {lr, momentum, dampening, weight_decay, nesterov, maximize, first_step};
    void *const *lists[3] = {params, (void *const *)grads, momentum != 0 ? bufs : NULL};
    auto launch = [&](const MTList<3> &l, int nb) -> int {
        if (dt == CT_FLOAT32) CUK_LAUNCH(nb, CUK_THREADS, 0, c->stream, k_sgd<float>)(l, a);
        else CUK_LAUNCH(nb, CUK_THREADS, 0, c->stream, k_sgd<double>)(l, a);
        return cuk_status();
    };
    if (dt != CT_FLOAT32 && dt != CT_FLOAT64) return (int)cudaErrorInvalidValue;
    return multi_tensor<3>(n, lists, numel, launch);
}

extern "C" int cuk_adam(const cuk_ctx *c, int dt, int n, void *const *params,
                        const void *const *grads, void *const *exp_avg, void *const *exp_avg_sq,
                        void *const *max_exp_avg_sq, const int64_t *numel, double lr,
                        double beta1, double beta2, double eps, double weight_decay,
                        int decoupled, int amsgrad, int maximize, double bias_correction1,
                        double bias_correction2) {
    AdamArgs a = {lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2,
                  decoupled, amsgrad, maximize};
    void *const *lists[5] = {params, (void *const *)grads, exp_avg, exp_avg_sq,
                             amsgrad ? max_exp_avg_sq : NULL};
    auto launch = [&](const MTList<5> &l, int nb) -> int {
        if (dt == CT_FLOAT32) CUK_LAUNCH(nb, CUK_THREADS, 0, c->stream, k_adam<float>)(l, a);
        else CUK_LAUNCH(nb, CUK_THREADS, 0, c->stream, k_adam<double>)(l, a);
        return cuk_status();
    };
    if (dt != CT_FLOAT32 && dt != CT_FLOAT64) return (int)cudaErrorInvalidValue;
    return multi_tensor<5>(n, lists, numel, launch);
}

/* GradScaler's unscale (the kernel table's amp_unscale; torch's
 * _amp_foreach_non_finite_check_and_unscale_): g *= inv_scale in the gradient's precision
 * (float for float16/bfloat16, converted bit-identically to src/core/half.h) over a list of
 * tensors, and found_inf = 1 when any element was inf or NaN. Every thread that meets one
 * stores the same 1.0f, so the order of the stores does not matter. */
struct AmpF32 {
    typedef float S;
    typedef float M;
    static __device__ __forceinline__ M load(S v) { return v; }
    static __device__ __forceinline__ S store(M v) { return v; }
};
struct AmpF64 {
    typedef double S;
    typedef double M;
    static __device__ __forceinline__ M load(S v) { return v; }
    static __device__ __forceinline__ S store(M v) { return v; }
};
struct AmpF16 {
    typedef uint16_t S;
    typedef float M;
    static __device__ __forceinline__ M load(S v) { return ct_f16_to_f32(v); }
    static __device__ __forceinline__ S store(M v) { return ct_f32_to_f16(v); }
};
struct AmpBF16 {
    typedef uint16_t S;
    typedef float M;
    static __device__ __forceinline__ M load(S v) { return ct_bf16_to_f32(v); }
    static __device__ __forceinline__ S store(M v) { return ct_f32_to_bf16(v); }
};

template <typename A>
__global__ void k_amp_unscale(MTList<1> l, float *found_inf, float inv_scale) {
    typedef typename A::M M;
    const int t = l.tensor[blockIdx.x];
    const int64_t n = l.numel[t];
    const int64_t i0 = (int64_t)l.chunk[blockIdx.x] * MT_CHUNK;
    const int64_t i1 = i0 + MT_CHUNK < n ? i0 + MT_CHUNK : n;
    typename A::S *g = (typename A::S *)l.ptr[0][t];
    const M inv = (M)inv_scale;
    bool bad = false;
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        const M v = A::load(g[i]);
        bad |= !(v - v == v - v); /* inf - inf and NaN - NaN are NaN */
        if (inv_scale != 1.0f) g[i] = A::store(v * inv);
    }
    if (bad) *found_inf = 1.0f;
}

extern "C" int cuk_amp_unscale(const cuk_ctx *c, int dt, int n, void *const *grads,
                               const int64_t *numel, float *found_inf, double inv_scale) {
    void *const *lists[1] = {grads};
    const float inv = (float)inv_scale;
    auto launch = [&](const MTList<1> &l, int nb) -> int {
#define AMP_LAUNCH(A) CUK_LAUNCH(nb, CUK_THREADS, 0, c->stream, k_amp_unscale<A>)(l, found_inf, inv)
        switch (dt) {
        case CT_FLOAT32: AMP_LAUNCH(AmpF32); break;
        case CT_FLOAT64: AMP_LAUNCH(AmpF64); break;
        case CT_FLOAT16: AMP_LAUNCH(AmpF16); break;
        default: AMP_LAUNCH(AmpBF16); break;
        }
#undef AMP_LAUNCH
        return cuk_status();
    };
    if (dt != CT_FLOAT32 && dt != CT_FLOAT64 && dt != CT_FLOAT16 && dt != CT_BFLOAT16)
        return (int)cudaErrorInvalidValue;
    return multi_tensor<1>(n, lists, numel, launch);
}
