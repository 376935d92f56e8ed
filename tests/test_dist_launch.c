/* ctorch launch (issue 13): usage errors, the ranks' output, naming the rank that failed
 * (an error, a SIGKILL), restarts from the newest checkpoint, and a real two-host run made
 * of two network namespaces joined by a veth pair, which must give the same weights as two
 * ranks on one host. The tests that need mpirun skip without it; the namespace tests skip
 * without root and `ip netns`. */
#include "test.h"
#include "cli_util.h"
#include "ctorch_io.h"

#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ helpers */
static int have_mpirun(void) {
    return system("command -v mpirun >/dev/null 2>&1") == 0;
}

static const char *mnist_dir(void) {
    const char *d = getenv("CTORCH_DATA");
    if (!d) return NULL;
    char p[1024];
    snprintf(p, sizeof p, "%s/mnist/train-images-idx3-ubyte.gz", d);
    return access(p, R_OK) == 0 ? d : NULL;
}

/* build/ctorch as an absolute path (the namespace tests start it from elsewhere) */
static const char *abs_bin(void) {
    static char p[PATH_MAX];
    if (!p[0] && !realpath(bin(), p)) snprintf(p, sizeof p, "%s", bin());
    return p;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}


/* Exit status of pid (a `timeout 120 ...` command), waiting at most `secs` (then SIGKILL:
 * -1000); -sig when killed. */
static int reap_within(pid_t pid, double secs) {
    double t0 = now_s();
    int st;
    while (now_s() - t0 < secs) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
        if (r < 0) return -2000;
        sleep_ms(20);
    }
    kill(-pid, SIGKILL); /* timeout(1)'s group: it and the launcher (mpirun follows) */
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1000;
}

/* The last non-empty line of a log (static buffer). */
static const char *last_line(const char *log) {
    static char last[4096];
    char line[4096];
    last[0] = 0;
    FILE *f = fopen(log, "r");
    while (f && fgets(line, sizeof line, f)) {
        size_t n = strlen(line);
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (n) memcpy(last, line, n + 1);
    }
    if (f) fclose(f);
    return last;
}

static int ppid_of(pid_t pid) {
    char p[64], buf[512];
    snprintf(p, sizeof p, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(p, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *e = strrchr(buf, ')');
    int ppid = -1;
    if (!e || sscanf(e + 1, " %*c %d", &ppid) != 1) return -1;
    return ppid;
}

/* Whether pid's environment holds the entry `kv` ("NAME=value"). */
static int env_has(pid_t pid, const char *kv) {
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/environ", (int)pid);
    FILE *f = fopen(p, "r");
    if (!f) return 0;
    static char buf[1 << 17];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    for (size_t i = 0; i < n; i += strlen(buf + i) + 1)
        if (!strcmp(buf + i, kv)) return 1;
    return 0;
}

/* The process among root's descendants whose environment says it is MPI rank `rank`
 * (mpirun starts the ranks directly), or -1. */
static pid_t find_rank(pid_t root, int rank) {
    char kv[64];
    snprintf(kv, sizeof kv, "OMPI_COMM_WORLD_RANK=%d", rank);
    DIR *d = opendir("/proc");
    struct dirent *e;
    pid_t found = -1;
    while (d && found < 0 && (e = readdir(d))) {
        if (!isdigit((unsigned char)e->d_name[0])) continue;
        pid_t pid = (pid_t)atoi(e->d_name);
        int up = pid, hops = 0;
        while (up > 1 && up != root && hops++ < 64) up = ppid_of(up);
        if (up == root && env_has(pid, kv)) found = pid;
    }
    if (d) closedir(d);
    return found;
}


static int sha_in(const char *dir, const char *name, char hex[65]) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return ct_sha256_file(p, hex);
}

static json_t *manifest_of(const char *dir) {
    char p[1200];
    json_error_t je;
    snprintf(p, sizeof p, "%s/manifest.json", dir);
    return json_load_file(p, 0, &je);
}

/* ------------------------------------------------------------------ usage */
TEST(launch_usage_errors_exit_2) {
    char cmd[8192], log[600];
    snprintf(log, sizeof log, "%s/launch-usage.log", tmpdir());
    static const struct {
        const char *args, *needle;
    } cases[] = {
        {"--nproc-per-node 2 train --model mlp", "goes after `--`"},
        {"--nproc-per-node 2 --", "nothing to run after `--`"},
        {"--nproc-per-node 0 -- train", "--nproc-per-node must be between 1"},
        {"--nproc-per-node two -- train", "--nproc-per-node expects an integer"},
        {"--nproc-per-node 2 --hostfile /nonexistent/hosts -- train", "--hostfile /nonexistent/hosts"},
        {"--max-restarts -1 -- train", "--max-restarts must be between 0"},
        {"--bogus 1 -- train", "unknown option '--bogus'"},
        {"-- download mnist", "cannot launch 'download'"},
        {"-- nosuchcommand", "cannot launch 'nosuchcommand'"},
        {"--dist-timeout 5 -- eval --model mlp", "--dist-timeout applies to `train`"},
        {"-- ./no/such/program", "cannot run ./no/such/program"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(cmd, sizeof cmd, "%s launch %s", bin(), cases[i].args);
        int rc = run(cmd, log);
        CHECK_MSG(rc == 2 && log_has(log, cases[i].needle), "`launch %s`: exit %d, expected 2 "
                  "and '%s'", cases[i].args, rc, cases[i].needle);
        if (rc != 2 || !log_has(log, cases[i].needle)) show_log(log);
    }
    /* no mpirun: the package to install (no PATH, no CTORCH_MPIRUN) */
    snprintf(cmd, sizeof cmd, "env -u CTORCH_MPIRUN PATH=/nonexistent %s launch --nproc-per-node 2 "
             "-- train --model mlp --dataset mnist", abs_bin());
    CHECK(run(cmd, log) == 2);
    CHECK(log_has(log, "mpirun not found: install openmpi-bin (apt-get install openmpi-bin "
                       "libopenmpi-dev)"));
    snprintf(cmd, sizeof cmd, "CTORCH_MPIRUN=/nonexistent/mpirun %s launch -- train --model mlp", bin());
    CHECK(run(cmd, log) == 2 && log_has(log, "CTORCH_MPIRUN=/nonexistent/mpirun: not found"));
    /* `ctorch help launch`, and --help after `--` belongs to the command */
    snprintf(cmd, sizeof cmd, "%s help launch", bin());
    CHECK(run(cmd, log) == 0 && log_has(log, "--nproc-per-node N") && log_has(log, "--max-restarts K"));
    snprintf(cmd, sizeof cmd, "%s launch --help", bin());
    CHECK(run(cmd, log) == 0 && log_has(log, "usage: ctorch launch"));
}

/* ------------------------------------------------------------------ plain programs */
TEST(launch_prefixes_each_rank_output_and_sets_threads) {
    if (!have_mpirun()) SKIP("mpirun not installed (openmpi-bin)");
    char cmd[4096], log[600];
    snprintf(log, sizeof log, "%s/launch-out.log", tmpdir());
    /* a line written in two pieces stays one line */
    snprintf(cmd, sizeof cmd, "env -u CTORCH_NUM_THREADS -u OMP_NUM_THREADS timeout 60 %s launch "
             "--nproc-per-node 2 -- /bin/sh -c 'echo out $OMPI_COMM_WORLD_RANK threads "
             "$CTORCH_NUM_THREADS $OMP_NUM_THREADS; printf \"two \"; sleep 0.2; echo pieces; "
             "echo err $OMPI_COMM_WORLD_RANK >&2'", bin());
    int rc = run(cmd, log);
    CHECK(rc == 0);
    cpu_set_t set;
    CPU_ZERO(&set);
    int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    int t = cpus / 2 > 1 ? cpus / 2 : 1;
    char want[128];
    for (int r = 0; r < 2; r++) {
        snprintf(want, sizeof want, "[rank %d] out %d threads %d %d\n", r, r, t, t);
        CHECK_MSG(log_has(log, want), "missing: %s", want);
        snprintf(want, sizeof want, "[rank %d] two pieces\n", r);
        CHECK_MSG(log_has(log, want), "missing: %s", want);
        snprintf(want, sizeof want, "[rank %d] err %d\n", r, r);
        CHECK_MSG(log_has(log, want), "missing: %s", want);
    }
    CHECK(!log_has(log, "JOB MAP")); /* mpirun's job map is read, not shown */
    if (rc != 0) show_log(log);
    /* a thread count set by the user is passed on as it is */
    snprintf(cmd, sizeof cmd, "env -u CTORCH_NUM_THREADS OMP_NUM_THREADS=3 timeout 60 %s launch "
             "--nproc-per-node 2 -- /bin/sh -c 'echo t=${CTORCH_NUM_THREADS:-unset},$OMP_NUM_THREADS'",
             bin());
    CHECK(run(cmd, log) == 0 && log_has(log, "[rank 1] t=unset,3\n"));
    /* the ranks see the launcher's command line (train records it in its manifest) */
    snprintf(cmd, sizeof cmd, "timeout 60 %s launch --nproc-per-node 2 -- /bin/sh -c "
             "'echo \"$CTORCH_LAUNCH_COMMAND\"'", bin());
    CHECK(run(cmd, log) == 0 && log_has(log, "[rank 1] ctorch launch --nproc-per-node 2 -- /bin/sh "
                                             "-c 'echo \"$CTORCH_LAUNCH_COMMAND\"'\n"));
    /* more ranks than cores: oversubscribed, each with one thread */
    snprintf(cmd, sizeof cmd, "env -u CTORCH_NUM_THREADS -u OMP_NUM_THREADS timeout 60 %s launch "
             "--nproc-per-node %d -- /bin/sh -c 'echo n=$OMPI_COMM_WORLD_SIZE t=$CTORCH_NUM_THREADS'",
             bin(), cpus + 1);
    snprintf(want, sizeof want, "[rank %d] n=%d t=1\n", cpus, cpus + 1);
    rc = run(cmd, log);
    CHECK_MSG(rc == 0 && log_has(log, want), "--nproc-per-node %d: exit %d", cpus + 1, rc);
    if (rc != 0) show_log(log);
}

TEST(launch_names_the_failing_rank_host_and_error) {
    if (!have_mpirun()) SKIP("mpirun not installed (openmpi-bin)");
    char cmd[4096], log[600];
    snprintf(log, sizeof log, "%s/launch-fail.log", tmpdir());
    /* rank 1 fails at once; rank 0 would run 30 s: the job ends with it */
    snprintf(cmd, sizeof cmd, "timeout 60 %s launch --nproc-per-node 2 -- /bin/sh -c "
             "'if [ $OMPI_COMM_WORLD_RANK = 1 ]; then echo \"some output\"; "
             "echo \"ctorch train (rank 1 on $(hostname)): boom in step 3\" >&2; exit 3; fi; "
             "sleep 30'", bin());
    double t0 = now_s();
    int rc = run(cmd, log);
    double secs = now_s() - t0;
    char host[256] = "", want[600];
    gethostname(host, sizeof host);
    snprintf(want, sizeof want, "ctorch launch: rank 1 on host %s failed: exit 3: ctorch train: "
             "boom in step 3", host);
    CHECK_MSG(rc == 1, "exit %d", rc);
    CHECK_MSG(!strcmp(last_line(log), want), "last line '%s', expected '%s'", last_line(log), want);
    CHECK_MSG(secs < 20, "the job took %.1f s to end after rank 1 failed", secs);
    CHECK(log_has(log, "[rank 1] some output"));
    CHECK(!log_has(log, "Primary job")); /* mpirun's box is summarised by the last line */
    if (rc != 1) show_log(log);
    /* a rank killed by a signal (once running: one killed at its very start can end the
     * job before mpirun reports which) */
    snprintf(cmd, sizeof cmd, "timeout 60 %s launch --nproc-per-node 2 -- /bin/sh -c "
             "'if [ $OMPI_COMM_WORLD_RANK = 1 ]; then sleep 0.5; kill -9 $$; fi; sleep 30'", bin());
    t0 = now_s();
    rc = run(cmd, log);
    secs = now_s() - t0;
    snprintf(want, sizeof want, "ctorch launch: rank 1 on host %s failed: killed by signal 9 (Killed)", host);
    CHECK_MSG(rc == 1, "exit %d", rc);
    CHECK_MSG(!strcmp(last_line(log), want), "last line '%s', expected '%s'", last_line(log), want);
    CHECK_MSG(secs < 20, "the job took %.1f s to end after rank 1 was killed", secs);
    /* a rank's usage error (exit 2) is the launcher's exit 2, and not restarted */
    snprintf(cmd, sizeof cmd, "timeout 60 %s launch --nproc-per-node 2 --max-restarts 3 -- "
             "/bin/sh -c 'echo \"ctorch train: --model is required\" >&2; exit 2'", bin());
    rc = run(cmd, log);
    CHECK_MSG(rc == 2, "exit %d", rc);
    CHECK(strstr(last_line(log), "failed: exit 2: ctorch train: --model is required") != NULL);
    CHECK(!log_has(log, "restarting"));
}

TEST(launch_restarts_a_failed_job_up_to_max_restarts) {
    if (!have_mpirun()) SKIP("mpirun not installed (openmpi-bin)");
    char cmd[4096], log[600], marks[600];
    snprintf(log, sizeof log, "%s/launch-restart.log", tmpdir());
    snprintf(marks, sizeof marks, "%s/launch-restart-marks", tmpdir());
    /* rank 1 fails on the first two attempts (counted in a file) */
    const char *prog = "/bin/sh -c 'f=%s; if [ $OMPI_COMM_WORLD_RANK = 1 ]; then echo x >> $f; "
                       "if [ $(wc -l < $f) -le 2 ]; then echo \"attempt failed\" >&2; exit 1; fi; fi; "
                       "echo done $OMPI_COMM_WORLD_RANK'";
    char p[1200];
    snprintf(p, sizeof p, prog, marks);
    unlink(marks);
    snprintf(cmd, sizeof cmd, "timeout 60 %s launch --nproc-per-node 2 --max-restarts 1 -- %s", bin(), p);
    int rc = run(cmd, log);
    CHECK_MSG(rc == 1, "one restart for two failures: exit %d", rc);
    CHECK(log_has(log, "restarting from the beginning (restart 1 of 1)"));
    CHECK(strstr(last_line(log), "rank 1 on host") && strstr(last_line(log), "exit 1: attempt failed"));
    /* mpirun forwards no stdin: forwarding it to rank 0 could crash mpirun (SIGSEGV in
     * orte_iof_hnp_read_local_handler) once rank 0 had exited, failing the job unnamed */
    CHECK(log_has(log, " --stdin none "));
    if (rc != 1 || !strstr(last_line(log), "exit 1: attempt failed")) show_log(log);
    unlink(marks);
    snprintf(cmd, sizeof cmd, "timeout 60 %s launch --nproc-per-node 2 --max-restarts 2 -- %s", bin(), p);
    rc = run(cmd, log);
    CHECK_MSG(rc == 0, "two restarts for two failures: exit %d", rc);
    CHECK(log_has(log, "(restart 2 of 2)") && log_has(log, "[rank 1] done 1"));
    if (rc != 0) show_log(log);
    unlink(marks);
}

/* ------------------------------------------------------------------ train */
/* A data-parallel run long enough to be killed in its first epoch: simple_cnn on a
 * CIFAR-10 subset, a checkpoint every 4 steps. */
static void kill_recipe(char *buf, size_t n, const char *launch_opts, const char *dir) {
    snprintf(buf, n,
             "timeout 120 %s launch --nproc-per-node 2 %s -- train --model simple_cnn --dataset "
             "cifar10 --data-dir %s --train-limit 4096 --test-limit 256 --epochs 2 --batch-size 32 "
             "--deterministic --checkpoint-every 4 --run-dir %s",
             bin(), launch_opts, data_dir(), dir);
}

/* Starts the run, sends rank 1 `sig` once the run has a checkpoint; the launcher's exit
 * status and the seconds it took after the signal. */
static int signal_rank1_mid_epoch(const char *launch_opts, const char *dir, const char *log,
                                  int sig, pid_t *rank1, double *secs_after) {
    char cmd[4096];
    kill_recipe(cmd, sizeof cmd, launch_opts, dir);
    pid_t pid = spawn(cmd, log);
    pid_t r1 = -1;
    for (int i = 0; i < 3000 && newest_step(dir) < 4; i++) sleep_ms(10);
    for (int i = 0; i < 100 && r1 < 0; i++, sleep_ms(10)) r1 = find_rank(pid, 1);
    long at = newest_step(dir);
    CHECK_MSG(r1 > 0 && at >= 4, "rank 1 not found (%d) or no checkpoint (%ld)", (int)r1, at);
    if (r1 > 0) kill(r1, sig);
    double t0 = now_s();
    int rc = reap_within(pid, 60);
    *secs_after = now_s() - t0;
    fprintf(stderr, "    rank 1 (pid %d) got signal %d with the newest checkpoint at step %ld\n",
            (int)r1, sig, at);
    if (rank1) *rank1 = r1;
    return rc;
}

static int kill_rank1_mid_epoch(const char *launch_opts, const char *dir, const char *log,
                                double *secs_after) {
    return signal_rank1_mid_epoch(launch_opts, dir, log, SIGKILL, NULL, secs_after);
}

TEST(launch_train_sigkill_of_rank_1_ends_the_job_naming_it) {
    if (!have_mpirun()) SKIP("mpirun not installed (openmpi-bin)");
    if (!data_dir()) SKIP("CTORCH_DATA with CIFAR-10 not set");
    char dir[600], log[700], host[256] = "", want[600];
    snprintf(dir, sizeof dir, "%s/launch-kill", tmpdir());
    snprintf(log, sizeof log, "%s.log", dir);
    double secs;
    int rc = kill_rank1_mid_epoch("", dir, log, &secs);
    gethostname(host, sizeof host);
    snprintf(want, sizeof want, "ctorch launch: rank 1 on host %s failed: killed by signal 9 (Killed)", host);
    CHECK_MSG(rc == 1, "exit %d", rc);
    CHECK_MSG(secs < 30, "the job took %.1f s to end after rank 1 was killed", secs);
    CHECK_MSG(!strcmp(last_line(log), want), "last line '%s', expected '%s'", last_line(log), want);
    if (rc != 1) show_log(log);
    json_t *m = manifest_of(dir);
    CHECK(m && strcmp(json_string_value(json_object_get(m, "status")), "completed") != 0);
    json_decref(m);
}

/* A lost rank (stopped: alive but silent): the others' next collective times out after
 * --dist-timeout, that rank exits 1 naming the operation, mpirun ends the job (the stopped
 * rank too). */
TEST(launch_train_lost_rank_ends_the_job_after_dist_timeout) {
    if (!have_mpirun()) SKIP("mpirun not installed (openmpi-bin)");
    if (!data_dir()) SKIP("CTORCH_DATA with CIFAR-10 not set");
    char dir[600], log[700], host[256] = "", want[600];
    snprintf(dir, sizeof dir, "%s/launch-lost", tmpdir());
    snprintf(log, sizeof log, "%s.log", dir);
    double secs;
    pid_t r1 = -1;
    int rc = signal_rank1_mid_epoch("--dist-timeout 3", dir, log, SIGSTOP, &r1, &secs);
    gethostname(host, sizeof host);
    snprintf(want, sizeof want, "ctorch launch: rank 0 on host %s failed: exit 1: ctorch train: ", host);
    CHECK_MSG(rc == 1, "exit %d", rc);
    CHECK_MSG(secs >= 2.5 && secs < 30, "the job ended %.1f s after rank 1 stopped (timeout 3 s)", secs);
    CHECK_MSG(!strncmp(last_line(log), want, strlen(want)) &&
              strstr(last_line(log), "did not complete within 3 s"),
              "last line '%s', expected '%s...did not complete within 3 s...'", last_line(log), want);
    if (rc != 1) show_log(log);
    /* the stopped rank was ended with the job */
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/%d", (int)r1);
    for (int i = 0; i < 200 && r1 > 0 && access(proc, F_OK) == 0; i++) sleep_ms(10);
    CHECK_MSG(r1 > 0 && access(proc, F_OK) != 0, "the stopped rank 1 (pid %d) is still there", (int)r1);
    if (r1 > 0 && access(proc, F_OK) == 0) kill(r1, SIGKILL);
}

TEST(launch_train_max_restarts_resumes_from_the_checkpoint) {
    if (!have_mpirun()) SKIP("mpirun not installed (openmpi-bin)");
    if (!data_dir()) SKIP("CTORCH_DATA with CIFAR-10 not set");
    char dir[600], log[700], ref[600], cmd[4096], a[65], b[65];
    snprintf(dir, sizeof dir, "%s/launch-restart-run", tmpdir());
    snprintf(log, sizeof log, "%s.log", dir);
    double secs;
    int rc = kill_rank1_mid_epoch("--max-restarts 1", dir, log, &secs);
    CHECK_MSG(rc == 0, "exit %d", rc);
    CHECK(log_has(log, "restarting from the newest checkpoint (restart 1 of 1)"));
    CHECK(log_has(log, "train --resume"));
    if (rc != 0) show_log(log);
    json_t *m = manifest_of(dir);
    CHECK(m && !strcmp(json_string_value(json_object_get(m, "status")), "completed"));
    CHECK(m && json_array_size(json_object_get(m, "resumes")) == 1);
    json_decref(m);
    /* deterministic: the same weights as the uninterrupted data-parallel run */
    snprintf(ref, sizeof ref, "%s/launch-restart-ref", tmpdir());
    kill_recipe(cmd, sizeof cmd, "", ref);
    snprintf(log, sizeof log, "%s.log", ref);
    CHECK(run(cmd, log) == 0);
    CHECK(sha_in(dir, "model.safetensors", a) == 0 && sha_in(ref, "model.safetensors", b) == 0);
    CHECK_MSG(!strcmp(a, b), "the restarted run's weights differ from the uninterrupted run's");
}

/* Without --run-dir the launcher chooses the directory ($CTORCH_RUNS/<model>-<dataset>-
 * <time>, as train would) and passes it, so that a restart knows what to resume; rank 0
 * writes it, with the launcher's command line. */
TEST(launch_train_chooses_the_run_directory) {
    if (!have_mpirun()) SKIP("mpirun not installed (openmpi-bin)");
    if (!mnist_dir()) SKIP("CTORCH_DATA with MNIST not set");
    char runs[600], cmd[4096], log[700], want[800];
    snprintf(runs, sizeof runs, "%s/launch-runs", tmpdir());
    snprintf(log, sizeof log, "%s.log", runs);
    snprintf(cmd, sizeof cmd, "CTORCH_RUNS=%s timeout 60 %s launch --nproc-per-node 2 -- train "
             "--model mlp --dataset mnist --data-dir %s --train-limit 256 --test-limit 64 --epochs 1",
             runs, bin(), mnist_dir());
    int rc = run(cmd, log);
    CHECK_MSG(rc == 0, "exit %d", rc);
    if (rc != 0) show_log(log);
    snprintf(want, sizeof want, " --run-dir %s/mlp-mnist-", runs);
    CHECK(log_has(log, want));
    DIR *d = opendir(runs);
    struct dirent *e;
    char dir[1400] = "";
    int n = 0;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') n++, snprintf(dir, sizeof dir, "%s/%s", runs, e->d_name);
    if (d) closedir(d);
    CHECK_MSG(n == 1, "%d run directories in %s", n, runs);
    json_t *m = n == 1 ? manifest_of(dir) : NULL;
    json_t *dist = json_object_get(m, "distributed");
    CHECK(m && !strcmp(json_string_value(json_object_get(m, "status")), "completed"));
    CHECK(json_integer_value(json_object_get(dist, "world_size")) == 2);
    const char *lc = json_string_value(json_object_get(dist, "launch_command"));
    CHECK_MSG(lc && !strncmp(lc, "ctorch launch --nproc-per-node 2 -- train --model mlp", 53),
              "launch_command: %s", lc ? lc : "(none)");
    json_decref(m);
}

/* ------------------------------------------------------------------ two hosts */
/* Two "hosts": network namespaces A and B with a veth pair (10.77.X.1 and .2), each with
 * its own hostname (h1, h2; a UTS namespace). mpirun runs in A and reaches B through an
 * rsh agent that enters B's namespaces; the ranks talk over TCP on the veth pair. */
typedef struct {
    char ns[2][32], net[32], agent[600], hostfile[600], env[1400];
    int up;
} two_hosts;

static two_hosts *g_live; /* set up and not yet taken down */
static void two_hosts_down(two_hosts *h) {
    char cmd[600];
    for (int k = 0; k < 2; k++) {
        /* whatever is left in the namespace was started by this test */
        snprintf(cmd, sizeof cmd, "ip netns pids %s 2>/dev/null | xargs -r kill -9 2>/dev/null; "
                 "ip netns del %s 2>/dev/null", h->ns[k], h->ns[k]);
        if (system(cmd)) {}
    }
    h->up = 0;
    if (g_live == h) g_live = NULL;
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
}

/* The namespaces are removed however the test ends: at its end, at exit, on a signal;
 * and those of an earlier run killed outright (ctl<pid>a/b of a pid that is gone) when the
 * next one starts. */
static void cleanup_live(void) {
    if (g_live && g_live->up) two_hosts_down(g_live);
}
static void on_fatal_signal(int sig) {
    cleanup_live();
    signal(sig, SIG_DFL);
    raise(sig);
}
static void remove_stale_namespaces(void) {
    FILE *p = popen("ip netns list 2>/dev/null", "r");
    char line[256];
    while (p && fgets(line, sizeof line, p)) {
        int pid;
        char ab, tail;
        if (sscanf(line, "ctl%d%c%c", &pid, &ab, &tail) < 2 || (ab != 'a' && ab != 'b')) continue;
        char proc[64], cmd[300];
        snprintf(proc, sizeof proc, "/proc/%d", pid);
        if (access(proc, F_OK) == 0) continue; /* its test is still running */
        snprintf(cmd, sizeof cmd, "ip netns pids ctl%d%c | xargs -r kill -9 2>/dev/null; "
                 "ip netns del ctl%d%c 2>/dev/null", pid, ab, pid, ab);
        if (system(cmd)) {}
    }
    if (p) pclose(p);
}

/* Sets the namespaces up; NULL, or why it cannot be done here (a reason to skip). */
static const char *two_hosts_up(two_hosts *h) {
    static char why[300];
    if (geteuid() != 0) return "needs root (ip netns)";
    if (system("command -v ip >/dev/null 2>&1 && command -v unshare >/dev/null 2>&1") != 0)
        return "needs ip (iproute2) and unshare (util-linux)";
    int id = (int)(getpid() % 200) + 20;
    snprintf(h->ns[0], sizeof h->ns[0], "ctl%da", (int)getpid());
    snprintf(h->ns[1], sizeof h->ns[1], "ctl%db", (int)getpid());
    snprintf(h->net, sizeof h->net, "10.77.%d", id);
    remove_stale_namespaces();
    static int registered;
    if (!registered++) atexit(cleanup_live);
    g_live = h;
    signal(SIGINT, on_fatal_signal);
    signal(SIGTERM, on_fatal_signal);
    signal(SIGHUP, on_fatal_signal);
    char cmd[2400], log[600];
    snprintf(log, sizeof log, "%s/netns-setup.log", tmpdir());
    snprintf(cmd, sizeof cmd, "ip netns add %s", h->ns[0]);
    if (run(cmd, log) != 0) {
        snprintf(why, sizeof why, "ip netns add does not work here (no CAP_SYS_ADMIN?)");
        return why;
    }
    h->up = 1;
    snprintf(cmd, sizeof cmd,
             "set -e; ip netns add %2$s; ip link add ctv%4$da type veth peer name ctv%4$db; "
             "ip link set ctv%4$da netns %1$s; ip link set ctv%4$db netns %2$s; "
             "ip -n %1$s addr add %3$s.1/24 dev ctv%4$da; ip -n %2$s addr add %3$s.2/24 dev ctv%4$db; "
             "ip -n %1$s link set ctv%4$da up; ip -n %2$s link set ctv%4$db up; "
             "ip -n %1$s link set lo up; ip -n %2$s link set lo up",
             h->ns[0], h->ns[1], h->net, (int)getpid());
    if (run(cmd, log) != 0) {
        show_log(log);
        snprintf(why, sizeof why, "could not set up the veth pair (see above)");
        return why;
    }
    snprintf(h->agent, sizeof h->agent, "%s/netns-agent.sh", tmpdir());
    FILE *f = fopen(h->agent, "w");
    if (!f) return "cannot write the agent script";
    /* mpirun calls it as ssh: [options] HOST COMMAND... */
    fprintf(f, "#!/bin/sh\n"
               "while [ $# -gt 0 ]; do case \"$1\" in -*) shift;; *) break;; esac; done\n"
               "host=$1; shift\n"
               "case \"$host\" in\n"
               "  %1$s.1) ns=%2$s; hn=h1;;\n"
               "  %1$s.2) ns=%3$s; hn=h2;;\n"
               "  *) echo \"netns agent: unknown host $host\" >&2; exit 255;;\n"
               "esac\n"
               "exec ip netns exec $ns unshare --uts sh -c \"hostname $hn; $*\"\n",
            h->net, h->ns[0], h->ns[1]);
    fclose(f);
    chmod(h->agent, 0755);
    snprintf(h->hostfile, sizeof h->hostfile, "%s/netns-hosts", tmpdir());
    f = fopen(h->hostfile, "w");
    if (!f) return "cannot write the hostfile";
    fprintf(f, "%s.1 slots=2\n%s.2 slots=2\n", h->net, h->net); /* 1 rank each: --nproc-per-node */
    fclose(f);
    snprintf(h->env, sizeof h->env,
             "env OMPI_MCA_plm_rsh_agent=%s OMPI_MCA_btl=tcp,self OMPI_MCA_btl_tcp_if_include=%s.0/24 "
             "OMPI_MCA_oob_tcp_if_include=%s.0/24",
             h->agent, h->net, h->net);
    return NULL;
}

/* `ctorch launch ARGS` on both hosts, one rank each, started in host A. */
static int two_hosts_launch(two_hosts *h, const char *args, const char *log) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "timeout 120 %s ip netns exec %s unshare --uts sh -c 'hostname h1; "
             "exec %s launch --hostfile %s --nproc-per-node 1 %s'",
             h->env, h->ns[0], abs_bin(), h->hostfile, args);
    return run(cmd, log);
}

TEST(launch_two_namespaces_runs_one_rank_on_each_host) {
    if (!have_mpirun()) SKIP("mpirun not installed (openmpi-bin)");
    /* static: the exit handler may reach it after the test has returned */
    static two_hosts h;
    memset(&h, 0, sizeof h);
    const char *why = two_hosts_up(&h);
    if (why) {
        two_hosts_down(&h);
        SKIP(why);
    }
    char log[600], want[300];
    snprintf(log, sizeof log, "%s/netns-plain.log", tmpdir());
    int rc = two_hosts_launch(&h, "-- /bin/sh -c \"echo on \\$(hostname) \\$(ip -o -4 addr show | "
                                  "grep -o \\\"inet 10\\.77\\.[0-9.]*\\\")\"", log);
    CHECK_MSG(rc == 0, "exit %d", rc);
    snprintf(want, sizeof want, "[rank 0] on h1 inet %s.1\n", h.net);
    CHECK_MSG(log_has(log, want), "missing: %s", want);
    snprintf(want, sizeof want, "[rank 1] on h2 inet %s.2\n", h.net);
    CHECK_MSG(log_has(log, want), "missing: %s", want);
    CHECK(log_has(log, "2 ranks (1 per host on 2 hosts)"));
    /* a rank failing on host B is named with that host */
    rc = two_hosts_launch(&h, "-- /bin/sh -c \"if [ \\$OMPI_COMM_WORLD_RANK = 1 ]; then "
                              "echo broken on \\$(hostname) >&2; exit 4; fi; sleep 30\"", log);
    snprintf(want, sizeof want, "ctorch launch: rank 1 on host %s.2 failed: exit 4: broken on h2", h.net);
    CHECK_MSG(rc == 1 && !strcmp(last_line(log), want), "exit %d, last line '%s', expected '%s'",
              rc, last_line(log), want);
    if (rc != 0 && rc != 1) show_log(log);
    two_hosts_down(&h);
}

TEST(launch_two_namespaces_train_gives_the_weights_of_one_host) {
    if (!have_mpirun()) SKIP("mpirun not installed (openmpi-bin)");
    if (!mnist_dir()) SKIP("CTORCH_DATA with MNIST not set");
    /* static: the exit handler may reach it after the test has returned */
    static two_hosts h;
    memset(&h, 0, sizeof h);
    const char *why = two_hosts_up(&h);
    if (why) {
        two_hosts_down(&h);
        SKIP(why);
    }
    char recipe[1200], args[2400], cmd[4096], log[700], d2[600], d1[600], a[65], b[65];
    snprintf(d2, sizeof d2, "%s/netns-two-hosts", tmpdir());
    snprintf(d1, sizeof d1, "%s/netns-one-host", tmpdir());
    snprintf(recipe, sizeof recipe, "train --model mlp --dataset mnist --data-dir %s --train-limit 512 "
             "--test-limit 256 --epochs 1 --no-shuffle --batch-size 32 --deterministic", mnist_dir());
    snprintf(log, sizeof log, "%s.log", d2);
    snprintf(args, sizeof args, "-- %s --run-dir %s", recipe, d2);
    int rc = two_hosts_launch(&h, args, log);
    CHECK_MSG(rc == 0, "two hosts: exit %d", rc);
    if (rc != 0) show_log(log);
    two_hosts_down(&h);
    snprintf(log, sizeof log, "%s.log", d1);
    snprintf(cmd, sizeof cmd, "timeout 120 %s launch --nproc-per-node 2 -- %s --run-dir %s", bin(),
             recipe, d1);
    rc = run(cmd, log);
    CHECK_MSG(rc == 0, "one host: exit %d", rc);
    if (rc != 0) show_log(log);
    CHECK(sha_in(d2, "model.safetensors", a) == 0 && sha_in(d1, "model.safetensors", b) == 0);
    CHECK_MSG(!strcmp(a, b), "two hosts %.12s..., one host %.12s...: different weights", a, b);
}
