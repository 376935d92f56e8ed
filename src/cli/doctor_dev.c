/* `ctorch doctor`'s checks of the devices (docs/doctor.md): the CUDA plugin, the NVIDIA
 * driver against the CUDA version this build needs, each GPU's compute capability against
 * the architectures compiled into the plugin, cuDNN / NCCL / MPI with their versions, and a
 * small convolution forward and backward per device against a plain loop. The CUDA facts
 * come from the backend's `versions` and `device_describe` entry points, as the run
 * manifest's (run_info.c); why CUDA is unusable is the loader's own message (dispatch.c). */
#include "doctor.h"
#include "core/backend.h"
#include "ctorch.h"
#include "ctorch_dist.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The kernel module's version line, "" without one (no NVIDIA driver loaded). */
static void nvidia_module(char *buf, size_t n) {
    buf[0] = 0;
    FILE *f = fopen("/proc/driver/nvidia/version", "r");
    if (!f) return;
    char line[256];
    if (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        const char *k = strstr(line, "Kernel Module");
        snprintf(buf, n, "%.120s", k ? k : line);
    }
    fclose(f);
}

/* Whether the plugin's architecture list ("sm_80, sm_90 and PTX compute_90") covers
 * compute capability major.minor: SASS sm_XY runs on X.Z with Z >= Y, PTX compute_XY is
 * compiled for any capability >= X.Y. 1 when the list names no architecture (emulator). */
static int arch_covered(const char *archs, int major, int minor) {
    int any = 0, cc = major * 10 + minor;
    for (const char *p = archs; (p = strstr(p, "sm_")) != NULL; p += 3) {
        int a = atoi(p + 3);
        any = 1;
        if (a / 10 == major && a % 10 <= minor) return 1;
    }
    const char *ptx = strstr(archs, "compute_");
    if (ptx) return cc >= atoi(ptx + 8);
    return !any;
}

/* The plugin could not be used: one row saying why. */
static void cuda_unusable(dr_report *r, ct_cuda_state st, const char *why) {
    char detail[1024], fix[768], module[160];
    dr_split_fix(why, detail, sizeof detail, fix, sizeof fix);
    nvidia_module(module, sizeof module);
    dr_verdict v = DR_PROBLEM;
    if (st == CT_CUDA_NO_PLUGIN) {
        /* a CPU-only build: fine, unless this machine has a GPU or CUDA was asked for */
        v = r->want_cuda ? DR_PROBLEM : module[0] ? DR_WARNING : DR_OK;
        snprintf(fix, sizeof fix, "%s", module[0] || r->want_cuda
                                            ? "install the CUDA toolkit so that `make` finds "
                                              "nvcc, and rebuild (make cuda)"
                                            : "");
    } else if (st == CT_CUDA_NOT_USABLE && strncmp(why, "NVIDIA driver not loaded", 24) == 0 &&
               !r->want_cuda) {
        v = DR_WARNING; /* a CPU-only machine: valid, ctorch runs on the CPU */
    }
    dr_add(r, "cuda", v, fix, "%s%s%s%s", st == CT_CUDA_NO_PLUGIN ? "CPU-only build: " : "",
           detail, module[0] ? "; NVIDIA kernel module: " : "", module);
}

/* One row per visible GPU: its description and its capability against the build. */
static void check_gpus(dr_report *r, const char *archs) {
    int n = ct_cuda_device_count();
    if (n == 0)
        dr_add(r, "gpu", r->want_cuda ? DR_PROBLEM : DR_WARNING,
               "check `nvidia-smi` and CUDA_VISIBLE_DEVICES", "the CUDA backend sees no GPU");
    for (int i = 0; i < n; i++) {
        char check[32], name[256] = "", fix[512] = "";
        snprintf(check, sizeof check, "gpu cuda:%d", i);
        if (ct_cuda_device_name(i, name, sizeof name) != 0) {
            dr_add(r, check, DR_PROBLEM, "check `nvidia-smi`; see docs/cuda.md", "unusable: %s",
                   ct_last_error());
            continue;
        }
        const char *cc = strstr(name, "cc ");
        int major = 0, minor = 0;
        int known = cc && sscanf(cc, "cc %d.%d", &major, &minor) == 2;
        int ok = !known || arch_covered(archs, major, minor);
        if (!ok)
            snprintf(fix, sizeof fix, "rebuild the plugin for it: make cuda CUDA_ARCHS=\"%d%d 80 "
                                      "90\"",
                     major, minor);
        dr_add(r, check, ok ? DR_OK : DR_PROBLEM, fix, "%s; kernels in the build: %s%s", name,
               archs, ok ? "" : ": this GPU's architecture is not among them");
    }
}

void dr_check_cuda(dr_report *r) {
    int avail = 0;
    const char *why = ct_cuda_status(&avail);
    ct_cuda_state st = ct__cuda_state();
    if (!avail) {
        cuda_unusable(r, st, why);
        return;
    }
    ct_backend_versions v;
    memset(&v, 0, sizeof v);
    ct_device cuda;
    const ct_backend *b = ct_device_parse("cuda", &cuda) == 0 ? ct_backend_get(cuda.type) : NULL;
    ct_proc_versions_fn fn;
    *(void **)&fn = b ? ct_backend_find_proc(b, "versions") : NULL;
    if (fn) fn(&v);
    char module[160];
    nvidia_module(module, sizeof module);
    dr_add(r, "cuda", DR_OK, "", "plugin loaded, built with CUDA %s", v.runtime[0] ? v.runtime : "?");
    dr_add(r, "nvidia driver", DR_OK, "", "supports CUDA %s (this build needs %s or newer)%s%s",
           v.driver[0] ? v.driver : "?", v.runtime[0] ? v.runtime : "?",
           module[0] ? "; " : "", module);
    check_gpus(r, v.kernels);
    dr_add(r, "cuda libs", DR_OK, "", "cuBLAS loaded; cuDNN %s", v.dnn[0] ? v.dnn : "loaded");
    int multi = ct_cuda_device_count() > 1;
    dr_add(r, "nccl", v.collectives[0] || !multi ? DR_OK : DR_WARNING,
           v.collectives[0] ? "" : "install NCCL 2 (libnccl2) for data-parallel training on GPUs",
           "%s%s", v.collectives[0] ? "NCCL " : "libnccl.so.2 not found",
           v.collectives[0] ? v.collectives : multi ? "" : " (only needed for several GPUs)");
}

void dr_check_mpi(dr_report *r) {
    if (!ct_dist_is_available()) {
        char detail[1024], fix[768];
        dr_split_fix(ct_last_error(), detail, sizeof detail, fix, sizeof fix);
        if (!fix[0])
            snprintf(fix, sizeof fix, "install OpenMPI (apt-get install openmpi-bin "
                                      "libopenmpi-dev) and rebuild; only needed for several "
                                      "processes (ctorch launch)");
        dr_add(r, "mpi", DR_WARNING, fix, "%s", detail);
        return;
    }
    const char *v = ct_dist_backend_version();
    const char *mpirun = getenv("CTORCH_MPIRUN");
    dr_add(r, "mpi", DR_OK, "", "%s%s%s", v ? v : "MPI plugin loaded",
           mpirun && *mpirun ? "; mpirun: " : "", mpirun && *mpirun ? mpirun : "");
}
