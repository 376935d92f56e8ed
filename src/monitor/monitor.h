/* The training monitor (docs/monitoring.md): `ctorch train --metrics-port P` serves
 * Prometheus' text exposition format on /metrics, the run's description on /api/run, its
 * logged rows on /api/history and the live page on / (libmicrohttpd, src/monitor/server.c).
 *
 * The training thread publishes into a snapshot under a mutex held for a few stores
 * (mon_step and friends: no allocation, no I/O, no formatting); the server thread copies
 * the snapshot and formats from the copy, so training never waits on a client. Every
 * mon_* publishing function accepts NULL (no monitor) and does nothing then. */
#ifndef CT_MONITOR_H
#define CT_MONITOR_H

#include <stddef.h>
#include <stdint.h>

typedef struct mon_monitor mon_monitor;

enum { MON_STARTING, MON_TRAINING, MON_FINISHED, MON_FAILED };

/* What /api/run says and the labels of every ctorch_ series. */
typedef struct {
    const char *run;     /* the run directory's name (label run) */
    const char *model, *dataset;
    int rank, world_size;
    int64_t epochs, steps_per_epoch, planned_steps;
    int gpu;             /* the run uses a GPU: NVML's series are exported */
    const char *config;  /* the run's options as a JSON object (text), copied */
} mon_run_info;

typedef struct {
    const char *addr;       /* default 127.0.0.1 */
    int port;               /* 0: any free port (mon_port says which) */
    const char *token_file; /* bearer token; required for a non-loopback addr */
} mon_opts;

/* 1 when this ctorch was built with libmicrohttpd. */
int mon_available(void);
/* Checks the options before anything is started: the address parses, a non-loopback
 * address has a token file, the token file is readable and not empty. 0, or -1 with a
 * message in err (a usage error: exit 2). */
int mon_check(const mon_opts *o, char *err, size_t n);
/* Binds and starts the server thread. NULL with a message in err (the port in use...). */
mon_monitor *mon_start(const mon_opts *o, const mon_run_info *info, char *err, size_t n);
int mon_port(const mon_monitor *m);
/* Stops the server and frees everything. NULL is fine. */
void mon_stop(mon_monitor *m);

/* ---- publishing, from the training thread ---- */
/* One optimizer step: its loss, the epoch's running accuracy, the lr, the position
 * (epoch counted from 1, steps taken), the images it trained on, and the seconds spent
 * waiting for the batch and computing the step. */
typedef struct {
    double loss, train_accuracy, lr;
    int64_t epoch, steps, images;
    double data_wait_s, step_s;
} mon_step_info;
void mon_step(mon_monitor *m, const mon_step_info *s);
void mon_state(mon_monitor *m, int state);
void mon_nan_event(mon_monitor *m, double loss);
void mon_amp_skipped(mon_monitor *m, int64_t total);
void mon_checkpoint(mon_monitor *m, double unix_time);
void mon_test_accuracy(mon_monitor *m, double acc);
/* Sets the position (a resumed run starts at its checkpoint's step). */
void mon_position(mon_monitor *m, int64_t epoch, int64_t steps);
/* One logged row (a metrics.jsonl row: the figures of an epoch), for /api/history; NaN
 * where a figure is unknown (time: rows restored by --resume). */
typedef struct {
    int64_t step, epoch;
    double time, loss, train_accuracy, test_accuracy, lr, images_per_second;
} mon_point;
void mon_history_add(mon_monitor *m, const mon_point *p);

/* ---- for the server (src/monitor/metrics.c) ---- */
/* The exposition text of the current snapshot (malloc'd, *len its length), or NULL. */
char *mon_format_metrics(mon_monitor *m, size_t *len);
char *mon_format_run(mon_monitor *m, size_t *len);
char *mon_format_history(mon_monitor *m, size_t *len);

/* ---- NVML (src/monitor/gpu.c): per-GPU readings, absent without a driver ---- */
typedef struct {
    int index;
    int have_util, have_mem, have_temp, have_power, have_ecc, have_throttle;
    double util;                  /* 0..1 */
    double mem_used, mem_total;   /* bytes */
    double temp_c, power_w;
    double ecc_total;             /* corrected + uncorrected, volatile (since driver load) */
    uint64_t throttle;            /* NVML's reason bits */
} mon_gpu_reading;
/* Up to max GPUs' readings; 0 when NVML is not there (never an error). */
int mon_gpu_read(mon_gpu_reading *out, int max);
/* The throttle reasons named in ctorch_gpu_throttle_active{reason}. */
typedef struct {
    uint64_t bit;
    const char *name;
} mon_throttle_reason;
extern const mon_throttle_reason mon_throttle_reasons[];
extern const int mon_n_throttle_reasons;

#endif
