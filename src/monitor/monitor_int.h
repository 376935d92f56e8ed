/* The monitor's state, shared by metrics.c (publishing, formatting) and server.c. */
#ifndef CT_MONITOR_INT_H
#define CT_MONITOR_INT_H

#include "monitor.h"

#include <pthread.h>
#include <stdarg.h>

/* Histogram bucket upper bounds (seconds); +Inf is implicit. */
enum { MON_WAIT_BUCKETS = 10, MON_STEP_BUCKETS = 12 };
extern const double mon_wait_bounds[MON_WAIT_BUCKETS];
extern const double mon_step_bounds[MON_STEP_BUCKETS];

typedef struct {
    uint64_t count;
    double sum;
    uint64_t bucket[MON_STEP_BUCKETS]; /* non-cumulative counts; the rest (> last) is count */
} mon_hist;

/* What the training thread publishes: copied whole by the server. */
typedef struct {
    int state, have_loss;
    double loss, train_acc, test_acc, lr, ips;
    int64_t epoch, steps, images, nan_events, amp_skipped;
    double last_ckpt; /* unix seconds, 0: none yet */
    mon_hist wait, step;
    double ips_t0;    /* window for images per second */
    int64_t ips_images0;
} mon_values;

struct mon_monitor {
    pthread_mutex_t mu;  /* guards v and the history; held for a few stores */
    mon_values v;
    /* constant after mon_start */
    char *run, *model, *dataset, *config, *labels; /* labels: run="..",model="..",rank=".." */
    int rank, world, gpu;
    int64_t epochs, spe, planned;
    double started, process_start;
    /* history: one point per logged row */
    mon_point *hist;
    size_t nhist, cap_hist;
    void *server; /* server.c's state */
};

/* A growable text buffer. */
typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} mon_buf;
void mon_buf_printf(mon_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mon_buf_puts(mon_buf *b, const char *s);
/* s as the inside of a JSON string or a Prometheus label value (both escape \ " \n). */
void mon_buf_escaped(mon_buf *b, const char *s, int json);

mon_monitor *mon__new(const mon_run_info *info);
void mon__free(mon_monitor *m);
double mon__now(void);

#endif
