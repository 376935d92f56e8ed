/* Shared by the tests that drive the ctorch binary (tests/test_cli.c, test_runs.c...). */
#include "cli_util.h"
#include "test.h"

#include <dirent.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

const char *bin(void) {
    const char *b = getenv("CTORCH_BIN");
    return b ? b : "build/ctorch";
}

const char *data_dir(void) {
    const char *d = getenv("CTORCH_DATA");
    if (!d) return NULL;
    char p[1024];
    snprintf(p, sizeof p, "%s/cifar-10-batches-bin/data_batch_1.bin", d);
    return access(p, R_OK) == 0 ? d : NULL;
}

static char g_tmp[256];
static void remove_tmpdir(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    if (system(cmd)) {}
}
const char *tmpdir(void) {
    if (!g_tmp[0]) {
        snprintf(g_tmp, sizeof g_tmp, "/tmp/ctorch-cli-test-XXXXXX");
        if (!mkdtemp(g_tmp)) g_tmp[0] = 0;
        else atexit(remove_tmpdir);
    }
    return g_tmp;
}

/* Runs a shell command with output to `log`; returns the exit status. */
int run(const char *cmd, const char *log) {
    char full[4096];
    snprintf(full, sizeof full, "%s > %s 2>&1", cmd, log);
    int st = system(full);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int log_has(const char *log, const char *needle) {
    FILE *f = fopen(log, "r");
    if (!f) return 0;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return strstr(buf, needle) != NULL;
}

void show_log(const char *log) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "tail -5 %s >&2", log);
    if (system(cmd)) {}
}

int cli_train(const char *args, const char *run_dir, const char *extra, const char *log) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s train --dataset cifar10 --data-dir %s %s --threads 2 "
             "--no-checkpoints --run-dir %s %s", bin(), data_dir(), args, run_dir, extra);
    int rc = run(cmd, log);
    if (rc != 0 && rc != 2) show_log(log);
    return rc;
}


/* Starts cmd through sh's exec (so the pid is the command's) with its output to log. */
pid_t spawn(const char *cmd, const char *log) {
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        char full[8192];
        snprintf(full, sizeof full, "exec %s", cmd);
        execl("/bin/sh", "sh", "-c", full, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Highest step among dir/checkpoints/step-*.safetensors, -1 when none. */
long newest_step(const char *dir) {
    char p[1200];
    snprintf(p, sizeof p, "%s/checkpoints", dir);
    DIR *d = opendir(p);
    long best = -1;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        long s;
        if (sscanf(e->d_name, "step-%ld.safetensors", &s) == 1 && !strstr(e->d_name, ".tmp") && s > best)
            best = s;
    }
    if (d) closedir(d);
    return best;
}

const char *build_dir(void) {
    static char dir[1024];
    const char *env = getenv("CT_TEST_BUILD_DIR");
    if (env && *env) return env;
    char self[1024];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return "build";
    self[n] = 0;
    snprintf(dir, sizeof dir, "%s", dirname(self));
    return dir;
}

int svg_series_points(const char *svg, const char *series) {
    char tag[96];
    snprintf(tag, sizeof tag, "data-series=\"%s\"", series);
    const char *p = strstr(svg, tag);
    if (!p) return 0;
    p = strstr(p, "points=\"");
    if (!p) return -1;
    int count = 0;
    for (p += 8; *p && *p != '"'; p++)
        if (*p != ' ' && (p[-1] == '"' || p[-1] == ' ')) count++;
    return count;
}

const char *peer_python(const char *modules) {
    static struct {
        char modules[128], found[512];
        int ok;
    } memo[8];
    static int n_memo;
    for (int i = 0; i < n_memo; i++)
        if (!strcmp(memo[i].modules, modules)) return memo[i].ok ? memo[i].found : NULL;
    const char *cands[] = {getenv("CTORCH_PEER_PYTHON"), "bench/.venv/bin/python", "/usr/bin/python3"};
    const char *hit = NULL;
    for (size_t i = 0; i < sizeof cands / sizeof *cands && !hit; i++) {
        if (!cands[i] || access(cands[i], X_OK) != 0) continue;
        char cmd[900];
        snprintf(cmd, sizeof cmd, "%s -c 'import %s' >/dev/null 2>&1", cands[i], modules);
        if (system(cmd) == 0) hit = cands[i];
    }
    if (n_memo < 8) {
        snprintf(memo[n_memo].modules, sizeof memo[n_memo].modules, "%s", modules);
        snprintf(memo[n_memo].found, sizeof memo[n_memo].found, "%s", hit ? hit : "");
        memo[n_memo].ok = hit != NULL;
        return hit ? memo[n_memo++].found : (n_memo++, NULL);
    }
    return hit;
}

int peer_script_once(const char *script, const char *subdir, char *dir, size_t n) {
    dir[0] = 0;
    const char *py = peer_python("torch, torchvision, safetensors.torch");
    if (!py) return -1;
    char cmd[2048], log[600];
    snprintf(dir, n, "%s/%s", tmpdir(), subdir);
    snprintf(log, sizeof log, "%s.log", dir);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && '%s' %s '%s'", dir, py, script, dir);
    if (run(cmd, log) != 0) {
        show_log(log);
        CHECK_MSG(0, "%s failed", script);
        dir[0] = 0;
        return -1;
    }
    return 0;
}
