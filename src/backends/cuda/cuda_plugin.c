/* The CUDA plugin's entry point: diagnoses whether CUDA can be used on this machine,
 * loads cuBLAS and cuDNN, initialises devices, and returns the "cuda" ct_backend.
 *
 * ct_cuda_plugin_init checks, in order, and stops at the first missing piece with a
 * reason that names it and says how to fix it:
 *   1. ctorch's ct_error is reachable in the process (the plugin links nothing of ctorch);
 *   2. the NVIDIA driver: libcuda.so.1 can be opened (driver not loaded otherwise);
 *      cuDriverGetVersion >= the CUDA runtime this plugin was built with (driver too old);
 *      cuInit succeeds and cuDeviceGetCount > 0 (no device, stub library, mismatch...);
 *   3. the GPU's compute capability is covered by the SASS/PTX compiled in (GPU
 *      architecture not in the build);
 *   4. cuBLAS (libcublas.so.<major>) and cuDNN (libcudnn.so.<major>, >= 9.0) load and
 *      provide every function used (cuBLAS / cuDNN missing);
 *   5. the CUDA runtime sees the device and device 0 initialises: a kernel of this build
 *      loads (architecture again, authoritative), stream, cuBLAS and cuDNN handles.
 * On a machine without a driver, step 2 fails after one failed dlopen: a few ms. */
#include "cuda_host.h"

#include <cuda.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef CT_CUDA_SASS
#define CT_CUDA_SASS 80, 90
#endif
#ifndef CT_CUDA_PTX
#define CT_CUDA_PTX 90
#endif

#define CU_STR(x) #x
#define CU_XSTR(x) CU_STR(x)

cu_blas_api cu_blas;
cu_dnn_api cu_dnn;
int cu_tf32, cu_deterministic, cu_benchmark = 1, cu_sync_checks;
int cu_ndev;

static cu_dev g_dev[CU_MAX_DEVICES];
static pthread_mutex_t g_dev_mu = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local int tl_current = -1;

/* ------------------------------------------------------------------- errors */
typedef int (*ct_error_fn)(const char *fmt, ...);
static ct_error_fn g_ct_error;

static int report(const char *msg) {
    if (g_ct_error) g_ct_error("%s", msg);
    else fprintf(stderr, "ctorch cuda: %s\n", msg);
    return -1;
}

int cu_error(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return report(buf);
}

void *cu_error_null(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    report(buf);
    return NULL;
}

int cu_fail(int status, const char *op) {
    if (status == 0) return 0;
    if (status == CUK_ENOMEM) return -1; /* the allocator has set the message */
    cudaError_t e = (cudaError_t)status;
    const char *hint = "";
    switch (e) {
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorInvalidDeviceFunction:
        hint = " (this GPU's architecture is not compiled into libctorch_cuda.so: rebuild with "
               "`make cuda CUDA_ARCHS=\"<its sm number>\"`)";
        break;
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorAssert:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
        hint = " (a kernel failed; the CUDA context is now unusable and the process must be "
               "restarted; rerun with CUDA_LAUNCH_BLOCKING=1 to find the kernel)";
        break;
    case cudaErrorMemoryAllocation:
        hint = " (out of GPU memory: reduce the batch size)";
        break;
    case cudaErrorInvalidConfiguration:
        hint = " (a tensor dimension is too large for this kernel's launch configuration)";
        break;
    default: break;
    }
    return cu_error("%s: CUDA error %d (%s): %s%s", op, (int)e, cudaGetErrorName(e),
                    cudaGetErrorString(e), hint);
}

const char *cu_blas_str(cublasStatus_t s) {
    return cu_blas.cublasGetStatusString ? cu_blas.cublasGetStatusString(s) : "cuBLAS error";
}

const char *cu_dnn_str(cudnnStatus_t s) {
    return cu_dnn.cudnnGetErrorString ? cu_dnn.cudnnGetErrorString(s) : "cuDNN error";
}

/* ------------------------------------------------------------------ tensors */
size_t cu_dsize(ct_dtype dt) {
    switch (dt) {
    case CT_FLOAT32: case CT_INT32: return 4;
    case CT_FLOAT64: case CT_INT64: return 8;
    case CT_BFLOAT16: case CT_FLOAT16: return 2;
    case CT_UINT8: case CT_BOOL: return 1;
    default: return 1;
    }
}

const char *cu_dtype_name(ct_dtype dt) {
    static const char *names[] = {"float32", "float64", "int64", "int32",
                                  "uint8", "bfloat16", "float16", "bool"};
    _Static_assert(sizeof names / sizeof names[0] == CT_NUM_DTYPES, "one name per ct_dtype");
    return (unsigned)dt < sizeof names / sizeof names[0] ? names[dt] : "unknown";
}

int64_t cu_numel(const ct_tensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

int cu_is_contiguous(const ct_tensor *t) {
    int64_t expect = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] == 1) continue;
        if (t->stride[d] != expect) return 0;
        expect *= t->shape[d];
    }
    return 1;
}

const char *cu_fmt_bytes(size_t n, char *buf, size_t len) {
    if (n >= ((size_t)1 << 30)) snprintf(buf, len, "%.2f GiB", (double)n / (1 << 30));
    else if (n >= ((size_t)1 << 20)) snprintf(buf, len, "%.1f MiB", (double)n / (1 << 20));
    else if (n >= 1024) snprintf(buf, len, "%.1f KiB", (double)n / 1024);
    else snprintf(buf, len, "%zu bytes", n);
    return buf;
}

/* ------------------------------------------------------------- architectures */
static const int g_sass[] = {CT_CUDA_SASS};

static void arch_list(char *buf, size_t n) {
    size_t o = 0;
    buf[0] = 0;
    for (size_t i = 0; i < sizeof g_sass / sizeof g_sass[0] && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%ssm_%d", i ? ", " : "", g_sass[i]);
    if (o < n) snprintf(buf + o, n - o, " and PTX compute_%d", CT_CUDA_PTX);
}

/* SASS for sm_XY runs on compute capability X.Z with Z >= Y; PTX is JIT-compiled for any
 * capability >= its own. */
static int arch_supported(int major, int minor) {
    for (size_t i = 0; i < sizeof g_sass / sizeof g_sass[0]; i++)
        if (g_sass[i] / 10 == major && g_sass[i] % 10 <= minor) return 1;
    return major * 10 + minor >= CT_CUDA_PTX;
}

static void arch_reason(char *r, size_t n, int dev, const char *name, int major, int minor) {
    char archs[128];
    arch_list(archs, sizeof archs);
    snprintf(r, n,
             "GPU architecture not in the build: cuda:%d (%s) has compute capability %d.%d, "
             "but libctorch_cuda.so contains code for %s only. Fix: rebuild the plugin for "
             "it with `make cuda CUDA_ARCHS=\"%d%d %s\"` (CUDA 13 supports compute "
             "capability 7.5 and newer; older GPUs need a CUDA 12 toolkit)",
             dev, name, major, minor, archs, major, minor, "80 90");
}

/* ------------------------------------------------------------------- driver */
typedef struct {
    __typeof__(&cuInit) init;
    __typeof__(&cuDriverGetVersion) version;
    __typeof__(&cuDeviceGetCount) count;
    __typeof__(&cuDeviceGet) get;
    __typeof__(&cuDeviceGetAttribute) attr;
    __typeof__(&cuDeviceGetName) name;
    __typeof__(&cuGetErrorName) err_name;
} cu_driver_api;

static const char *runtime_driver_branch(int cuda_major) {
    switch (cuda_major) {
    case 13: return "R580";
    case 12: return "R525";
    case 11: return "R450";
    default: return "a recent driver";
    }
}

/* Opens the driver and resolves its entry points into d; -1 with the reason in r. */
static int open_driver(cu_driver_api *d, char *r, size_t n) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        snprintf(r, n,
                 "NVIDIA driver not loaded: libcuda.so.1, the driver's user-space library, "
                 "cannot be opened (%s). Fix: install the NVIDIA driver (%s or newer for "
                 "this CUDA %d.%d build) and check that `nvidia-smi` lists the GPU; in a "
                 "container, start it with the NVIDIA Container Toolkit (docker run --gpus "
                 "all). Meanwhile use --device cpu",
                 e ? e : "not found", runtime_driver_branch(CUDART_VERSION / 1000),
                 CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10);
        return -1;
    }
    /* The handle stays open for the life of the process (the runtime uses the driver). */
    memset(d, 0, sizeof *d);
    *(void **)&d->init = dlsym(h, CU_XSTR(cuInit));
    *(void **)&d->version = dlsym(h, CU_XSTR(cuDriverGetVersion));
    *(void **)&d->count = dlsym(h, CU_XSTR(cuDeviceGetCount));
    *(void **)&d->get = dlsym(h, CU_XSTR(cuDeviceGet));
    *(void **)&d->attr = dlsym(h, CU_XSTR(cuDeviceGetAttribute));
    *(void **)&d->name = dlsym(h, CU_XSTR(cuDeviceGetName));
    *(void **)&d->err_name = dlsym(h, CU_XSTR(cuGetErrorName));
    if (!d->init || !d->version || !d->count || !d->get || !d->attr || !d->name) {
        snprintf(r, n,
                 "NVIDIA driver too old or damaged: libcuda.so.1 lacks basic driver API "
                 "functions. Fix: reinstall or upgrade the NVIDIA driver (%s or newer)",
                 runtime_driver_branch(CUDART_VERSION / 1000));
        return -1;
    }
    return 0;
}

/* The reason and fix for a failed cuInit. */
static void init_failure(const cu_driver_api *d, CUresult e, char *r, size_t n) {
    const char *en = NULL;
    if (d->err_name) d->err_name(e, &en);
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    switch (e) {
    case CUDA_ERROR_NO_DEVICE:
        snprintf(r, n,
                 "no CUDA device: the NVIDIA driver is installed but reports no GPU "
                 "(cuInit: CUDA_ERROR_NO_DEVICE; CUDA_VISIBLE_DEVICES=%s). Fix: check "
                 "`nvidia-smi`; in a container pass the GPU in (docker run --gpus all); "
                 "unset or correct CUDA_VISIBLE_DEVICES",
                 vis ? vis : "(unset)");
        break;
    case CUDA_ERROR_STUB_LIBRARY:
        snprintf(r, n,
                 "NVIDIA driver not loaded: the libcuda.so.1 found is the CUDA toolkit's "
                 "stub library, not the driver. Fix: install the NVIDIA driver, and remove "
                 "the toolkit's lib64/stubs directory from LD_LIBRARY_PATH");
        break;
    case CUDA_ERROR_SYSTEM_DRIVER_MISMATCH:
        snprintf(r, n,
                 "NVIDIA driver not loaded consistently: the user-space driver "
                 "(libcuda.so.1) and the kernel module have different versions (cuInit: "
                 "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH). Fix: reboot after the driver "
                 "update, or reload the nvidia kernel module");
        break;
    case CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE:
        snprintf(r, n,
                 "NVIDIA driver older than the CUDA runtime needs: the CUDA forward-"
                 "compatibility package in use does not support this GPU (cuInit: "
                 "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE). Fix: upgrade the system "
                 "driver to %s or newer",
                 runtime_driver_branch(CUDART_VERSION / 1000));
        break;
    default:
        snprintf(r, n,
                 "NVIDIA driver not loaded: cuInit failed with %s (%d). Fix: check "
                 "`nvidia-smi` and that the nvidia kernel module is loaded "
                 "(`lsmod | grep nvidia`, `sudo modprobe nvidia`); reinstall the driver "
                 "if that fails",
                 en ? en : "an error", (int)e);
    }
}

/* cuDriverGetVersion's answer (1000 * major + 10 * minor), kept for the `versions` entry
 * point; 0 when unknown. */
static int g_driver_version;

/* The driver: present, new enough, initialised, with a device whose architecture this
 * build has kernels for (device 0); -1 with the reason and the fix in r. */
static int check_driver(char *r, size_t n) {
    cu_driver_api d;
    if (open_driver(&d, r, n) != 0) return -1;
    int drv = 0;
    if (d.version(&drv) != CUDA_SUCCESS) drv = 0;
    g_driver_version = drv;
    if (drv / 1000 < CUDART_VERSION / 1000) {
        snprintf(r, n,
                 "NVIDIA driver older than the CUDA runtime needs: the installed driver "
                 "supports CUDA %d.%d, but libctorch_cuda.so was built with CUDA %d.%d, which "
                 "needs a CUDA %d.x driver (%s or newer). Fix: upgrade the NVIDIA driver, or "
                 "rebuild the plugin with a CUDA toolkit no newer than %d.x (put its nvcc "
                 "first in PATH and run `make cuda`)",
                 drv / 1000, drv % 1000 / 10, CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10,
                 CUDART_VERSION / 1000, runtime_driver_branch(CUDART_VERSION / 1000),
                 drv / 1000);
        return -1;
    }
    CUresult e = d.init(0);
    if (e != CUDA_SUCCESS) {
        init_failure(&d, e, r, n);
        return -1;
    }
    int count = 0;
    if (d.count(&count) != CUDA_SUCCESS || count <= 0) {
        const char *vis = getenv("CUDA_VISIBLE_DEVICES");
        snprintf(r, n,
                 "no CUDA device: the driver is loaded but sees no GPU "
                 "(CUDA_VISIBLE_DEVICES=%s). Fix: check `nvidia-smi`; pass the GPU into the "
                 "container; correct CUDA_VISIBLE_DEVICES",
                 vis ? vis : "(unset)");
        return -1;
    }
    CUdevice dev0;
    int major = 0, minor = 0;
    char name[256] = "unknown GPU";
    if (d.get(&dev0, 0) == CUDA_SUCCESS) {
        d.attr(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev0);
        d.attr(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev0);
        d.name(name, sizeof name, dev0);
        if (!arch_supported(major, minor)) {
            arch_reason(r, n, 0, name, major, minor);
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------- cuBLAS, cuDNN */
/* $ENV (a full path) when set, else the soname through the loader (LD_LIBRARY_PATH,
 * ldconfig, this plugin's RUNPATH: its own directory and the build's CUDA lib dir), else
 * $CUDA_HOME/lib64 or /usr/local/cuda/lib64. Also opens NCCL (cuda_nccl.c). */
void *cu_open_lib(const char *soname, const char *env) {
    const char *path = getenv(env);
    if (path && *path) return dlopen(path, RTLD_NOW | RTLD_LOCAL);
    void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        char buf[512];
        const char *home = getenv("CUDA_HOME");
        snprintf(buf, sizeof buf, "%s/lib64/%s", home && *home ? home : "/usr/local/cuda", soname);
        h = dlopen(buf, RTLD_NOW | RTLD_LOCAL);
        if (!h) dlopen(soname, RTLD_NOW | RTLD_LOCAL); /* restore the first dlerror() */
    }
    return h;
}

static int load_blas(char *r, size_t n) {
    const char *so = "libcublas.so." CU_XSTR(CUBLAS_VER_MAJOR);
    const char *shown = getenv("CTORCH_CUBLAS_LIBRARY");
    if (!shown || !*shown) shown = so;
    void *h = cu_open_lib(so, "CTORCH_CUBLAS_LIBRARY");
    if (!h) {
        const char *e = dlerror();
        snprintf(r, n,
                 "cuBLAS missing: %s cannot be opened (%s). Fix: install the CUDA %d math "
                 "libraries (e.g. `apt install libcublas-%d-0`, or `pip install "
                 "nvidia-cublas` and add its lib directory to LD_LIBRARY_PATH), or set "
                 "CTORCH_CUBLAS_LIBRARY to the library's path",
                 shown, e ? e : "not found", CUBLAS_VER_MAJOR, CUBLAS_VER_MAJOR);
        return -1;
    }
    const char *missing = NULL;
#define CU_LOAD_BLAS(fn)                                                                   \
    if (!(*(void **)&cu_blas.fn = dlsym(h, CU_XSTR(fn))) && !missing) missing = CU_XSTR(fn);
    CU_BLAS_FUNCS(CU_LOAD_BLAS)
#undef CU_LOAD_BLAS
    if (missing) {
        snprintf(r, n,
                 "cuBLAS missing a function: %s lacks %s (an older cuBLAS?). Fix: install the "
                 "cuBLAS that comes with CUDA %d",
                 shown, missing, CUBLAS_VER_MAJOR);
        return -1;
    }
    return 0;
}

static int load_dnn(char *r, size_t n) {
    const char *so = "libcudnn.so." CU_XSTR(CUDNN_MAJOR);
    const char *shown = getenv("CTORCH_CUDNN_LIBRARY");
    if (!shown || !*shown) shown = so;
    void *h = cu_open_lib(so, "CTORCH_CUDNN_LIBRARY");
    if (!h) {
        const char *e = dlerror();
        snprintf(r, n,
                 "cuDNN missing: %s cannot be opened (%s). Fix: install cuDNN %d for CUDA %d "
                 "(e.g. `apt install libcudnn%d-cuda-%d`, or `pip install nvidia-cudnn-cu%d` "
                 "and add its lib directory to LD_LIBRARY_PATH), or set "
                 "CTORCH_CUDNN_LIBRARY to the library's path",
                 shown, e ? e : "not found", CUDNN_MAJOR, CUDART_VERSION / 1000, CUDNN_MAJOR,
                 CUDART_VERSION / 1000, CUDART_VERSION / 1000);
        return -1;
    }
    const char *missing = NULL;
#define CU_LOAD_DNN(fn)                                                                    \
    if (!(*(void **)&cu_dnn.fn = dlsym(h, CU_XSTR(fn))) && !missing) missing = CU_XSTR(fn);
    CU_DNN_FUNCS(CU_LOAD_DNN)
#undef CU_LOAD_DNN
    if (missing) {
        snprintf(r, n, "cuDNN missing a function: %s lacks %s. Fix: install cuDNN %d.x", shown,
                 missing, CUDNN_MAJOR);
        return -1;
    }
    size_t v = cu_dnn.cudnnGetVersion();
    if (v < 90000) {
        snprintf(r, n,
                 "cuDNN too old: version %zu.%zu.%zu is loaded, ctorch needs cuDNN 9 or newer. "
                 "Fix: install cuDNN 9 for CUDA %d",
                 v / 10000, v % 10000 / 100, v % 100, CUDART_VERSION / 1000);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ devices */
static int init_device(cu_dev *d, int index) {
    char *r = d->why;
    const size_t n = sizeof d->why;
    d->index = index;
    cudaError_t e = cudaSetDevice(index);
    struct cudaDeviceProp prop;
    if (e == cudaSuccess) e = cudaGetDeviceProperties(&prop, index);
    if (e != cudaSuccess) {
        snprintf(r, n, "cuda:%d cannot be initialised: %s", index, cudaGetErrorString(e));
        return -1;
    }
    snprintf(d->name, sizeof d->name, "%s", prop.name);
    d->cc_major = prop.major;
    d->cc_minor = prop.minor;
    d->total_mem = prop.totalGlobalMem;
    if (!arch_supported(prop.major, prop.minor)) {
        arch_reason(r, n, index, prop.name, prop.major, prop.minor);
        return -1;
    }
    e = (cudaError_t)cuk_probe();
    if (e == cudaErrorNoKernelImageForDevice || e == cudaErrorInvalidDeviceFunction) {
        arch_reason(r, n, index, prop.name, prop.major, prop.minor);
        return -1;
    }
    if (e == cudaErrorUnsupportedPtxVersion || e == cudaErrorInvalidPtx) {
        snprintf(r, n,
                 "NVIDIA driver older than the CUDA runtime needs: it cannot compile this "
                 "build's PTX for cuda:%d (%s, compute capability %d.%d): %s. Fix: upgrade "
                 "the driver, or rebuild with this GPU's architecture in CUDA_ARCHS",
                 index, prop.name, prop.major, prop.minor, cudaGetErrorString(e));
        return -1;
    }
    if (e != cudaSuccess) {
        snprintf(r, n, "cuda:%d (%s) cannot load this build's kernels: %s", index, prop.name,
                 cudaGetErrorString(e));
        return -1;
    }
    pthread_mutex_init(&d->lib_mu, NULL);
    pthread_mutex_init(&d->mem_mu, NULL);
    pthread_mutex_init(&d->stage_mu, NULL);
    d->k.device = index;
    d->k.sm_count = prop.multiProcessorCount;
    d->k.ws_alloc = cu_malloc;
    d->k.ws_free = cu_free;
    e = cudaStreamCreateWithFlags(&d->k.stream, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaMalloc((void **)&d->k.flag, 4 * sizeof(long long));
    /* on the device's stream: a non-blocking stream does not wait for the legacy one */
    if (e == cudaSuccess)
        e = cudaMemsetAsync(d->k.flag, 0, 4 * sizeof(long long), d->k.stream);
    if (e == cudaSuccess) e = cudaMallocHost((void **)&d->flag_host, 4 * sizeof(long long));
    if (e != cudaSuccess) {
        snprintf(r, n, "cuda:%d (%s): creating a stream failed: %s", index, prop.name,
                 cudaGetErrorString(e));
        return -1;
    }
    cublasStatus_t bs = cu_blas.cublasCreate(&d->blas);
    if (bs == CUBLAS_STATUS_SUCCESS) bs = cu_blas.cublasSetStream(d->blas, d->k.stream);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        snprintf(r, n, "cuda:%d (%s): cuBLAS cannot be initialised: %s", index, prop.name,
                 cu_blas_str(bs));
        return -1;
    }
    /* A workspace of our own (stream-ordered, from the caching allocator): cuBLAS would
     * otherwise cudaMalloc one per stream. 32 MiB is NVIDIA's advice for Hopper. */
    const size_t blas_ws = (size_t)32 << 20;
    d->blas_ws = cu_malloc_dev(d, blas_ws);
    if (d->blas_ws) cu_blas.cublasSetWorkspace(d->blas, d->blas_ws, blas_ws);
    cudnnStatus_t ds = cu_dnn.cudnnCreate(&d->dnn);
    if (ds == CUDNN_STATUS_SUCCESS) ds = cu_dnn.cudnnSetStream(d->dnn, d->k.stream);
    if (ds != CUDNN_STATUS_SUCCESS) {
        snprintf(r, n,
                 "cuDNN missing or incomplete: cudnnCreate on cuda:%d failed: %s. Fix: "
                 "reinstall cuDNN %d for CUDA %d (all of its libcudnn_*.so.%d libraries)",
                 index, cu_dnn_str(ds), CUDNN_MAJOR, CUDART_VERSION / 1000, CUDNN_MAJOR);
        return -1;
    }
    return 0;
}

cu_dev *cu_device(int index) {
    if (index < 0 || index >= cu_ndev)
        return cu_error_null("cuda:%d: no such device (%d visible; indices start at 0)", index,
                             cu_ndev);
    cu_dev *d = &g_dev[index];
    if (__atomic_load_n(&d->ready, __ATOMIC_ACQUIRE) != 1) {
        pthread_mutex_lock(&g_dev_mu);
        if (d->ready == 0)
            __atomic_store_n(&d->ready, init_device(d, index) == 0 ? 1 : -1, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&g_dev_mu);
        if (d->ready != 1) return cu_error_null("%s", d->why);
        tl_current = -1;
    }
    if (tl_current != index) {
        cudaError_t e = cudaSetDevice(index);
        if (e != cudaSuccess) return cu_error_null("cuda:%d: %s", index, cudaGetErrorString(e));
        tl_current = index;
    }
    return d;
}

cu_dev *cu_dev_of(const ct_tensor *t) { return cu_device(t->storage->device.index); }

/* ------------------------------------------------------------- exported API */
int ct_cuda_plugin_device_count(void) { return cu_ndev; }

int ct_cuda_plugin_device_describe(int device, char *buf, size_t n) {
    cu_dev *d = cu_device(device);
    if (!d) return -1;
    char mem[32];
    snprintf(buf, n, "%s (cc %d.%d, %d SMs, %s)", d->name, d->cc_major, d->cc_minor,
             d->k.sm_count, cu_fmt_bytes(d->total_mem, mem, sizeof mem));
    return 0;
}

/* The `versions` entry point (src/core/backend.h), for run manifests: the driver's CUDA
 * version, the runtime linked in (cudart is static: the toolkit this plugin was built with),
 * the cuDNN loaded (cudnnGetVersion: 10000 * major + 100 * minor + patch since cuDNN 9) and
 * the architectures compiled in, and NCCL's version when libnccl.so.2 loads (opened here if
 * no collective has opened it yet: ~2 ms, nothing initialised; empty when it is missing). */
static int cu_versions(ct_backend_versions *out) {
    memset(out, 0, sizeof *out);
    if (g_driver_version > 0)
        snprintf(out->driver, sizeof out->driver, "%d.%d", g_driver_version / 1000,
                 g_driver_version % 1000 / 10);
    snprintf(out->runtime, sizeof out->runtime, "%d.%d", CUDART_VERSION / 1000,
             CUDART_VERSION % 1000 / 10);
    if (cu_dnn.cudnnGetVersion) {
        size_t v = cu_dnn.cudnnGetVersion();
        snprintf(out->dnn, sizeof out->dnn, "%zu.%zu.%zu", v / 10000, v % 10000 / 100, v % 100);
    }
    arch_list(out->kernels, sizeof out->kernels);
    if (cu_nccl_version_quiet(out->collectives, sizeof out->collectives) != 0)
        out->collectives[0] = 0;
#ifdef CT_CUDA_EMU
    snprintf(out->kernels, sizeof out->kernels, "CPU emulator (tests/cuda_emu)");
#endif
    return 0;
}

int ct_cuda_synchronize(int device) {
    cu_dev *d = cu_device(device);
    return d ? cu_sync(d, "synchronize") : -1;
}

void ct_cuda_set_tf32(int enabled) { cu_tf32 = enabled != 0; }
int ct_cuda_get_tf32(void) { return cu_tf32; }
void ct_cuda_set_deterministic(int enabled) { cu_deterministic = enabled != 0; }
void ct_cuda_set_cudnn_benchmark(int enabled) { cu_benchmark = enabled != 0; }

/* ------------------------------------------------------------------ backend */
static void *be_alloc(size_t nbytes, int index) { return cu_malloc(nbytes, index); }
static void be_free(void *p, int index) { cu_free(p, index); }

/* The extra entry points (CT_BACKEND_PROCS) this backend provides. */
static const ct_backend_procs g_procs = {
    .device_count = ct_cuda_plugin_device_count,
    .versions = cu_versions,
    .device_describe = ct_cuda_plugin_device_describe,
    .synchronize = ct_cuda_synchronize,
    .host_alloc = ct_cuda_host_alloc,
    .host_free = ct_cuda_host_free,
    .event_create = ct_cuda_event_create,
    .event_destroy = ct_cuda_event_destroy,
    .event_record = ct_cuda_event_record,
    .event_query = ct_cuda_event_query,
    .event_synchronize = ct_cuda_event_synchronize,
    .stream_wait_event = ct_cuda_stream_wait_event,
    .copy_h2d_async_on = ct_cuda_copy_h2d_async_on,
};

/* The kernel table: cu_k_<name> for every row of CT_KERNEL_LIST (a missing one fails the
 * plugin's link, which uses -z defs). */
#define CT__CUDA_ENTRY(name, params) .name = cu_k_##name,
static ct_backend g_backend = {
    .name = "cuda",
    .type = CT_CUDA,
    .host_memory = 0,
    .alloc = be_alloc,
    .free = be_free,
    .memcpy = cu_memcpy,
    .procs = &g_procs,
    /* PyTorch's CUDA autocast runs these in float32 too */
    .autocast_fp32 = 1u << CT_AC_SOFTMAX | 1u << CT_AC_LOG_SOFTMAX | 1u << CT_AC_LAYER_NORM |
                     1u << CT_AC_SUM | 1u << CT_AC_EXP | 1u << CT_AC_LOG | 1u << CT_AC_POW,
    .fp16_emulated = 0,
    .k = {CT_KERNEL_LIST(CT__CUDA_ENTRY)},
};
#undef CT__CUDA_ENTRY

static int env_flag(const char *name, int dflt) {
    const char *v = getenv(name);
    if (!v || !*v) return dflt;
    return !(strcmp(v, "0") == 0 || strcmp(v, "false") == 0 || strcmp(v, "off") == 0);
}

static pthread_mutex_t g_init_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_init_state; /* 0 not run, 1 ok, -1 failed */
static char g_init_reason[768];

static int plugin_init(char *r, size_t n) {
    /* 1. ctorch's error function, wherever the process has it. */
    *(void **)&g_ct_error = dlsym(RTLD_DEFAULT, "ct_error");
    if (!g_ct_error) {
        void *core = dlopen("libctorch.so", RTLD_NOW | RTLD_NOLOAD);
        if (core) *(void **)&g_ct_error = dlsym(core, "ct_error");
    }
    if (!g_ct_error) {
        snprintf(r, n,
                 "the CUDA plugin cannot find ctorch's symbols in this process. Fix: link the "
                 "program with -rdynamic when it links libctorch.a, or against libctorch.so");
        return -1;
    }
    cu_tf32 = env_flag("CTORCH_TF32", 0);
    cu_deterministic = env_flag("CTORCH_DETERMINISTIC", 0);
    cu_benchmark = env_flag("CTORCH_CUDNN_BENCHMARK", 1);
    cu_sync_checks = env_flag("CTORCH_CUDA_SYNC", 0) || env_flag("CUDA_LAUNCH_BLOCKING", 0);

    /* 2-3. driver, device, architecture (device 0), through the driver API. */
    if (check_driver(r, n) != 0) return -1;

    /* 4. libraries. */
    if (load_blas(r, n) != 0 || load_dnn(r, n) != 0) return -1;

    /* 5. the CUDA runtime and device 0 (others on first use). */
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count <= 0) {
        snprintf(r, n, "no CUDA device usable by the CUDA runtime: %s. Fix: check `nvidia-smi`",
                 e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return -1;
    }
    cu_ndev = count < CU_MAX_DEVICES ? count : CU_MAX_DEVICES;
    cu_dev *d = &g_dev[0];
    pthread_mutex_lock(&g_dev_mu);
    int rc = init_device(d, 0);
    __atomic_store_n(&d->ready, rc == 0 ? 1 : -1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&g_dev_mu);
    if (rc != 0) {
        snprintf(r, n, "%s", d->why);
        return -1;
    }
    tl_current = -1;
    return 0;
}

long ct_cuda_plugin_abi(void) { return CT_BACKEND_ABI; }

const ct_backend *ct_cuda_plugin_init(char *reason, size_t n) {
    pthread_mutex_lock(&g_init_mu);
    if (g_init_state == 0)
        g_init_state = plugin_init(g_init_reason, sizeof g_init_reason) == 0 ? 1 : -1;
    int ok = g_init_state == 1;
    pthread_mutex_unlock(&g_init_mu);
    if (!ok) {
        if (reason && n) snprintf(reason, n, "%s", g_init_reason);
        return NULL;
    }
    return &g_backend;
}
