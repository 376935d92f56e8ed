/* `ctorch doctor` (docs/doctor.md): checks of this machine, this build and the data, each
 * with one verdict and one fix. The checks are split by what they look at: the system
 * (doctor_sys.c: CPU, cores, memory, /dev/shm, OpenBLAS, thread variables, data, run
 * directory) and the devices (doctor_dev.c: CUDA plugin, driver, GPUs, CUDA libraries, MPI,
 * the smoke test per device); cmd_doctor.c runs them and prints the table or the JSON. */
#ifndef CT_CLI_DOCTOR_H
#define CT_CLI_DOCTOR_H

#include <stddef.h>

typedef enum { DR_OK = 0, DR_WARNING, DR_PROBLEM } dr_verdict;

typedef struct {
    char check[32];    /* "cpu", "gpu cuda:0", "data cifar10", ... */
    dr_verdict verdict;
    char detail[1024]; /* what was found */
    char fix[768];     /* what to do; "" when nothing is to be done */
} dr_row;

typedef struct {
    dr_row *rows;
    int n, cap;
    const char *data_dir; /* --data-dir, or NULL */
    const char *run_dir;  /* --run-dir, or NULL */
    int want_cuda;        /* --device cuda[:N]: CUDA not usable is a problem */
    int want_index;       /* the N of --device cuda:N, -1 for all */
} dr_report;

/* Appends a row; detail is printf-formatted. A row that cannot be added (out of memory)
 * is dropped with a message on stderr. */
void dr_add(dr_report *r, const char *check, dr_verdict v, const char *fix, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Splits a library message "what happened. Fix: what to do" into its two parts. */
void dr_split_fix(const char *msg, char *detail, size_t dn, char *fix, size_t fn);

void dr_check_system(dr_report *r); /* cpu, cores, memory, shm, openblas, thread variables */
void dr_check_data(dr_report *r);   /* data directory and each dataset */
void dr_check_run_dir(dr_report *r);
void dr_check_cuda(dr_report *r);   /* CUDA plugin, driver, GPUs, CUDA libraries */
void dr_check_mpi(dr_report *r);
void dr_check_smoke(dr_report *r);  /* a small conv forward and backward per device */

#endif
