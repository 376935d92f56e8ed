/* `ctorch doctor`'s checks of the system (docs/doctor.md): CPU and kernels, cores and CPU
 * quota, memory and its limit, /dev/shm, OpenBLAS and the thread variables. The facts the
 * run manifest records come from run_info.c (cli_env_system, cli_env_ctorch). */
#include "doctor.h"
#include "ctorch.h"
#include "run_info.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#define GIB (1024.0 * 1024.0 * 1024.0)

static const char *jstr(const json_t *o, const char *key) {
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}
static long long jint(const json_t *o, const char *key) {
    const json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? (long long)json_integer_value(v) : -1;
}

/* The first line of a small file into buf; 0, or -1 when it cannot be read. */
static int read_line(const char *path, char *buf, size_t n) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int ok = fgets(buf, (int)n, f) != NULL;
    fclose(f);
    if (!ok) return -1;
    buf[strcspn(buf, "\n")] = 0;
    return 0;
}

/* This process's cgroup v2 directory (from the "0::" line of /proc/self/cgroup) into out;
 * 0, or -1 on a v1-only system. */
static int cgroup2_dir(char *out, size_t n) {
    FILE *f = fopen("/proc/self/cgroup", "r");
    char line[1024];
    int found = -1;
    while (f && found != 0 && fgets(line, sizeof line, f))
        if (strncmp(line, "0::", 3) == 0) {
            line[strcspn(line, "\n")] = 0;
            snprintf(out, n, "/sys/fs/cgroup%.900s", strcmp(line + 3, "/") ? line + 3 : "");
            found = 0;
        }
    if (f) fclose(f);
    return found;
}

/* The smallest value of a cgroup v2 file (cpu.max: quota / period in CPUs; memory.max:
 * bytes) along this process's cgroup and its parents; -1 when unlimited or unknown. */
static double cgroup2_limit(const char *file) {
    char dir[1024], path[1200], buf[128];
    if (cgroup2_dir(dir, sizeof dir) != 0) return -1;
    double best = -1;
    for (;;) {
        snprintf(path, sizeof path, "%s/%s", dir, file);
        if (read_line(path, buf, sizeof buf) == 0 && strncmp(buf, "max", 3) != 0) {
            double quota = 0, period = 0, v = -1;
            int k = sscanf(buf, "%lf %lf", &quota, &period);
            if (strcmp(file, "cpu.max") == 0) v = k == 2 && period > 0 ? quota / period : -1;
            else v = k >= 1 ? quota : -1;
            if (v > 0 && (best < 0 || v < best)) best = v;
        }
        char *slash = strrchr(dir, '/');
        if (!slash || strcmp(dir, "/sys/fs/cgroup") == 0) break;
        *slash = 0;
    }
    return best;
}

/* CPU quota in CPUs (cgroup v2 cpu.max, else v1 cfs_quota_us / cfs_period_us); -1: none. */
static double cpu_quota(const char **source) {
    double q = cgroup2_limit("cpu.max");
    *source = "cgroup v2 cpu.max";
    if (q > 0) return q;
    const char *dirs[] = {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"};
    for (int i = 0; i < 2; i++) {
        char path[128], a[64], b[64];
        snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", dirs[i]);
        if (read_line(path, a, sizeof a) != 0) continue;
        snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dirs[i]);
        if (read_line(path, b, sizeof b) != 0) continue;
        double quota = atof(a), period = atof(b);
        *source = "cgroup v1 cpu.cfs_quota_us";
        if (quota > 0 && period > 0) return quota / period;
    }
    return -1;
}

/* Memory limit in bytes (cgroup v2 memory.max, else v1 memory.limit_in_bytes, where
 * values near 2^63 mean none); -1: none. */
static double memory_limit(void) {
    double m = cgroup2_limit("memory.max");
    if (m > 0) return m;
    char buf[64];
    if (read_line("/sys/fs/cgroup/memory/memory.limit_in_bytes", buf, sizeof buf) == 0) {
        double v = atof(buf);
        if (v > 0 && v < 4e18) return v;
    }
    return -1;
}

static long long mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    long long kb = -1;
    while (f && kb < 0 && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lld kB", &kb) != 1) kb = -1;
    if (f) fclose(f);
    return kb >= 0 ? kb * 1024 : -1;
}

/* The CPU, its vector extensions and the kernel variant ctorch runs. */
static void check_cpu(dr_report *r, const json_t *sys, const json_t *build) {
    char flags[512] = "";
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(sys, "cpu_flags"), i, f) {
        size_t len = strlen(flags);
        snprintf(flags + len, sizeof flags - len, "%s%s", len ? " " : "", json_string_value(f));
    }
    const char *model = jstr(sys, "cpu_model"), *kernels = jstr(build, "cpu_kernels");
    const char *isa = getenv("CTORCH_CPU_ISA");
    const char *fix = "";
    dr_verdict v = DR_OK;
    char why[256] = "";
    if (isa && *isa) {
        v = DR_WARNING;
        snprintf(why, sizeof why, "; CTORCH_CPU_ISA=%s limits the kernels", isa);
        fix = "unset CTORCH_CPU_ISA to use every vector extension of this CPU";
    }
#if defined(__x86_64__)
    else if (strcmp(kernels, "baseline") == 0) {
        v = DR_WARNING;
        snprintf(why, sizeof why, "; no AVX2+FMA: the portable C kernels run, several times "
                                  "slower");
        fix = "run on a CPU with AVX2 and FMA (x86-64-v3) for the vectorised kernels";
    }
#endif
    dr_add(r, "cpu", v, fix, "%s; ISA: %s; ctorch kernels: %s%s", *model ? model : "unknown model",
           *flags ? flags : "no SIMD extension reported", *kernels ? kernels : "unknown", why);
}

/* Cores, affinity and CPU quota against the threads ctorch's pool will start. */
static void check_cores(dr_report *r, const json_t *sys) {
    long long online = jint(sys, "cores"), allowed = jint(sys, "cpus_allowed");
    int threads = ct_get_num_threads();
    const char *src = "";
    double quota = cpu_quota(&src);
    double usable = allowed > 0 ? (double)allowed : (double)online;
    if (quota > 0 && quota < usable) usable = quota;
    int can = (int)fmax(1, floor(usable + 1e-9));
    char q[96] = "no CPU quota";
    if (quota > 0) snprintf(q, sizeof q, "CPU quota %.2f CPUs (%s)", quota, src);
    char fix[256] = "";
    dr_verdict v = DR_OK;
    if (threads > can) {
        v = DR_WARNING;
        snprintf(fix, sizeof fix, "use at most %d threads: --threads %d or CTORCH_NUM_THREADS=%d "
                                  "(more threads than CPUs makes every parallel op wait)",
                 can, can, can);
    }
    dr_add(r, "cores", v, fix, "%lld online, %lld allowed by affinity, %s; ctorch will use %d "
                               "thread%s",
           online, allowed, q, threads, threads == 1 ? "" : "s");
}

static void check_memory(dr_report *r, const json_t *sys) {
    double total = (double)jint(sys, "memory_bytes"), limit = memory_limit();
    double avail = (double)mem_available(), usable = limit > 0 && limit < total ? limit : total;
    char lim[64] = "no memory limit";
    if (limit > 0) snprintf(lim, sizeof lim, "cgroup limit %.1f GiB", limit / GIB);
    int low = usable > 0 && usable < 2 * GIB;
    dr_add(r, "memory", low ? DR_WARNING : DR_OK,
           low ? "give the container or job at least 2 GiB (docker run --memory=4g; "
                 "Slurm --mem=4G): resnet18_cifar on CIFAR-10 needs about 1 GiB at batch 64"
               : "",
           "%.1f GiB total, %.1f GiB available, %s", total / GIB, avail / GIB, lim);
}

/* /dev/shm: where OpenMPI's shared-memory transport and NCCL put their buffers between
 * processes of one host (a container's default is 64 MiB). */
static void check_shm(dr_report *r) {
    struct statvfs st;
    if (statvfs("/dev/shm", &st) != 0) {
        dr_add(r, "shm", DR_WARNING,
               "mount a tmpfs there: mount -t tmpfs -o size=2g tmpfs /dev/shm (in a container: "
               "docker run --shm-size=2g)",
               "/dev/shm cannot be read (%s): multi-process training on this host (ctorch launch, "
               "NCCL) needs it",
               strerror(errno));
        return;
    }
    double size = (double)st.f_blocks * st.f_frsize, avail = (double)st.f_bavail * st.f_frsize;
    int small = size < 1 * GIB;
    dr_add(r, "shm", small ? DR_WARNING : DR_OK,
           small ? "give it 1 GiB or more: docker run --shm-size=2g (Kubernetes: an emptyDir "
                   "with medium: Memory), or mount -o remount,size=2g /dev/shm"
                 : "",
           "/dev/shm %.1f MiB, %.1f MiB free%s", size / (1024.0 * 1024), avail / (1024.0 * 1024),
           small ? ": too small for the shared-memory buffers of several processes on this "
                   "host (mpirun's transport, NCCL)"
                 : "");
}

static void check_openblas(dr_report *r, const json_t *sys) {
    const json_t *ob = json_object_get(sys, "openblas");
    if (!json_is_object(ob)) {
        dr_add(r, "openblas", DR_WARNING,
               "link ctorch with OpenBLAS (apt-get install libopenblas-dev, rebuild)",
               "the BLAS linked in is not OpenBLAS: ctorch cannot keep it to one thread");
        return;
    }
    dr_add(r, "openblas", DR_OK, "", "OpenBLAS %s, kernel %s (%s); ctorch keeps it to one thread "
                                     "inside its own pool",
           jstr(ob, "version"), jstr(ob, "corename"), jstr(ob, "config"));
}

/* Thread variables of OpenBLAS, OpenMP and MKL that start threads beside ctorch's pool or
 * ask for more threads than the CPUs this process may use. */
static void check_thread_env(dr_report *r, const json_t *sys) {
    static const char *const VARS[] = {"OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
                                       "MKL_NUM_THREADS", "OMP_NUM_THREADS"};
    long long allowed = jint(sys, "cpus_allowed");
    char bad[512] = "", set[512] = "", unset[256] = "";
    for (int i = 0; i < 4; i++) {
        const char *e = getenv(VARS[i]);
        if (!e || !*e) continue;
        size_t l = strlen(set);
        snprintf(set + l, sizeof set - l, "%s%s=%s", l ? ", " : "", VARS[i], e);
        long v = strtol(e, NULL, 10);
        /* OMP_NUM_THREADS is ctorch's own thread count (unless CTORCH_NUM_THREADS is set):
         * only more than the CPUs is wrong; the others start a second pool */
        int fights = i < 3 ? v != 1 : allowed > 0 && v > allowed;
        if (!fights) continue;
        l = strlen(bad);
        snprintf(bad + l, sizeof bad - l, "%s%s=%s", l ? ", " : "", VARS[i], e);
        l = strlen(unset);
        snprintf(unset + l, sizeof unset - l, " %s", VARS[i]);
    }
    if (!bad[0]) {
        dr_add(r, "thread vars", DR_OK, "", "%s", set[0] ? set : "none of OPENBLAS_NUM_THREADS, "
                                                               "GOTO_NUM_THREADS, MKL_NUM_THREADS, "
                                                               "OMP_NUM_THREADS set");
        return;
    }
    char fix[512];
    snprintf(fix, sizeof fix, "unset%s (or set them to 1); give ctorch its threads with --threads "
                              "or CTORCH_NUM_THREADS",
             unset);
    dr_add(r, "thread vars", DR_WARNING, fix, "%s: a second thread pool beside ctorch's %d threads "
                                              "(or more threads than the %lld CPUs allowed) "
                                              "oversubscribes the cores",
           bad, ct_get_num_threads(), allowed);
}

void dr_check_system(dr_report *r) {
    json_t *sys = cli_env_system(ct_get_num_threads()), *build = cli_env_ctorch();
    if (!sys || !build) {
        dr_add(r, "system", DR_PROBLEM, "free some memory and run again",
               "cannot describe the system: %s", ct_last_error());
    } else {
        check_cpu(r, sys, build);
        check_cores(r, sys);
        check_memory(r, sys);
        check_shm(r);
        check_openblas(r, sys);
        check_thread_env(r, sys);
    }
    json_decref(sys);
    json_decref(build);
}
