/* The monitor's snapshot: what the training thread publishes (under a mutex held for a
 * few stores) and its formatting, from a copy, as Prometheus' text exposition format
 * (version 0.0.4) and as the JSON of /api/run and /api/history (docs/monitoring.md). */
#include "monitor_int.h"

#include "cli/run_info.h"
#include "ctorch.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

const double mon_wait_bounds[MON_WAIT_BUCKETS] = {0.0001, 0.0005, 0.001, 0.005, 0.01,
                                                  0.05,   0.1,    0.5,   1,     5};
const double mon_step_bounds[MON_STEP_BUCKETS] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                  0.25,  0.5,   1,    2.5,   5,    10};

double mon__now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------------ text buffer */
static void buf_reserve(mon_buf *b, size_t more) {
    if (b->oom || b->len + more + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return;
    }
    b->p = p;
    b->cap = cap;
}

void mon_buf_printf(mon_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char tmp[512];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        buf_reserve(b, (size_t)n);
        if (b->oom) return;
        memcpy(b->p + b->len, tmp, (size_t)n + 1);
        b->len += (size_t)n;
        return;
    }
    buf_reserve(b, (size_t)n);
    if (b->oom) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void mon_buf_puts(mon_buf *b, const char *s) {
    size_t n = strlen(s);
    buf_reserve(b, n);
    if (b->oom) return;
    memcpy(b->p + b->len, s, n + 1);
    b->len += n;
}

void mon_buf_escaped(mon_buf *b, const char *s, int json) {
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\\') mon_buf_puts(b, "\\\\");
        else if (c == '"') mon_buf_puts(b, "\\\"");
        else if (c == '\n') mon_buf_puts(b, "\\n");
        else if (json && c < 0x20) mon_buf_printf(b, "\\u%04x", c);
        else {
            char one[2] = {(char)c, 0};
            mon_buf_puts(b, one);
        }
    }
}

/* ------------------------------------------------------------------ lifetime */
static char *dup_or(const char *s, const char *dflt) {
    return strdup(s ? s : dflt);
}

/* The process's start, unix seconds: /proc/self/stat's starttime after boot. */
static double process_start_time(void) {
    double now = mon__now();
    FILE *f = fopen("/proc/self/stat", "r");
    char line[2048];
    unsigned long long start = 0;
    int ok = f && fgets(line, sizeof line, f);
    if (f) fclose(f);
    char *p = ok ? strrchr(line, ')') : NULL; /* the command name may hold spaces */
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d "
                            "%*d %*d %*d %llu", &start) != 1)
        return now;
    struct timespec up;
    clock_gettime(CLOCK_BOOTTIME, &up);
    double boot = now - ((double)up.tv_sec + 1e-9 * (double)up.tv_nsec);
    return boot + (double)start / (double)sysconf(_SC_CLK_TCK);
}

mon_monitor *mon__new(const mon_run_info *info) {
    mon_monitor *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    pthread_mutex_init(&m->mu, NULL);
    m->run = dup_or(info->run, "");
    m->model = dup_or(info->model, "");
    m->dataset = dup_or(info->dataset, "");
    m->config = dup_or(info->config, "{}");
    m->rank = info->rank;
    m->world = info->world_size;
    m->gpu = info->gpu;
    m->epochs = info->epochs;
    m->spe = info->steps_per_epoch;
    m->planned = info->planned_steps;
    m->started = mon__now();
    m->process_start = process_start_time();
    m->v.state = MON_STARTING;
    m->v.loss = m->v.train_acc = m->v.test_acc = m->v.lr = NAN;
    m->v.ips_t0 = m->started;
    mon_buf b = {0};
    mon_buf_puts(&b, "run=\"");
    mon_buf_escaped(&b, m->run, 0);
    mon_buf_puts(&b, "\",model=\"");
    mon_buf_escaped(&b, m->model, 0);
    mon_buf_printf(&b, "\",rank=\"%d\"", m->rank);
    m->labels = b.p;
    if (!m->run || !m->model || !m->dataset || !m->config || !m->labels || b.oom) {
        mon__free(m);
        return NULL;
    }
    return m;
}

void mon__free(mon_monitor *m) {
    if (!m) return;
    free(m->hist);
    free(m->run);
    free(m->model);
    free(m->dataset);
    free(m->config);
    free(m->labels);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

/* ------------------------------------------------------------------ publishing */
static void observe(mon_hist *h, const double *bounds, int nb, double v) {
    h->count++;
    h->sum += v;
    for (int i = 0; i < nb; i++)
        if (v <= bounds[i]) {
            h->bucket[i]++;
            return;
        }
}

void mon_step(mon_monitor *m, const mon_step_info *s) {
    if (!m) return;
    double now = mon__now();
    pthread_mutex_lock(&m->mu);
    mon_values *v = &m->v;
    v->state = MON_TRAINING;
    v->loss = s->loss;
    v->have_loss = 1;
    v->train_acc = s->train_accuracy;
    v->lr = s->lr;
    v->epoch = s->epoch;
    v->steps = s->steps;
    v->images += s->images;
    observe(&v->wait, mon_wait_bounds, MON_WAIT_BUCKETS, s->data_wait_s);
    observe(&v->step, mon_step_bounds, MON_STEP_BUCKETS, s->step_s);
    if (now - v->ips_t0 >= 1.0) { /* images per second over windows of at least 1 s */
        v->ips = (double)(v->images - v->ips_images0) / (now - v->ips_t0);
        v->ips_t0 = now;
        v->ips_images0 = v->images;
    }
    pthread_mutex_unlock(&m->mu);
}

void mon_state(mon_monitor *m, int state) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->v.state = state;
    if (state != MON_TRAINING) m->v.ips = 0;
    pthread_mutex_unlock(&m->mu);
}

void mon_nan_event(mon_monitor *m, double loss) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->v.nan_events++;
    m->v.loss = loss;
    m->v.have_loss = 1;
    pthread_mutex_unlock(&m->mu);
}

void mon_amp_skipped(mon_monitor *m, int64_t total) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->v.amp_skipped = total;
    pthread_mutex_unlock(&m->mu);
}

void mon_checkpoint(mon_monitor *m, double unix_time) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->v.last_ckpt = unix_time;
    pthread_mutex_unlock(&m->mu);
}

void mon_test_accuracy(mon_monitor *m, double acc) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->v.test_acc = acc;
    pthread_mutex_unlock(&m->mu);
}

void mon_position(mon_monitor *m, int64_t epoch, int64_t steps) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->v.epoch = epoch;
    m->v.steps = steps;
    pthread_mutex_unlock(&m->mu);
}

/* Rows are few (one per epoch). */
void mon_history_add(mon_monitor *m, const mon_point *p) {
    if (!m || !p) return;
    pthread_mutex_lock(&m->mu);
    if (m->nhist == m->cap_hist) {
        size_t cap = m->cap_hist ? 2 * m->cap_hist : 64;
        mon_point *h = realloc(m->hist, cap * sizeof *h);
        if (h) {
            m->hist = h;
            m->cap_hist = cap;
        }
    }
    if (m->nhist < m->cap_hist) m->hist[m->nhist++] = *p;
    pthread_mutex_unlock(&m->mu);
}

/* ------------------------------------------------------------------ /metrics */
/* A sample value: Prometheus writes NaN, +Inf, -Inf. */
static void put_value(mon_buf *b, double v) {
    if (isnan(v)) mon_buf_puts(b, " NaN\n");
    else if (isinf(v)) mon_buf_puts(b, v > 0 ? " +Inf\n" : " -Inf\n");
    else if (v == floor(v) && fabs(v) < 1e15) mon_buf_printf(b, " %.0f\n", v);
    else mon_buf_printf(b, " %.17g\n", v);
}

static void family(mon_buf *b, const char *name, const char *type, const char *help) {
    mon_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{run,model,rank[,extra]} value */
static void sample(mon_buf *b, const mon_monitor *m, const char *name, const char *extra, double v) {
    mon_buf_printf(b, "%s{%s%s%s}", name, m->labels, extra && *extra ? "," : "", extra ? extra : "");
    put_value(b, v);
}

static void gauge(mon_buf *b, const mon_monitor *m, const char *name, const char *help, double v) {
    family(b, name, "gauge", help);
    sample(b, m, name, NULL, v);
}

static void counter(mon_buf *b, const mon_monitor *m, const char *name, const char *help, double v) {
    family(b, name, "counter", help);
    sample(b, m, name, NULL, v);
}

static void histogram(mon_buf *b, const mon_monitor *m, const char *name, const char *help,
                      const mon_hist *h, const double *bounds, int nb) {
    char n[128], le[64];
    family(b, name, "histogram", help);
    snprintf(n, sizeof n, "%s_bucket", name);
    uint64_t cum = 0;
    for (int i = 0; i < nb; i++) {
        cum += h->bucket[i];
        snprintf(le, sizeof le, "le=\"%g\"", bounds[i]);
        sample(b, m, n, le, (double)cum);
    }
    sample(b, m, n, "le=\"+Inf\"", (double)h->count);
    snprintf(n, sizeof n, "%s_sum", name);
    sample(b, m, n, NULL, h->sum);
    snprintf(n, sizeof n, "%s_count", name);
    sample(b, m, n, NULL, (double)h->count);
}

static void process_metrics(mon_buf *b, const mon_monitor *m) {
    long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        long size;
        if (fscanf(f, "%ld %ld", &size, &pages) != 2) pages = 0;
        fclose(f);
    }
    struct rusage ru;
    double cpu = 0;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        cpu = (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
              (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
    mon_buf_printf(b, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                      "# TYPE process_resident_memory_bytes gauge\n"
                      "process_resident_memory_bytes %.0f\n",
                   (double)pages * (double)sysconf(_SC_PAGESIZE));
    mon_buf_printf(b, "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
                      "# TYPE process_cpu_seconds_total counter\n"
                      "process_cpu_seconds_total %.3f\n", cpu);
    mon_buf_printf(b, "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
                      "# TYPE process_start_time_seconds gauge\n"
                      "process_start_time_seconds %.3f\n", m->process_start);
}

#define GPU_FAMILY(field, name, type, help, expr)                                           \
    do {                                                                                     \
        int any = 0;                                                                         \
        for (int i = 0; i < ng; i++) {                                                       \
            if (!g[i].field) continue;                                                       \
            if (!any++) family(b, name, type, help);                                         \
            snprintf(lab, sizeof lab, "gpu=\"%d\"", g[i].index);                            \
            sample(b, m, name, lab, (expr));                                                 \
        }                                                                                    \
    } while (0)

static void gpu_metrics(mon_buf *b, const mon_monitor *m, const mon_gpu_reading *g, int ng) {
    char lab[160];
    GPU_FAMILY(have_util, "ctorch_gpu_utilization_ratio", "gauge",
               "Fraction of the last sample period the GPU was busy (NVML), 0 to 1.", g[i].util);
    GPU_FAMILY(have_mem, "ctorch_gpu_memory_used_bytes", "gauge", "GPU memory in use (NVML).",
               g[i].mem_used);
    GPU_FAMILY(have_mem, "ctorch_gpu_memory_total_bytes", "gauge", "GPU memory installed (NVML).",
               g[i].mem_total);
    GPU_FAMILY(have_temp, "ctorch_gpu_temperature_celsius", "gauge", "GPU core temperature (NVML).",
               g[i].temp_c);
    GPU_FAMILY(have_power, "ctorch_gpu_power_watts", "gauge", "GPU power draw (NVML).", g[i].power_w);
    GPU_FAMILY(have_ecc, "ctorch_gpu_ecc_errors_total", "counter",
               "Corrected and uncorrected ECC errors since the driver loaded (NVML, volatile).",
               g[i].ecc_total);
    int any = 0;
    for (int i = 0; i < ng; i++) {
        if (!g[i].have_throttle) continue;
        if (!any++)
            family(b, "ctorch_gpu_throttle_active", "gauge",
                   "1 while the GPU's clocks are held down for this reason (NVML).");
        for (int k = 0; k < mon_n_throttle_reasons; k++) {
            snprintf(lab, sizeof lab, "gpu=\"%d\",reason=\"%s\"", g[i].index, mon_throttle_reasons[k].name);
            sample(b, m, "ctorch_gpu_throttle_active", lab,
                   (g[i].throttle & mon_throttle_reasons[k].bit) ? 1 : 0);
        }
    }
}

static void train_metrics(mon_buf *b, const mon_monitor *m, const mon_values *v) {
    if (v->have_loss)
        gauge(b, m, "ctorch_train_loss", "Loss of the last training step (NaN after a non-finite loss).",
              v->loss);
    if (!isnan(v->train_acc))
        gauge(b, m, "ctorch_train_accuracy", "Training accuracy of the current epoch so far, 0 to 1.",
              v->train_acc);
    if (!isnan(v->test_acc))
        gauge(b, m, "ctorch_test_accuracy", "Test accuracy of the last evaluation, 0 to 1.", v->test_acc);
    if (!isnan(v->lr)) gauge(b, m, "ctorch_learning_rate", "Learning rate of the last step.", v->lr);
    gauge(b, m, "ctorch_epoch", "Current epoch, counted from 1.", (double)v->epoch);
    counter(b, m, "ctorch_steps_total", "Optimizer steps taken by the run.", (double)v->steps);
    counter(b, m, "ctorch_images_total", "Training images processed by this process.", (double)v->images);
    gauge(b, m, "ctorch_images_per_second", "Training images per second over the last second or more.",
          v->ips);
    histogram(b, m, "ctorch_data_wait_seconds", "Seconds each step waited for its batch.", &v->wait,
              mon_wait_bounds, MON_WAIT_BUCKETS);
    histogram(b, m, "ctorch_step_seconds", "Seconds of each step's forward, backward and update.",
              &v->step, mon_step_bounds, MON_STEP_BUCKETS);
    if (v->last_ckpt > 0)
        gauge(b, m, "ctorch_last_checkpoint_timestamp_seconds",
              "Unix time of the last checkpoint written successfully.", v->last_ckpt);
    counter(b, m, "ctorch_nan_events_total", "Steps whose loss was NaN or infinite.",
            (double)v->nan_events);
    counter(b, m, "ctorch_amp_skipped_steps_total",
            "Steps the GradScaler skipped for inf/NaN gradients (--amp fp16).", (double)v->amp_skipped);
    gauge(b, m, "ctorch_run_active", "1 while the run is training, 0 before and after.",
          v->state == MON_TRAINING ? 1 : 0);
    gauge(b, m, "ctorch_planned_steps", "Optimizer steps the run will take in all.", (double)m->planned);
}

char *mon_format_metrics(mon_monitor *m, size_t *len) {
    mon_values v;
    pthread_mutex_lock(&m->mu);
    v = m->v;
    pthread_mutex_unlock(&m->mu);
    mon_gpu_reading g[16];
    int ng = m->gpu ? mon_gpu_read(g, 16) : 0;
    mon_buf b = {0};
    train_metrics(&b, m, &v);
    char extra[300];
    snprintf(extra, sizeof extra, "version=\"%s\",commit=\"%s\"", CT_VERSION, cli_build_commit());
    family(&b, "ctorch_build_info", "gauge", "ctorch's version and commit; always 1.");
    sample(&b, m, "ctorch_build_info", extra, 1);
    gpu_metrics(&b, m, g, ng);
    process_metrics(&b, m);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

/* ------------------------------------------------------------------ JSON */
static const char *state_name(int s) {
    return s == MON_TRAINING ? "training" : s == MON_FINISHED ? "finished" : s == MON_FAILED ? "failed"
                                                                                          : "starting";
}

static void json_str(mon_buf *b, const char *key, const char *s) {
    mon_buf_printf(b, "\"%s\":\"", key);
    mon_buf_escaped(b, s, 1);
    mon_buf_puts(b, "\",");
}

char *mon_format_run(mon_monitor *m, size_t *len) {
    int state;
    pthread_mutex_lock(&m->mu);
    state = m->v.state;
    pthread_mutex_unlock(&m->mu);
    mon_buf b = {0};
    mon_buf_puts(&b, "{");
    json_str(&b, "run", m->run);
    json_str(&b, "model", m->model);
    json_str(&b, "dataset", m->dataset);
    mon_buf_printf(&b, "\"rank\":%d,\"world_size\":%d,", m->rank, m->world);
    json_str(&b, "state", state_name(state));
    mon_buf_printf(&b, "\"epochs\":%lld,\"steps_per_epoch\":%lld,\"planned_steps\":%lld,"
                       "\"started_unix\":%.3f,\"config\":%s}\n",
                   (long long)m->epochs, (long long)m->spe, (long long)m->planned, m->started, m->config);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

static void json_num(mon_buf *b, const char *key, double v, const char *fmt) {
    mon_buf_printf(b, "\"%s\":", key);
    if (isfinite(v)) mon_buf_printf(b, fmt, v);
    else mon_buf_puts(b, "null");
}

char *mon_format_history(mon_monitor *m, size_t *len) {
    mon_buf b = {0};
    mon_buf_puts(&b, "{\"points\":[");
    pthread_mutex_lock(&m->mu); /* rows are few: formatted under the lock */
    for (size_t i = 0; i < m->nhist; i++) {
        const mon_point *p = &m->hist[i];
        mon_buf_printf(&b, "%s{\"step\":%lld,", i ? "," : "", (long long)p->step);
        json_num(&b, "time", p->time, "%.3f");
        mon_buf_printf(&b, ",\"epoch\":%lld,", (long long)p->epoch);
        json_num(&b, "loss", p->loss, "%.9g");
        mon_buf_puts(&b, ",");
        json_num(&b, "train_accuracy", p->train_accuracy, "%.9g");
        mon_buf_puts(&b, ",");
        json_num(&b, "test_accuracy", p->test_accuracy, "%.9g");
        mon_buf_puts(&b, ",");
        json_num(&b, "lr", p->lr, "%.9g");
        mon_buf_puts(&b, ",");
        json_num(&b, "images_per_second", p->images_per_second, "%.3f");
        mon_buf_puts(&b, "}");
    }
    pthread_mutex_unlock(&m->mu);
    mon_buf_puts(&b, "]}\n");
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
