/* Helpers for tests that run the ctorch binary. */
#ifndef CT_TEST_CLI_UTIL_H
#define CT_TEST_CLI_UTIL_H

#include <sys/types.h>

/* build/ctorch, or $CTORCH_BIN */
const char *bin(void);
/* $CTORCH_DATA when it holds CIFAR-10's binary files, else NULL */
const char *data_dir(void);
/* A temporary directory for this process, removed at exit */
const char *tmpdir(void);
/* Runs a shell command with its output to `log`; returns the exit status (-1 if killed) */
int run(const char *cmd, const char *log);
/* Whether the file `log` contains needle (its first 64 KiB) */
int log_has(const char *log, const char *needle);
/* Starts cmd (through sh's exec: the pid is the command's) with its output to log */
pid_t spawn(const char *cmd, const char *log);
/* Highest step among dir/checkpoints/step-*.safetensors, -1 when none */
long newest_step(const char *dir);
/* Its last lines, to stderr (for a failing check) */
void show_log(const char *log);
/* `ctorch train --dataset cifar10 --data-dir $CTORCH_DATA ARGS --threads 2 --no-checkpoints
 * --run-dir RUN_DIR EXTRA` with its output to log (shown when the exit status is neither 0
 * nor 2); returns the exit status */
int cli_train(const char *args, const char *run_dir, const char *extra, const char *log);
/* The directory of this test binary, or $CT_TEST_BUILD_DIR */
const char *build_dir(void);
/* Points of the polyline with data-series="series" in an SVG text: 0 when there is no such
 * series, -1 when it has no points attribute */
int svg_series_points(const char *svg, const char *series);
/* A Python that imports `modules` (e.g. "torch, torchvision"): $CTORCH_PEER_PYTHON,
 * bench/.venv (bench/setup-peer.sh) or /usr/bin/python3; NULL when none does. The answer is
 * remembered per list of modules. */
const char *peer_python(const char *modules);
/* Runs `PY SCRIPT DIR` (PY: peer_python("torch, torchvision, safetensors.torch"), DIR:
 * tmpdir()/SUBDIR, written into dir): 0, or -1 without such a Python or when the script
 * fails (then a failed check, its log shown) */
#include <stddef.h>
int peer_script_once(const char *script, const char *subdir, char *dir, size_t n);

#endif
