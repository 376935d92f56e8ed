/* The table a process-group engine plugin returns (libctorch_mpi.so: MPI). The core
 * (src/dist/process_group.c) calls every collective from its one communication thread,
 * in the order the program queued them; the plugin's calls are blocking. Buffers are
 * host memory. Errors: -1 with a message in the caller's buffer (err, errn). */
#ifndef CT_DIST_PLUGIN_H
#define CT_DIST_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#define CT_DIST_PLUGIN_ABI 2

/* Element types and reductions the plugin knows (the core maps ct_dtype onto them). */
enum { CT_DIST_F32 = 0, CT_DIST_F64, CT_DIST_I64, CT_DIST_I32, CT_DIST_U8 };
enum { CT_DIST_SUM = 0, CT_DIST_MAX, CT_DIST_MIN };

typedef struct ct_dist_plugin {
    int abi;
    const char *name; /* "mpi" */
    /* MPI_Init_thread; rank, size, rank on this host and processes on this host. */
    int (*init)(int *rank, int *size, int *local_rank, int *local_size, char *err, size_t errn);
    int (*all_reduce)(void *buf, int64_t n, int type, int op, char *err, size_t errn);
    int (*broadcast)(void *buf, int64_t bytes, int root, char *err, size_t errn);
    int (*all_gather)(const void *in, void *out, int64_t bytes, char *err, size_t errn);
    int (*barrier)(char *err, size_t errn);
    void (*abort)(int code); /* ends every rank of the job */
    int (*finalize)(void);
    const char *(*version)(void); /* the library's own version text */
    /* The core's "a caller is blocked waiting" counter (read with a relaxed atomic load):
     * while it is nonzero the plugin may poll without sleeping, as the waiting thread's
     * core is otherwise idle; while it is zero, computation runs beside the collective and
     * the plugin must not spin. */
    void (*set_waiting_flag)(const int *waiting);
} ct_dist_plugin;

typedef const ct_dist_plugin *(*ct_dist_plugin_entry_fn)(void);

#endif
