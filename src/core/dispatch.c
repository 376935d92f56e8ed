/* Backend registry. The CPU backend is built in; the CUDA backend is a plugin
 * (libctorch_cuda.so) loaded with dlopen at the first CUDA use, so neither the core
 * library nor the CLI ever links a CUDA library. */
#include "backend.h"
#include "error.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const ct_backend *g_backends[CT_NUM_DEVICE_TYPES] = {[CT_CPU] = &ct_cpu_backend};
static pthread_once_t g_cuda_once = PTHREAD_ONCE_INIT;
static char g_cuda_reason[768];
static void *g_cuda_plugin; /* dlopen handle of the plugin once CUDA is usable */

int ct_register_backend(const ct_backend *b) {
    if (!b || (unsigned)b->type >= CT_NUM_DEVICE_TYPES)
        return ct_error("register_backend: invalid backend");
    g_backends[b->type] = b;
    return 0;
}

/* Candidate paths of a plugin `file`: $<env>, next to the executable, next to
 * libctorch.so, then the loader's search path. On failure `why` says what dlopen said. */
void *ct__open_plugin(const char *file, const char *env_name, int mode, char *why, size_t n) {
    const char *env = getenv(env_name);
    char path[PATH_MAX];
    void *h = NULL;
    why[0] = 0;
    if (env && *env) {
        h = dlopen(env, mode);
        if (!h) snprintf(why, n, "%s", dlerror());
        return h;
    }
    ssize_t len = readlink("/proc/self/exe", path, sizeof path - 64);
    if (len > 0) {
        path[len] = 0;
        char *slash = strrchr(path, '/');
        if (slash && (size_t)(slash - path) + strlen(file) + 2 < sizeof path) {
            strcpy(slash + 1, file);
            h = dlopen(path, mode);
            if (h) return h;
            if (access(path, F_OK) == 0) {
                snprintf(why, n, "%s", dlerror());
                return NULL;
            }
        }
    }
    Dl_info info;
    if (dladdr((void *)ct_register_backend, &info) && info.dli_fname) {
        snprintf(path, sizeof path, "%s", info.dli_fname);
        char *slash = strrchr(path, '/');
        if (slash && (size_t)(slash - path) + strlen(file) + 2 < sizeof path) {
            strcpy(slash + 1, file);
            h = dlopen(path, mode);
            if (h) return h;
            if (access(path, F_OK) == 0) {
                snprintf(why, n, "%s", dlerror());
                return NULL;
            }
        }
    }
    h = dlopen(file, mode);
    if (!h && !why[0]) snprintf(why, n, "%s", dlerror());
    return h;
}

static ct_cuda_state g_cuda_state = CT_CUDA_NO_PLUGIN;

/* Whether dlopen's message says the file itself is not a loadable library (a truncated
 * copy, a text file, another architecture's build) rather than that a library it needs
 * is missing. */
static int damaged_library(const char *why) {
    return strstr(why, "invalid ELF header") || strstr(why, "file too short") ||
           strstr(why, "wrong ELF class") || strstr(why, "ELF load command") ||
           strstr(why, "not a dynamic") || strstr(why, "unsupported version") ||
           strstr(why, "ELF file");
}

static void load_cuda(void) {
    char why[512];
    const char *env = getenv("CTORCH_CUDA_PLUGIN");
    void *h = ct__open_plugin("libctorch_cuda.so", "CTORCH_CUDA_PLUGIN", RTLD_NOW | RTLD_LOCAL, why,
                              sizeof why);
    if (!h) {
        g_cuda_state = CT_CUDA_PLUGIN_BAD;
        if (damaged_library(why))
            snprintf(g_cuda_reason, sizeof g_cuda_reason,
                     "the CUDA plugin is damaged or not a shared library: %s. Fix: rebuild it "
                     "with `make cuda` (or reinstall ctorch)%s",
                     why, env && *env ? ", or unset CTORCH_CUDA_PLUGIN" : "");
        else if (env && *env && access(env, F_OK) != 0)
            snprintf(g_cuda_reason, sizeof g_cuda_reason,
                     "CTORCH_CUDA_PLUGIN=%s does not exist. Fix: point it at libctorch_cuda.so, "
                     "or unset it to use the plugin built with ctorch", env);
        else if (strstr(why, "libctorch_cuda.so: cannot open") || strstr(why, "No such file")) {
            g_cuda_state = CT_CUDA_NO_PLUGIN;
            snprintf(g_cuda_reason, sizeof g_cuda_reason,
                     "the CUDA plugin libctorch_cuda.so was not found (this build has no CUDA "
                     "support: install the CUDA toolkit so `make` finds nvcc, and rebuild)");
        } else
            snprintf(g_cuda_reason, sizeof g_cuda_reason,
                     "the CUDA plugin could not be loaded: %s (a CUDA runtime library is "
                     "missing: install the NVIDIA driver and CUDA runtime, or set "
                     "LD_LIBRARY_PATH to the directory holding them)", why);
        return;
    }
    g_cuda_state = CT_CUDA_PLUGIN_BAD; /* until init says otherwise */
    typedef const ct_backend *(*init_fn)(char *reason, size_t n);
    init_fn init = (init_fn)dlsym(h, "ct_cuda_plugin_init");
    if (!init) {
        snprintf(g_cuda_reason, sizeof g_cuda_reason,
                 "libctorch_cuda.so lacks ct_cuda_plugin_init (plugin from another version: "
                 "rebuild with `make`)");
        return;
    }
    typedef long (*abi_fn)(void);
    abi_fn abi = (abi_fn)dlsym(h, "ct_cuda_plugin_abi");
    if (!abi || abi() != CT_BACKEND_ABI) {
        snprintf(g_cuda_reason, sizeof g_cuda_reason,
                 "the CUDA plugin libctorch_cuda.so was built for another version of ctorch "
                 "(backend table %ld, this library %ld). Fix: rebuild it with `make cuda`, or "
                 "point CTORCH_CUDA_PLUGIN at the plugin built with this library",
                 abi ? abi() : 0L, CT_BACKEND_ABI);
        return;
    }
    const ct_backend *b = init(g_cuda_reason, sizeof g_cuda_reason);
    g_cuda_state = b ? CT_CUDA_READY : CT_CUDA_NOT_USABLE;
    if (b) {
        g_backends[CT_CUDA] = b;
        g_cuda_plugin = h;
        /* ct_use_deterministic_algorithms(1) before the first CUDA use (the plugin's own
         * CTORCH_DETERMINISTIC stays as it is otherwise) */
        if (ct_are_deterministic_algorithms_enabled()) ct__backend_settings_changed();
    }
}

/* Passes the process-wide settings the CUDA plugin keeps a copy of (deterministic
 * algorithms) to it when it is loaded; nothing is loaded for this. */
void ct__backend_settings_changed(void) {
    if (!g_cuda_plugin) return;
    void (*set_det)(int);
    *(void **)&set_det = dlsym(g_cuda_plugin, "ct_cuda_set_deterministic");
    if (set_det) set_det(ct_are_deterministic_algorithms_enabled());
}

#define CT__PROC_NAME(name, ret, params) #name,
static const char *const g_proc_names[] = {CT_BACKEND_PROCS(CT__PROC_NAME)};
_Static_assert(sizeof g_proc_names / sizeof *g_proc_names * sizeof(void (*)(void)) ==
                   sizeof(ct_backend_procs),
               "one name per CT_BACKEND_PROCS entry");

void *ct_backend_find_proc(const ct_backend *b, const char *name) {
    if (!b || !b->procs || !name) return NULL;
    for (size_t i = 0; i < sizeof g_proc_names / sizeof *g_proc_names; i++) {
        if (strcmp(g_proc_names[i], name) != 0) continue;
        void (*f)(void);
        memcpy(&f, (const char *)b->procs + i * sizeof f, sizeof f);
        return (void *)f;
    }
    return NULL;
}

void *ct_backend_proc(ct_device_type type, const char *name) {
    if (!name) return ct_error_null("backend_proc: NULL name");
    const ct_backend *b = ct_backend_get(type);
    if (!b) return NULL;
    void *f = ct_backend_find_proc(b, name);
    if (!f && type == CT_CUDA && g_cuda_plugin) f = dlsym(g_cuda_plugin, name);
    if (!f)
        return ct_error_null("the %s backend has no function %s (a plugin from another version "
                             "of ctorch: rebuild it with `make`, or point CTORCH_CUDA_PLUGIN at "
                             "the one built with this library)",
                             b->name, name);
    return f;
}

const char *ct_cuda_status(int *available) {
    pthread_once(&g_cuda_once, load_cuda);
    *available = g_backends[CT_CUDA] != NULL;
    return g_backends[CT_CUDA] ? "available" : g_cuda_reason;
}

ct_cuda_state ct__cuda_state(void) {
    pthread_once(&g_cuda_once, load_cuda);
    return g_cuda_state;
}

int ct_cuda_device_count(void) {
    int avail = 0;
    ct_cuda_status(&avail);
    if (!avail) return 0;
    ct_proc_device_count_fn count;
    *(void **)&count = ct_backend_proc(CT_CUDA, "device_count");
    return count ? count() : 0;
}

int ct_cuda_device_name(int device, char *buf, size_t n) {
    if (!buf || n == 0) return ct_error("ct_cuda_device_name: NULL or empty buffer");
    buf[0] = 0;
    ct_proc_device_describe_fn describe;
    *(void **)&describe = ct_backend_proc(CT_CUDA, "device_describe");
    return describe ? describe(device, buf, n) : -1;
}

const ct_backend *ct_backend_get(ct_device_type type) {
    if (type == CT_CUDA) pthread_once(&g_cuda_once, load_cuda);
    if ((unsigned)type < CT_NUM_DEVICE_TYPES && g_backends[type]) return g_backends[type];
    if (type == CT_CUDA) return ct_error_null("cuda unavailable: %s", g_cuda_reason);
    return ct_error_null("no backend for device type %d", (int)type);
}

const ct_backend *ct_backend_of(const ct_tensor *t) {
    unsigned type = (unsigned)t->storage->device.type; /* a released tensor's is out of range */
    return type < CT_NUM_DEVICE_TYPES ? g_backends[type] : NULL;
}

#define CT__KERNEL_NAME(name, params) #name,
const char *const ct_kernel_names[CT_KERNEL_COUNT] = {CT_KERNEL_LIST(CT__KERNEL_NAME)};

int ct__kernel_check(const ct_backend *b, void *fn, const char *opname) {
    if (fn) return 1;
    if (!b)
        ct_error("%s: a tensor argument was already released (ct_free) or is on no known device",
                 opname);
    else
        ct_error("%s: not implemented on the %s backend", opname, b->name);
    return 0;
}

int ct_device_is_host(ct_device d) {
    const ct_backend *b = (unsigned)d.type < CT_NUM_DEVICE_TYPES ? g_backends[d.type] : NULL;
    return b && b->host_memory;
}

int ct_device_describe(ct_device d, char *buf, size_t n) {
    if (!buf || n == 0) return ct_error("ct_device_describe: NULL or empty buffer");
    buf[0] = 0;
    const ct_backend *b = ct_backend_get(d.type);
    ct_proc_device_describe_fn describe;
    *(void **)&describe = b ? ct_backend_find_proc(b, "device_describe") : NULL;
    return describe ? describe(d.index, buf, n) : -1;
}

int ct_device_check(ct_device d) {
    if ((unsigned)d.type >= CT_NUM_DEVICE_TYPES)
        return ct_error("unknown device type %d (cpu or cuda)", (int)d.type);
    if (d.type == CT_CUDA) {
        int avail = 0;
        const char *why = ct_cuda_status(&avail);
        if (!avail) return ct_error("CUDA is unavailable: %s", why);
    }
    const ct_backend *b = ct_backend_get(d.type);
    if (!b) return -1;
    ct_proc_device_count_fn count;
    *(void **)&count = ct_backend_find_proc(b, "device_count");
    if (!count) return d.index == 0 ? 0 : ct_error("no such device: %s has only device 0", b->name);
    int n = count();
    if (d.index >= 0 && d.index < n) return 0;
    char name[256] = "";
    ct_device_describe((ct_device){d.type, 0}, name, sizeof name);
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    return ct_error("no such device: %d %s device%s visible (%s:0 is %s; indices start at 0; "
                    "CUDA_VISIBLE_DEVICES=%s)",
                    n, b->name, n == 1 ? "" : "s", b->name, name, vis ? vis : "(unset)");
}
