/* Per-GPU readings through NVML, opened at run time (dlopen("libnvidia-ml.so.1")): no
 * driver, no library or a failing call means no GPU series, never an error. The few NVML
 * types used are declared here (NVML's ABI: the _v2 entry points of nvml.h). */
#include "monitor.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

typedef void *nvml_dev;
typedef struct {
    unsigned int gpu, memory;
} nvml_util;
typedef struct {
    unsigned long long total, free, used;
} nvml_mem;

typedef struct {
    int (*init)(void);
    int (*count)(unsigned int *);
    int (*handle)(unsigned int, nvml_dev *);
    int (*util)(nvml_dev, nvml_util *);
    int (*mem)(nvml_dev, nvml_mem *);
    int (*temp)(nvml_dev, int, unsigned int *);
    int (*power)(nvml_dev, unsigned int *);
    int (*ecc)(nvml_dev, int, int, unsigned long long *);
    int (*throttle)(nvml_dev, unsigned long long *);
} nvml_api;

enum { NVML_SUCCESS = 0, NVML_TEMPERATURE_GPU = 0, NVML_CORRECTED = 0, NVML_UNCORRECTED = 1,
       NVML_VOLATILE_ECC = 0 };

const mon_throttle_reason mon_throttle_reasons[] = {
    {0x1ull, "gpu_idle"},           {0x2ull, "applications_clocks_setting"},
    {0x4ull, "sw_power_cap"},       {0x8ull, "hw_slowdown"},
    {0x10ull, "sync_boost"},        {0x20ull, "sw_thermal_slowdown"},
    {0x40ull, "hw_thermal_slowdown"}, {0x80ull, "hw_power_brake_slowdown"},
    {0x100ull, "display_clock_setting"},
};
const int mon_n_throttle_reasons = (int)(sizeof mon_throttle_reasons / sizeof mon_throttle_reasons[0]);

static nvml_api g_api;
static int g_ok;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void load(void) {
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) return;
#define SYM(field, name) *(void **)&g_api.field = dlsym(h, name)
    SYM(init, "nvmlInit_v2");
    SYM(count, "nvmlDeviceGetCount_v2");
    SYM(handle, "nvmlDeviceGetHandleByIndex_v2");
    SYM(util, "nvmlDeviceGetUtilizationRates");
    SYM(mem, "nvmlDeviceGetMemoryInfo");
    SYM(temp, "nvmlDeviceGetTemperature");
    SYM(power, "nvmlDeviceGetPowerUsage");
    SYM(ecc, "nvmlDeviceGetTotalEccErrors");
    SYM(throttle, "nvmlDeviceGetCurrentClocksThrottleReasons");
#undef SYM
    if (!g_api.init || !g_api.count || !g_api.handle || g_api.init() != NVML_SUCCESS) {
        dlclose(h);
        return;
    }
    g_ok = 1; /* kept loaded for the process's life */
}

int mon_gpu_read(mon_gpu_reading *out, int max) {
    pthread_once(&g_once, load);
    unsigned int n = 0;
    if (!g_ok || g_api.count(&n) != NVML_SUCCESS) return 0;
    int k = 0;
    for (unsigned int i = 0; i < n && k < max; i++) {
        nvml_dev d;
        if (g_api.handle(i, &d) != NVML_SUCCESS) continue;
        mon_gpu_reading *r = &out[k++];
        *r = (mon_gpu_reading){.index = (int)i};
        nvml_util u;
        nvml_mem mm;
        unsigned int t, p;
        unsigned long long c, uc, th;
        if (g_api.util && g_api.util(d, &u) == NVML_SUCCESS) r->have_util = 1, r->util = u.gpu / 100.0;
        if (g_api.mem && g_api.mem(d, &mm) == NVML_SUCCESS)
            r->have_mem = 1, r->mem_used = (double)mm.used, r->mem_total = (double)mm.total;
        if (g_api.temp && g_api.temp(d, NVML_TEMPERATURE_GPU, &t) == NVML_SUCCESS)
            r->have_temp = 1, r->temp_c = t;
        if (g_api.power && g_api.power(d, &p) == NVML_SUCCESS) r->have_power = 1, r->power_w = p / 1000.0;
        if (g_api.ecc && g_api.ecc(d, NVML_CORRECTED, NVML_VOLATILE_ECC, &c) == NVML_SUCCESS &&
            g_api.ecc(d, NVML_UNCORRECTED, NVML_VOLATILE_ECC, &uc) == NVML_SUCCESS)
            r->have_ecc = 1, r->ecc_total = (double)(c + uc);
        if (g_api.throttle && g_api.throttle(d, &th) == NVML_SUCCESS) r->have_throttle = 1, r->throttle = th;
    }
    return k;
}
