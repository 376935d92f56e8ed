/* NCCL inside the CUDA plugin (src/backends/cuda/cuda_nccl.c): the ct_cuda_nccl_* entry
 * points the core uses for the collectives of CUDA tensors (include/ctorch_dist.h).
 *
 * Without a GPU these tests skip here and run in tests/test_cuda_emu.c's emulated child,
 * where libnccl.so.2 is the emulator's one-rank stand-in (tests/cuda_emu/emu_nccl.c): the
 * plugin's loading, argument checks, dtype and op mapping, stream, wait, timeout and abort
 * paths run against it. On a GPU with the real NCCL they run a world of one rank (the
 * fault-injection test needs the stand-in and skips). Several ranks are the dist tests'
 * business (they need MPI and one GPU per rank). */
#include "test.h"
#include "backends/cuda/cuda_plugin.h"
#include "core/backend.h"
#include "core/tensor_impl.h"
#include "ctorch_dist.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int cuda_ok(void) {
    int avail = 0;
    ct_cuda_status(&avail);
    return avail;
}

#define NCCL_SKIP_NO_CUDA()                                                                \
    do {                                                                                   \
        if (!cuda_ok()) SKIP("cuda unavailable");                                          \
    } while (0)

static int contains(const char *s, const char *needle) { return s && strstr(s, needle); }
#define CHECK_ERRMSG(needle)                                                               \
    CHECK_MSG(contains(ct_last_error(), needle), "error message lacks \"%s\": %s", needle, \
              ct_last_error())

/* The plugin's entry points, resolved as the core does. */
typedef struct {
    ct_cuda_nccl_available_fn available;
    ct_cuda_nccl_version_fn version;
    ct_cuda_nccl_unique_id_fn unique_id;
    ct_cuda_nccl_init_fn init;
    ct_cuda_nccl_all_reduce_fn all_reduce;
    ct_cuda_nccl_broadcast_fn broadcast;
    ct_cuda_nccl_all_gather_fn all_gather;
    ct_cuda_nccl_wait_fn wait;
    ct_cuda_nccl_abort_fn abort;
    ct_cuda_nccl_finalize_fn finalize;
} nccl_api;

static int get_api(nccl_api *a) {
    memset(a, 0, sizeof *a);
#define NCCL_SYM(field) *(void **)&a->field = ct_backend_proc(CT_CUDA, "ct_cuda_nccl_" #field);
    NCCL_SYM(available) NCCL_SYM(version) NCCL_SYM(unique_id) NCCL_SYM(init)
    NCCL_SYM(all_reduce) NCCL_SYM(broadcast) NCCL_SYM(all_gather) NCCL_SYM(wait)
    NCCL_SYM(abort) NCCL_SYM(finalize)
#undef NCCL_SYM
    return a->available && a->version && a->unique_id && a->init && a->all_reduce &&
                   a->broadcast && a->all_gather && a->wait && a->abort && a->finalize
               ? 0
               : -1;
}

/* A function of the emulator's NCCL stand-in when it is the libnccl.so.2 loaded. */
static void *emu_nccl_sym(const char *name) {
    void *h = dlopen("libnccl.so.2", RTLD_NOW | RTLD_NOLOAD);
    void *f = h ? dlsym(h, name) : NULL;
    if (h) dlclose(h); /* the plugin keeps it loaded */
    return f;
}

static long long emu_stat(const char *name) {
    long long (*stat)(const char *);
    *(void **)&stat = emu_nccl_sym("ct_emu_nccl_stat");
    return stat ? stat(name) : -2;
}

static void emu_fault(const char *mode) {
    void (*set)(const char *);
    *(void **)&set = emu_nccl_sym("ct_emu_nccl_set_fault");
    if (set) set(mode);
}

static const ct_device g_cuda0 = {CT_CUDA, 0};

/* 0..n-1 in dt, on cuda:0. */
static ct_tensor *iota_on_gpu(int64_t n, ct_dtype dt) {
    ct_tensor *f = ct_arange(0, (double)n, 1, CT_FLOAT32);
    ct_tensor *c = f ? ct_to_dtype(f, dt) : NULL;
    ct_tensor *g = c ? ct_to_device(c, g_cuda0) : NULL;
    ct_free(f);
    ct_free(c);
    return g;
}

/* Whether GPU tensor g holds the bytes of 0..numel-1 in its dtype. */
static int holds_iota(const ct_tensor *g) {
    ct_tensor *want = iota_on_gpu(ct_numel(g), ct_dtype_of(g));
    ct_tensor *a = want ? ct_to_device(want, ct_cpu()) : NULL;
    ct_tensor *b = ct_to_device(g, ct_cpu());
    const size_t bytes = (size_t)ct_numel(g) * ct_dtype_size(ct_dtype_of(g));
    int same = a && b && memcmp(ct_data(a), ct_data(b), bytes) == 0;
    ct_free(want);
    ct_free(a);
    ct_free(b);
    return same;
}

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Runs first in a process: once NCCL is loaded, it stays. tests/test_cuda_emu.c runs it
 * alone in the emulated child. */
TEST(nccl_missing_library_is_reported_by_name_with_the_fix) {
    NCCL_SKIP_NO_CUDA();
    void *h = dlopen("libnccl.so.2", RTLD_NOW | RTLD_NOLOAD);
    if (h) {
        dlclose(h);
        SKIP("NCCL is already loaded in this process (run `test_ctorch nccl_missing` alone)");
    }
    nccl_api a;
    CHECK(get_api(&a) == 0);
    if (!a.available) return;
    const char *old = getenv("CTORCH_NCCL_LIBRARY");
    char saved[1024] = "";
    int had = old != NULL;
    if (old) snprintf(saved, sizeof saved, "%s", old);
    setenv("CTORCH_NCCL_LIBRARY", "/nonexistent/ctorch-test/libnccl.so.2", 1);

    ct_clear_error();
    CHECK(a.available() == 0);
    const char *e = ct_last_error();
    CHECK_MSG(contains(e, "NCCL missing: libnccl.so.2") &&
                  contains(e, "CTORCH_NCCL_LIBRARY=/nonexistent/ctorch-test/libnccl.so.2") &&
                  contains(e, "cannot be opened") && contains(e, "one GPU works without it") &&
                  contains(e, "Fix: install NCCL 2") && contains(e, "nvidia-nccl-cu") &&
                  contains(e, "LD_LIBRARY_PATH") && contains(e, "set CTORCH_NCCL_LIBRARY"),
              "error: %s", e);
    printf("    %s\n", e);
    /* every entry point says the same */
    unsigned char id[128];
    char ver[64];
    CHECK_ERR_INT(a.unique_id(id, sizeof id), "NCCL missing: libnccl.so.2");
    CHECK_ERR_INT(a.version(ver, sizeof ver), "NCCL missing: libnccl.so.2");
    CHECK_ERR_INT(a.init(id, sizeof id, 0, 1, 0), "NCCL missing: libnccl.so.2");
    CHECK_ERR_INT(a.all_reduce(NULL, 0, CT_FLOAT32, CT_REDUCE_SUM, 0), "NCCL missing");
    CHECK_ERR_INT(a.wait(1, 0), "NCCL missing");
    CHECK_OK(a.finalize()); /* nothing to finalize */
    CHECK_OK(a.abort());

    /* the manifest's versions: no NCCL, no error */
    ct_proc_versions_fn versions;
    *(void **)&versions = ct_backend_find_proc(ct_backend_get(CT_CUDA), "versions");
    CHECK(versions != NULL);
    ct_backend_versions v;
    ct_clear_error();
    if (versions) {
        CHECK(versions(&v) == 0);
        CHECK_MSG(v.collectives[0] == 0, "collectives: %s", v.collectives);
        CHECK(v.runtime[0] != 0);
    }
    CHECK(dlopen("libnccl.so.2", RTLD_NOW | RTLD_NOLOAD) == NULL);

    /* one GPU still works */
    ct_tensor *g = iota_on_gpu(5, CT_FLOAT32);
    CHECK_NN(g);
    ct_tensor *s = g ? ct_add(g, g) : NULL;
    CHECK_NN(s);
    ct_free(s);
    ct_free(g);

    /* a failure is not remembered: with the library reachable again, it loads */
    if (had) setenv("CTORCH_NCCL_LIBRARY", saved, 1);
    else unsetenv("CTORCH_NCCL_LIBRARY");
    ct_clear_error();
    const int ok = a.available();
    if (ok) {
        CHECK_OK(a.version(ver, sizeof ver));
        CHECK_MSG(strncmp(ver, "NCCL 2.", 7) == 0, "version: %s", ver);
        printf("    then: %s\n", ver);
    } else {
        printf("    then: %s\n", ct_last_error());
    }
    /* the emulated child has the stand-in beside its plugin */
    if (getenv("CT_TEST_EMULATED"))
        CHECK_MSG(ok && emu_stat("inits") == 0, "stand-in not loaded: %s", ct_last_error());
}

/* A world of one rank: every dtype and op, broadcast, all-gather, wait, finalize. */
TEST(cuda_nccl_single_rank_collectives) {
    NCCL_SKIP_NO_CUDA();
    nccl_api a;
    CHECK(get_api(&a) == 0);
    if (!a.available) return;
    if (!a.available()) SKIP(ct_last_error());
    const int emu = emu_nccl_sym("ct_emu_nccl_stat") != NULL;
    char ver[64];
    CHECK_OK(a.version(ver, sizeof ver));
    CHECK_MSG(strncmp(ver, "NCCL 2.", 7) == 0, "version: %s", ver);
    printf("    %s%s\n", ver, emu ? " (the CUDA emulator's one-rank stand-in)" : "");

    unsigned char id[128];
    CHECK_OK(a.unique_id(id, sizeof id));
    CHECK_ERR_INT(a.unique_id(id, 64), "must have 128 bytes");
    CHECK_ERR_INT(a.all_reduce(NULL, 0, CT_FLOAT32, CT_REDUCE_SUM, 0), "not initialised");
    CHECK_ERR_INT(a.wait(1, 0), "not initialised");
    CHECK_ERR_INT(a.init(id, 64, 0, 1, 0), "must have 128 bytes");
    CHECK_ERR_INT(a.init(id, sizeof id, 1, 1, 0), "rank 1 of 1 ranks is not a valid rank");
    CHECK_ERR_INT(a.init(id, sizeof id, 0, 1, 99), "cuda:99");
    long long inits0 = emu_stat("inits");
    CHECK_OK(a.init(id, sizeof id, 0, 1, 0));
    CHECK_ERR_INT(a.init(id, sizeof id, 0, 1, 0),
                  "already initialised in this process (rank 0 of 1 on cuda:0");

    /* every dtype and op: with one rank the values stay as they are */
    const ct_dtype dts[] = {CT_FLOAT32, CT_FLOAT64, CT_FLOAT16, CT_BFLOAT16,
                            CT_INT64,   CT_INT32,   CT_UINT8};
    const int nccl_dt[] = {7, 8, 6, 9, 4, 2, 1}; /* ncclFloat32, ncclFloat64, ... */
    const ct_reduce_op ops[] = {CT_REDUCE_SUM, CT_REDUCE_AVG, CT_REDUCE_MAX, CT_REDUCE_MIN};
    const int nccl_op[] = {0, 4, 2, 3}; /* ncclSum, ncclAvg, ncclMax, ncclMin */
    for (size_t i = 0; i < sizeof dts / sizeof dts[0]; i++)
        for (size_t j = 0; j < sizeof ops / sizeof ops[0]; j++) {
            ct_tensor *g = iota_on_gpu(37, dts[i]);
            CHECK_NN(g);
            if (!g) continue;
            CHECK_OK(a.all_reduce(ct_ptr(g), 37, dts[i], ops[j], 0));
            CHECK_OK(a.wait(30, 0));
            CHECK_MSG(holds_iota(g), "all_reduce %s op %d changed the values",
                      ct_dtype_name(dts[i]), (int)ops[j]);
            if (emu)
                CHECK_MSG(emu_stat("dtype") == nccl_dt[i] && emu_stat("op") == nccl_op[j] &&
                              emu_stat("count") == 37,
                          "%s op %d reached NCCL as dtype %lld op %lld count %lld",
                          ct_dtype_name(dts[i]), (int)ops[j], emu_stat("dtype"),
                          emu_stat("op"), emu_stat("count"));
            ct_free(g);
        }
    ct_tensor *g = iota_on_gpu(10, CT_FLOAT32);
    CHECK_NN(g);
    if (!g) return;
    void *p = ct_ptr(g);
    CHECK_ERR_INT(a.all_reduce(p, 10, CT_BOOL, CT_REDUCE_SUM, 0), "dtype bool is not supported");
    CHECK_ERR_INT(a.all_reduce(p, 10, CT_FLOAT32, 7, 0), "unknown reduce op 7");
    CHECK_ERR_INT(a.all_reduce(p, -1, CT_FLOAT32, CT_REDUCE_SUM, 0), "negative element count");
    CHECK_ERR_INT(a.all_reduce(p, 10, CT_FLOAT32, CT_REDUCE_SUM, 1),
                  "the tensor is on cuda:1 but this process's NCCL communicator is on cuda:0");
    CHECK_OK(a.all_reduce(NULL, 0, CT_FLOAT32, CT_REDUCE_SUM, 0)); /* nothing to do */

    /* broadcast from rank 0 */
    CHECK_OK(a.broadcast(p, 40, 0, 0));
    CHECK_OK(a.wait(30, 0));
    CHECK(holds_iota(g));
    if (emu) CHECK(emu_stat("root") == 0 && emu_stat("count") == 40 && emu_stat("dtype") == 1);
    CHECK_ERR_INT(a.broadcast(p, 40, 1, 0), "root 1 is not a rank (1 ranks)");
    CHECK_ERR_INT(a.broadcast(p, -4, 0, 0), "negative size");

    /* all-gather into another buffer, of an input a kernel has just computed: under
     * CT_EMU_STREAMS=lazy the emulator runs the stand-in's copy after the work queued
     * before it on the stream the plugin passed, so a stream other than the kernels'
     * would gather the input before the kernel wrote it */
    int64_t n = 10;
    ct_tensor *out = ct_empty_on(&n, 1, CT_FLOAT32, g_cuda0);
    ct_tensor *in = ct_add_scalar(g, -1); /* -1..8 */
    CHECK(out && in);
    if (out && in) {
        CHECK_OK(a.all_gather(ct_ptr(in), ct_ptr(out), 40, 0));
        CHECK_OK(a.wait(30, 0));
        ct_tensor *back = ct_to_device(out, ct_cpu());
        CHECK_NN(back);
        for (int i = 0; back && i < 10; i++)
            CHECK_MSG(((const float *)ct_data(back))[i] == (float)(i - 1),
                      "all_gather: out[%d] = %g, want %d", i,
                      (double)((const float *)ct_data(back))[i], i - 1);
        ct_free(back);
        if (emu) CHECK(emu_stat("count") == 40 && emu_stat("dtype") == 1);
    }
    CHECK_ERR_INT(a.all_gather(NULL, NULL, 8, 0), "no buffer");
    ct_free(in);
    ct_free(out);
    ct_free(g);

    CHECK_OK(a.wait(0, 0)); /* <= 0: the default timeout */
    CHECK_OK(a.finalize());
    CHECK_OK(a.finalize());
    CHECK_ERR_INT(a.all_reduce(NULL, 0, CT_FLOAT32, CT_REDUCE_SUM, 0), "not initialised");
    if (emu)
        CHECK_MSG(emu_stat("inits") == inits0 + 1 && emu_stat("live") == 0 &&
                      emu_stat("aborts") == 0,
                  "inits %lld (before %lld), live %lld, aborts %lld", emu_stat("inits"), inits0,
                  emu_stat("live"), emu_stat("aborts"));

    /* the manifest's versions report it */
    ct_proc_versions_fn versions;
    *(void **)&versions = ct_backend_find_proc(ct_backend_get(CT_CUDA), "versions");
    ct_backend_versions v;
    CHECK(versions && versions(&v) == 0);
    if (versions) CHECK_MSG(!strncmp(ver + 5, v.collectives, strlen(ver + 5)) &&
                                v.collectives[0], "versions: \"%s\", %s", v.collectives, ver);
}

/* NCCL's failures, injected into the emulator's stand-in: a collective refused, a peer
 * that fails while a collective is in flight, one that never completes (the timeout),
 * and ct_cuda_nccl_abort. Each leaves the communicator aborted and later calls failing. */
TEST(cuda_nccl_failures_abort_the_communicator) {
    NCCL_SKIP_NO_CUDA();
    nccl_api a;
    CHECK(get_api(&a) == 0);
    if (!a.available) return;
    if (!a.available()) SKIP(ct_last_error());
    if (!emu_nccl_sym("ct_emu_nccl_set_fault"))
        SKIP("needs the CUDA emulator's NCCL stand-in to inject faults");
    unsigned char id[128];
    ct_tensor *g = iota_on_gpu(16, CT_FLOAT32);
    CHECK_NN(g);
    if (!g) return;
    void *p = ct_ptr(g);
    const long long aborts0 = emu_stat("aborts");

    /* the library refuses a collective: its error string and last error */
    CHECK_OK(a.unique_id(id, sizeof id));
    CHECK_OK(a.init(id, sizeof id, 0, 1, 0));
    emu_fault("call");
    CHECK_ERR_INT(a.all_reduce(p, 16, CT_FLOAT32, CT_REDUCE_SUM, 0),
                  "NCCL all_reduce on rank 0: NCCL error 2 (unhandled system error");
    CHECK_ERRMSG("emulated: socket error while connecting to rank 1");
    CHECK_ERRMSG("NCCL_SOCKET_IFNAME");
    emu_fault("");

    /* a peer fails while a collective is in flight: the wait reports it and aborts */
    CHECK_OK(a.all_reduce(p, 16, CT_FLOAT32, CT_REDUCE_SUM, 0));
    emu_fault("async");
    CHECK_ERR_INT(a.wait(30, 0), "NCCL collective failed on rank 0 of 1 (cuda:0): NCCL error 6");
    CHECK_ERRMSG("peer rank 1 closed the connection");
    CHECK_ERRMSG("the communicator was aborted");
    CHECK(emu_stat("aborts") == aborts0 + 1);
    emu_fault("");
    CHECK_ERR_INT(a.all_reduce(p, 16, CT_FLOAT32, CT_REDUCE_SUM, 0),
                  "aborted after an earlier failure (NCCL collective failed on rank 0");
    CHECK_ERRMSG("exit and restart the job");
    CHECK_ERR_INT(a.wait(30, 0), "aborted after an earlier failure");
    CHECK_ERR_INT(a.broadcast(p, 4, 0, 0), "aborted after an earlier failure");
    CHECK_OK(a.finalize());

    /* a collective that never completes: the timeout aborts the communicator */
    CHECK_OK(a.unique_id(id, sizeof id));
    CHECK_OK(a.init(id, sizeof id, 0, 1, 0));
    emu_fault("hang");
    CHECK_OK(a.all_reduce(p, 16, CT_FLOAT32, CT_REDUCE_SUM, 0));
    double t0 = seconds();
    CHECK_ERR_INT(a.wait(0.2, 0), "NCCL collective did not complete within 0.2 s on rank 0");
    double waited = seconds() - t0;
    CHECK_ERRMSG("a peer is lost or stuck");
    CHECK_ERRMSG("the communicator was aborted");
    CHECK_MSG(waited >= 0.2 && waited < 5, "waited %.3f s for a 0.2 s timeout", waited);
    CHECK(emu_stat("aborts") == aborts0 + 2);
    emu_fault("");
    CHECK_ERR_INT(a.all_gather(p, p, 0, 0), "did not complete within 0.2 s");
    CHECK_OK(a.finalize());

    /* ct_cuda_nccl_abort, for a caller whose own timeout expired */
    CHECK_OK(a.unique_id(id, sizeof id));
    CHECK_OK(a.init(id, sizeof id, 0, 1, 0));
    CHECK_OK(a.abort());
    CHECK(emu_stat("aborts") == aborts0 + 3);
    CHECK_ERR_INT(a.all_reduce(p, 16, CT_FLOAT32, CT_REDUCE_SUM, 0), "ct_cuda_nccl_abort");
    CHECK_OK(a.finalize());

    /* more ranks than the stand-in has: ncclCommInitRank's failure, with its last error */
    CHECK_OK(a.unique_id(id, sizeof id));
    CHECK_ERR_INT(a.init(id, sizeof id, 1, 2, 0), "ncclCommInitRank on rank 1: NCCL error 5");
    CHECK_ERRMSG("world of one rank");
    CHECK(emu_stat("live") == 0);
    ct_free(g);
}
