/* ctorch launch: the torchrun analogue, on OpenMPI's mpirun (docs/distributed.md,
 * "Launching" and "Failures").
 *
 *   ctorch launch --nproc-per-node N [--hostfile FILE] [--max-restarts K]
 *                 [--dist-timeout S] [--bind-to P] -- train ...
 *
 * It runs `mpirun ... <this ctorch> train ...` (mpirun from $CTORCH_MPIRUN, else PATH;
 * the launcher never links libmpi), with each rank's thread count set from the cores it
 * may use, as root when run as root, oversubscribed when N exceeds the cores or slots,
 * unbound unless told otherwise. The ranks' output is relayed line by line with a
 * "[rank R] " prefix (mpirun's --tag-output tags rewritten). When the job fails, mpirun's
 * messages and the ranks' last stderr lines name the rank that failed, its host and its
 * error, in the launcher's last line; with --max-restarts K a failed `train` job is
 * started again from the run's newest checkpoint (`train --resume DIR`), up to K times.
 */
#include "cli.h"
#include "run_dir.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define LAUNCH "launch"

/* ------------------------------------------------------------------ small strings */
typedef struct {
    char *s;
    size_t n, cap;
} sbuf;

static void sb_add(sbuf *b, const char *p, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 128;
        while (cap < b->n + n + 1) cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) return; /* out of memory: the text is cut */
        b->s = s;
        b->cap = cap;
    }
    memcpy(b->s + b->n, p, n);
    b->n += n;
    b->s[b->n] = 0;
}
static void sb_clear(sbuf *b) {
    b->n = 0;
    if (b->s) b->s[0] = 0;
}
static const char *sb_str(const sbuf *b) { return b->s ? b->s : ""; }

/* A growing argv. */
typedef struct {
    char **v;
    int n, cap;
} strv;

static void sv_add(strv *a, const char *s) {
    if (a->n + 2 > a->cap) {
        int cap = a->cap ? 2 * a->cap : 32;
        char **v = realloc(a->v, (size_t)cap * sizeof *v);
        if (!v) {
            fprintf(stderr, "ctorch launch: out of memory\n");
            exit(CLI_RUNTIME);
        }
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = strdup(s);
    a->v[a->n] = NULL;
}
static void sv_addf(strv *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sv_addf(strv *a, const char *fmt, ...) {
    char buf[PATH_MAX + 64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    sv_add(a, buf);
}
static void sv_free(strv *a) {
    for (int i = 0; i < a->n; i++) free(a->v[i]);
    free(a->v);
    *a = (strv){0};
}

/* ------------------------------------------------------------------ the machine */
static int affinity_cpus(cpu_set_t *set) {
    CPU_ZERO(set);
    if (sched_getaffinity(0, sizeof *set, set) != 0) return 0;
    return CPU_COUNT(set);
}

/* Physical cores among the CPUs this process may use (what mpirun counts as slots when
 * no hostfile says otherwise); the CPU count when the topology cannot be read. */
static int affinity_cores(void) {
    cpu_set_t set;
    int ncpu = affinity_cpus(&set);
    if (ncpu <= 0) return 1;
    long seen[CPU_SETSIZE];
    int ncore = 0;
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (!CPU_ISSET(c, &set)) continue;
        char p[128];
        long pkg = -1, core = -1;
        snprintf(p, sizeof p, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", c);
        FILE *f = fopen(p, "r");
        if (f) {
            if (fscanf(f, "%ld", &pkg) != 1) pkg = -1;
            fclose(f);
        }
        snprintf(p, sizeof p, "/sys/devices/system/cpu/cpu%d/topology/core_id", c);
        f = fopen(p, "r");
        if (f) {
            if (fscanf(f, "%ld", &core) != 1) core = -1;
            fclose(f);
        }
        if (pkg < 0 || core < 0) return ncpu;
        long id = pkg * 100000 + core;
        int dup = 0;
        for (int k = 0; k < ncore && !dup; k++) dup = seen[k] == id;
        if (!dup) seen[ncore++] = id;
    }
    return ncore > 0 ? ncore : ncpu;
}

/* An executable by name: a path as given, else searched in PATH; malloc'd or NULL. */
static char *find_program(const char *name) {
    if (strchr(name, '/')) return access(name, X_OK) == 0 ? strdup(name) : NULL;
    const char *path = getenv("PATH");
    if (!path || !*path) path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        const char *end = strchr(path, ':');
        size_t len = end ? (size_t)(end - path) : strlen(path);
        char *p = NULL;
        if (asprintf(&p, "%.*s/%s", (int)len, len ? path : ".", name) < 0) return NULL;
        struct stat st;
        if (access(p, X_OK) == 0 && stat(p, &st) == 0 && S_ISREG(st.st_mode)) return p;
        free(p);
        path += len + (end ? 1 : 0);
    }
    return NULL;
}

/* The hostfile's hosts: how many, and whether every one has at least `per_node` slots
 * (a host without slots= counts as this machine's cores). -1 when it cannot be read. */
static int read_hostfile(const char *path, int per_node, int local_cores, int *enough_slots) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[1024];
    int hosts = 0;
    *enough_slots = 1;
    while (fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        char host[512];
        if (sscanf(line, "%511s", host) != 1) continue;
        hosts++;
        long slots = local_cores;
        const char *s = strstr(line, "slots=");
        if (s && (s == line || isspace((unsigned char)s[-1]))) slots = strtol(s + 6, NULL, 10);
        if (slots < per_node) *enough_slots = 0;
    }
    fclose(f);
    return hosts;
}

/* ------------------------------------------------------------------ the ranks' output */
typedef struct {
    char *host;      /* from mpirun's job map, else the rank's own error line */
    char *last_err;  /* its last non-empty stderr line */
    sbuf out, err;   /* partial lines */
} rank_info;

typedef enum { FAIL_NONE, FAIL_EXIT, FAIL_SIGNAL, FAIL_ABORT, FAIL_IMPROPER } fail_kind;

typedef struct {
    rank_info *r;
    int nr;
    int map_node_set;
    char map_node[256]; /* the job map's current node */
    /* what mpirun said about the failure */
    fail_kind fail;
    int fail_rank, fail_code, fail_sig;
    char fail_signame[64], fail_host[256];
    char lost_host[256]; /* ORTE lost a daemon */
    /* mpirun's own message boxes (between lines of dashes), held until complete */
    int in_box;
    strv box;
} job_state;

static rank_info *rank_get(job_state *j, int rank) {
    if (rank < 0 || rank > 1 << 20) return NULL;
    if (rank >= j->nr) {
        int n = rank + 16;
        rank_info *r = realloc(j->r, (size_t)n * sizeof *r);
        if (!r) return NULL;
        memset(r + j->nr, 0, (size_t)(n - j->nr) * sizeof *r);
        j->r = r;
        j->nr = n;
    }
    return &j->r[rank];
}

static void set_str(char **dst, const char *s) {
    free(*dst);
    *dst = strdup(s);
}

/* "ctorch CMD (rank R on HOST): message": the host; *rest is "ctorch CMD: message". */
static int parse_rank_error(const char *line, int *rank, char *host, size_t nhost, char *rest,
                            size_t nrest) {
    const char *p = strstr(line, " (rank ");
    if (!p || strncmp(line, "ctorch ", 7) != 0) return 0;
    int r, used = 0;
    char h[256];
    if (sscanf(p, " (rank %d on %255[^)]):%n", &r, h, &used) != 2 || !used) return 0;
    if (rank) *rank = r;
    snprintf(host, nhost, "%s", h);
    snprintf(rest, nrest, "%.*s:%s", (int)(p - line), line, p + used);
    return 1;
}

static void rank_line(job_state *j, int rank, int is_err, const char *line) {
    FILE *f = is_err ? stderr : stdout;
    fprintf(f, "[rank %d] %s\n", rank, line);
    fflush(f);
    rank_info *ri = rank_get(j, rank);
    if (!ri || !is_err) return;
    const char *p = line;
    while (*p && isspace((unsigned char)*p)) p++;
    if (!*p) return;
    set_str(&ri->last_err, line);
    char host[256], rest[8];
    if (!ri->host && parse_rank_error(line, NULL, host, sizeof host, rest, sizeof rest))
        set_str(&ri->host, host);
}

/* Collapses whitespace runs to one space (mpirun's messages wrap and indent). */
static void squeeze(const char *in, char *out, size_t n) {
    size_t k = 0;
    int sp = 1;
    for (; *in && k + 1 < n; in++) {
        if (isspace((unsigned char)*in)) {
            if (!sp) out[k++] = ' ';
            sp = 1;
        } else {
            out[k++] = *in;
            sp = 0;
        }
    }
    if (k && out[k - 1] == ' ') k--;
    out[k] = 0;
}

/* Reads a failure out of one of mpirun's messages; 1 when it was one (the message is
 * then summarised by the launcher's own last line, not shown). */
static int parse_mpirun_message(job_state *j, const char *text) {
    static char t[16384];
    squeeze(text, t, sizeof t);
    const char *p;
    int r, c, s, n = 0;
    char host[256], name[64];
    if ((p = strstr(t, "mpirun noticed that process rank ")) &&
        sscanf(p, "mpirun noticed that process rank %d with PID %*d on node %255s exited on "
                  "signal %d (%63[^)])%n", &r, host, &s, name, &n) == 4 && n) {
        if (j->fail != FAIL_SIGNAL) {
            j->fail = FAIL_SIGNAL;
            j->fail_rank = r;
            j->fail_sig = s;
            snprintf(j->fail_signame, sizeof j->fail_signame, "%s", name);
            snprintf(j->fail_host, sizeof j->fail_host, "%s", host);
        }
        return 1;
    }
    if ((p = strstr(t, "MPI_ABORT was invoked on rank ")) &&
        sscanf(p, "MPI_ABORT was invoked on rank %d in communicator %*s with errorcode %d", &r,
               &c) == 2) {
        if (j->fail == FAIL_NONE || j->fail == FAIL_EXIT || j->fail == FAIL_IMPROPER) {
            j->fail = FAIL_ABORT;
            j->fail_rank = r;
            j->fail_code = c;
        }
        return 1;
    }
    if ((p = strstr(t, "The first process to do so was:")) &&
        (p = strstr(p, "Process name: [[")) &&
        sscanf(p, "Process name: [[%*d,%*d],%d] Exit code: %d", &r, &c) == 2) {
        if (j->fail == FAIL_NONE || j->fail == FAIL_IMPROPER) {
            j->fail = FAIL_EXIT;
            j->fail_rank = r;
            j->fail_code = c;
        }
        return 1;
    }
    if ((p = strstr(t, "mpirun has exited due to process rank ")) &&
        sscanf(p, "mpirun has exited due to process rank %d with PID %*d on node %255s", &r,
               host) == 2) {
        if (j->fail == FAIL_NONE) {
            j->fail = FAIL_IMPROPER;
            j->fail_rank = r;
            snprintf(j->fail_host, sizeof j->fail_host, "%s", host);
        }
        return 1;
    }
    if (strstr(t, "Primary job terminated normally, but") ||
        strstr(t, "mpirun detected that one or more processes exited with non-zero status"))
        return 1;
    if ((p = strstr(t, "Remote daemon: [[")) &&
        sscanf(p, "Remote daemon: [[%*d,%*d],%*d] on node %255s", host) == 1)
        snprintf(j->lost_host, sizeof j->lost_host, "%s", host); /* shown too */
    return 0;
}

static int is_dashes(const char *line) {
    size_t n = 0;
    for (; *line == '-'; line++) n++;
    return n >= 20 && !*line;
}

static void flush_box(job_state *j) {
    sbuf all = {0};
    for (int i = 0; i < j->box.n; i++) {
        sb_add(&all, j->box.v[i], strlen(j->box.v[i]));
        sb_add(&all, "\n", 1);
    }
    if (!parse_mpirun_message(j, sb_str(&all)) && all.n) {
        fputs(sb_str(&all), stderr);
        fflush(stderr);
    }
    free(all.s);
    sv_free(&j->box);
}

/* A line of mpirun's own on its stderr: its message boxes are held until complete, then
 * shown unless the launcher's summary says the same. */
static void mpirun_err_line(job_state *j, const char *line) {
    if (is_dashes(line)) {
        sv_add(&j->box, line);
        if (j->in_box) flush_box(j);
        j->in_box = !j->in_box;
        return;
    }
    if (j->in_box) {
        sv_add(&j->box, line);
        return;
    }
    if (!parse_mpirun_message(j, line)) {
        fprintf(stderr, "%s\n", line);
        fflush(stderr);
    }
}

/* A line of mpirun's own on its stdout: the job map (--display-map) gives each rank's
 * host and is not shown; anything else is. */
static void mpirun_out_line(job_state *j, const char *line) {
    const char *p;
    int r;
    char node[256];
    if ((p = strstr(line, "Data for node:")) && sscanf(p, "Data for node: %255s", node) == 1) {
        snprintf(j->map_node, sizeof j->map_node, "%s", node);
        j->map_node_set = 1;
        return;
    }
    if ((p = strstr(line, "Process rank:")) && sscanf(p, "Process rank: %d", &r) == 1) {
        rank_info *ri = rank_get(j, r);
        if (ri && j->map_node_set) set_str(&ri->host, j->map_node);
        return;
    }
    char t[256];
    squeeze(line, t, sizeof t);
    if (!t[0] || strstr(t, "Data for JOB") || strstr(t, "JOB MAP") || strspn(t, "=") == strlen(t))
        return;
    fprintf(stdout, "%s\n", line);
    fflush(stdout);
}

/* One of mpirun's output pipes. With --tag-output every chunk a rank writes comes as
 * "[JOB,RANK]<stdout>:" (or <stderr>, <stddiag>) + the chunk, and a tag follows each
 * newline inside it, so a chunk without a final newline is directly followed by the
 * next chunk's tag: the text of a rank runs until a newline or the next tag. */
typedef struct {
    int fd, is_err;
    char in[65536];
    size_t n;
    int cur, cur_err; /* the rank whose text this is (-1: mpirun's own) */
    sbuf own;         /* mpirun's partial line */
} out_pipe;

/* A tag at p: 1 (and its rank, stream, length), 0 when not one, -1 when cut short. */
static int match_tag(const char *p, size_t n, int *rank, int *is_err, size_t *len) {
    size_t i = 0;
    if (i >= n) return -1;
    if (p[i++] != '[') return 0;
    int digits = 0;
    while (i < n && isdigit((unsigned char)p[i])) i++, digits++;
    if (i >= n) return -1;
    if (!digits || p[i++] != ',') return 0;
    long r = 0;
    digits = 0;
    while (i < n && isdigit((unsigned char)p[i])) {
        if (r < 1 << 24) r = r * 10 + (p[i] - '0');
        i++, digits++;
    }
    if (i >= n) return -1;
    if (!digits || p[i++] != ']') return 0;
    static const char *const streams[] = {"<stdout>:", "<stderr>:", "<stddiag>:"};
    for (int s = 0; s < 3; s++) {
        size_t L = strlen(streams[s]), avail = n - i < L ? n - i : L;
        if (memcmp(p + i, streams[s], avail) != 0) continue;
        if (avail < L) return -1;
        *rank = (int)r;
        *is_err = s != 0;
        *len = i + L;
        return 1;
    }
    return 0;
}

static void end_line(job_state *j, out_pipe *o) {
    if (o->cur < 0) {
        if (o->is_err) mpirun_err_line(j, sb_str(&o->own));
        else mpirun_out_line(j, sb_str(&o->own));
        sb_clear(&o->own);
        return;
    }
    rank_info *ri = rank_get(j, o->cur);
    if (!ri) return;
    sbuf *b = o->cur_err ? &ri->err : &ri->out;
    rank_line(j, o->cur, o->cur_err, sb_str(b));
    sb_clear(b);
}

static void add_text(job_state *j, out_pipe *o, const char *p, size_t n) {
    if (!n) return;
    if (o->cur < 0) {
        sb_add(&o->own, p, n);
        return;
    }
    rank_info *ri = rank_get(j, o->cur);
    if (ri) sb_add(o->cur_err ? &ri->err : &ri->out, p, n);
}

/* Parses what has been read; at eof everything, partial lines included. */
static void parse_pipe(job_state *j, out_pipe *o, int eof) {
    size_t i = 0, text = 0; /* text: start of the pending run of plain characters */
    while (i < o->n) {
        char c = o->in[i];
        if (c == '[') {
            int rank, is_err;
            size_t len;
            int m = match_tag(o->in + i, o->n - i, &rank, &is_err, &len);
            if (m < 0 && !eof && o->n - i < 64) break; /* the rest of the tag is on its way */
            if (m > 0) {
                add_text(j, o, o->in + text, i - text);
                o->cur = rank;
                o->cur_err = is_err;
                i += len;
                text = i;
                continue;
            }
        } else if (c == '\n') {
            add_text(j, o, o->in + text, i - text);
            end_line(j, o);
            o->cur = -1; /* a new line: a tag, or mpirun's own text */
            text = ++i;
            continue;
        }
        i++;
    }
    add_text(j, o, o->in + text, i - text);
    memmove(o->in, o->in + i, o->n - i);
    o->n -= i;
    if (eof) {
        /* partial last lines of every rank and of mpirun */
        for (int r = 0; r < j->nr; r++) {
            if (j->r[r].out.n) rank_line(j, r, 0, sb_str(&j->r[r].out));
            if (j->r[r].err.n) rank_line(j, r, 1, sb_str(&j->r[r].err));
            sb_clear(&j->r[r].out);
            sb_clear(&j->r[r].err);
        }
        if (o->own.n) {
            o->cur = -1;
            end_line(j, o);
        }
    }
}

/* ------------------------------------------------------------------ running mpirun */
static volatile sig_atomic_t g_signal;
static volatile pid_t g_child;

static void on_signal(int sig) {
    if (!g_signal) g_signal = sig;
    if (g_child > 0) kill(g_child, SIGTERM); /* mpirun ends the job */
}

/* Runs argv (mpirun), relaying and parsing its output into j; its wait status, or -1. */
static int run_mpirun(char **argv, job_state *j) {
    int po[2], pe[2];
    if (pipe(po) != 0 || pipe(pe) != 0) {
        fprintf(stderr, "ctorch launch: pipe: %s\n", strerror(errno));
        return -1;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "ctorch launch: fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* its own process group: a Ctrl-C reaches the launcher, which ends the job once;
         * mpirun goes when the launcher does */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(127);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) dup2(devnull, 0);
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close(po[0]);
        close(pe[0]);
        close(po[1]);
        close(pe[1]);
        execv(argv[0], argv);
        fprintf(stderr, "ctorch launch: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    g_child = pid;
    if (g_signal) kill(pid, SIGTERM);
    close(po[1]);
    close(pe[1]);
    out_pipe pipes[2] = {{.fd = po[0], .is_err = 0, .cur = -1}, {.fd = pe[0], .is_err = 1, .cur = -1}};
    int open_n = 2;
    while (open_n > 0) {
        struct pollfd pf[2];
        int np = 0, idx[2];
        for (int k = 0; k < 2; k++)
            if (pipes[k].fd >= 0) {
                pf[np] = (struct pollfd){.fd = pipes[k].fd, .events = POLLIN};
                idx[np++] = k;
            }
        if (poll(pf, (nfds_t)np, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (int q = 0; q < np; q++) {
            if (!(pf[q].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            out_pipe *o = &pipes[idx[q]];
            ssize_t got = read(o->fd, o->in + o->n, sizeof o->in - o->n);
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) {
                parse_pipe(j, o, 1);
                close(o->fd);
                o->fd = -1;
                open_n--;
                continue;
            }
            o->n += (size_t)got;
            parse_pipe(j, o, 0); /* leaves at most the start of a tag (< 64 bytes) */
        }
    }
    for (int k = 0; k < 2; k++) free(pipes[k].own.s);
    if (j->in_box) flush_box(j);
    j->in_box = 0;
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) {
            st = -1;
            break;
        }
    g_child = 0;
    return st;
}

static void job_free(job_state *j) {
    for (int r = 0; r < j->nr; r++) {
        free(j->r[r].host);
        free(j->r[r].last_err);
        free(j->r[r].out.s);
        free(j->r[r].err.s);
    }
    free(j->r);
    sv_free(&j->box);
    memset(j, 0, sizeof *j);
}

/* The launcher's last line after a failed job; the exit code it stands for (2: the
 * failing rank's usage error), *restartable whether a restart could help. */
static int report_failure(job_state *j, int status, int *restartable) {
    *restartable = 0;
    if (j->fail == FAIL_NONE && status != -1 && WIFEXITED(status) && WEXITSTATUS(status) != 0) {
        /* mpirun named no rank (it does not when every rank exits by itself): its status is
         * the first failed rank's exit code; the rank is the first that says it failed
         * ("ctorch CMD (rank R on HOST): ..."), else the first with an error line */
        char h[256], rest[8];
        for (int pass = 0; pass < 2 && j->fail == FAIL_NONE; pass++)
            for (int r = 0; r < j->nr && j->fail == FAIL_NONE; r++) {
                const char *e = j->r[r].last_err;
                if (!e || (pass == 0 && !parse_rank_error(e, NULL, h, sizeof h, rest, sizeof rest)))
                    continue;
                j->fail = FAIL_EXIT;
                j->fail_rank = r;
                j->fail_code = WEXITSTATUS(status);
            }
    }
    if (j->fail == FAIL_NONE) {
        if (j->lost_host[0])
            fprintf(stderr, "ctorch launch: the job failed: mpirun lost contact with host %s\n",
                    j->lost_host);
        else if (status == -1)
            fprintf(stderr, "ctorch launch: the job failed: mpirun could not be run\n");
        else if (WIFSIGNALED(status))
            fprintf(stderr, "ctorch launch: the job failed: mpirun was killed by signal %d (%s)\n",
                    WTERMSIG(status), strsignal(WTERMSIG(status)));
        else if (WEXITSTATUS(status) > 128 && WEXITSTATUS(status) < 128 + NSIG)
            /* a rank killed at its very start can end the job before mpirun reports it */
            fprintf(stderr, "ctorch launch: the job failed: mpirun exited with status %d, that of "
                    "a rank killed by signal %d (%s), without saying which rank\n",
                    WEXITSTATUS(status), WEXITSTATUS(status) - 128,
                    strsignal(WEXITSTATUS(status) - 128));
        else
            fprintf(stderr, "ctorch launch: the job failed: mpirun exited with status %d (see "
                    "its messages above)\n", WEXITSTATUS(status));
        *restartable = j->lost_host[0] != 0 ||
                       (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) > 128);
        return CLI_RUNTIME;
    }
    rank_info *ri = rank_get(j, j->fail_rank);
    const char *host = ri && ri->host ? ri->host : j->fail_host[0] ? j->fail_host : "(unknown)";
    char what[1400] = "";
    if (ri && ri->last_err) {
        char h[256], rest[1200];
        if (parse_rank_error(ri->last_err, NULL, h, sizeof h, rest, sizeof rest))
            snprintf(what, sizeof what, ": %s", rest);
        else snprintf(what, sizeof what, ": %s", ri->last_err);
    }
    int rc = CLI_RUNTIME;
    switch (j->fail) {
    case FAIL_SIGNAL:
        fprintf(stderr, "ctorch launch: rank %d on host %s failed: killed by signal %d (%s)\n",
                j->fail_rank, host, j->fail_sig, j->fail_signame);
        *restartable = 1;
        break;
    case FAIL_IMPROPER:
        fprintf(stderr, "ctorch launch: rank %d on host %s failed: it ended without finishing "
                "its MPI work%s\n", j->fail_rank, host, what);
        *restartable = 1;
        break;
    default:
        fprintf(stderr, "ctorch launch: rank %d on host %s failed: exit %d%s\n", j->fail_rank,
                host, j->fail_code, what);
        *restartable = j->fail_code != CLI_USAGE;
        if (j->fail_code == CLI_USAGE) rc = CLI_USAGE;
        break;
    }
    return rc;
}

/* ------------------------------------------------------------------ train's options */
/* The train option an argument names (--name or --name=value): its kind, whether it takes
 * a value; its value (the next argument or after '='). Returns the index after it. */
static int train_arg(int argc, char **argv, int i, int *kind, const char **value) {
    const char *a = argv[i];
    const char *eq = strchr(a, '=');
    size_t len = eq ? (size_t)(eq - a) : strlen(a);
    int takes = 0;
    *kind = strncmp(a, "--", 2) == 0 ? cli_train_option_kind(a, len, &takes) : TRAIN_OPT_UNKNOWN;
    *value = NULL;
    if (*kind == TRAIN_OPT_UNKNOWN || !takes) return i + 1;
    if (eq) {
        *value = eq + 1;
        return i + 1;
    }
    if (i + 1 < argc) *value = argv[i + 1];
    return i + 2 <= argc ? i + 2 : argc;
}

static int is_opt(const char *arg, const char *name) {
    size_t n = strlen(name);
    return strncmp(arg, name, n) == 0 && (arg[n] == 0 || arg[n] == '=');
}

/* train's arguments as given: the run directory (--run-dir / --resume), model, dataset,
 * whether --dist-timeout is among them. */
typedef struct {
    const char *run_dir, *resume, *model, *dataset;
    int has_timeout;
} train_cmd;

static train_cmd scan_train(int argc, char **argv) {
    train_cmd t = {0};
    for (int i = 0; i < argc;) {
        int kind;
        const char *v;
        int next = train_arg(argc, argv, i, &kind, &v);
        if (is_opt(argv[i], "--run-dir")) t.run_dir = v;
        else if (is_opt(argv[i], "--resume")) t.resume = v;
        else if (is_opt(argv[i], "--model")) t.model = v;
        else if (is_opt(argv[i], "--dataset")) t.dataset = v;
        else if (is_opt(argv[i], "--dist-timeout")) t.has_timeout = 1;
        i = next;
    }
    return t;
}

static int file_exists(const char *dir, const char *name) {
    char *p = run_path(dir, name);
    int ok = p && access(p, F_OK) == 0;
    free(p);
    return ok;
}

/* A word of a command line, quoted for a POSIX shell where it needs to be, after a space. */
static void add_word(sbuf *b, const char *w) {
    sb_add(b, " ", 1);
    if (*w && strspn(w, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                        "_-+=.,/:@%") == strlen(w)) {
        sb_add(b, w, strlen(w));
        return;
    }
    sb_add(b, "'", 1);
    for (; *w; w++)
        if (*w == '\'') sb_add(b, "'\\''", 4);
        else sb_add(b, w, 1);
    sb_add(b, "'", 1);
}

/* ------------------------------------------------------------------ the command */
static const char *const LAUNCHABLE[] = {"train", "eval", "bench", NULL};

/* What a launch runs, and how: the options, the command after `--`, the program, mpirun,
 * the hosts, slots and threads, and for `train` its run directory. */
typedef struct {
    int64_t nproc, max_restarts;
    double dist_timeout;
    const char *hostfile, *bind_to;
    int cargc; /* the command after `--` (without a leading `ctorch`) */
    char **cargv;
    const char *cmd;
    int is_program, is_train;
    char program[2 * PATH_MAX + 2]; /* what mpirun starts: the program, or this ctorch */
    char *mpirun;
    int hosts, enough_slots, threads, user_threads;
    train_cmd tc;
    char *run_dir; /* train's, where a restart resumes; NULL when unknown */
} launch_cfg;

static int is_launchable(const char *cmd) {
    for (int i = 0; LAUNCHABLE[i]; i++)
        if (!strcmp(cmd, LAUNCHABLE[i])) return 1;
    return 0;
}

/* The launcher's options (before `--`) and the command after `--`; 0 or the exit code. */
static int parse_launch_args(int argc, char **argv, launch_cfg *c) {
    c->nproc = 1;
    c->bind_to = "none";
    cli_opt opts[] = {
        {"--nproc-per-node", OPT_INT, &c->nproc, 1, 4096, 0},
        {"--hostfile", OPT_STRING, &c->hostfile, 0, 0, 0},
        {"--max-restarts", OPT_INT, &c->max_restarts, 0, 1000, 0},
        {"--dist-timeout", OPT_DOUBLE, &c->dist_timeout, 1, 1e7, 0}, /* train's range */
        {"--bind-to", OPT_STRING, &c->bind_to, 0, 0, 0},
    };
    int dd = -1;
    for (int i = 0; i < argc && dd < 0; i++)
        if (!strcmp(argv[i], "--")) dd = i;
    if (dd < 0)
        return cli_fail(LAUNCH, CLI_USAGE, "the command to run goes after `--`, e.g. ctorch launch "
                        "--nproc-per-node 2 -- train --model mlp --dataset mnist");
    const char *pos[1];
    int npos, rc = cli_parse(LAUNCH, dd, argv, opts, (int)(sizeof opts / sizeof *opts), pos, 0, &npos);
    if (rc) return rc;
    c->cargc = argc - dd - 1;
    c->cargv = argv + dd + 1;
    if (c->cargc < 1)
        return cli_fail(LAUNCH, CLI_USAGE, "nothing to run after `--`: give a ctorch command "
                        "(train, eval, bench) or a program's path");
    c->cmd = c->cargv[0];
    c->is_program = strchr(c->cmd, '/') != NULL;
    int known = is_launchable(c->cmd);
    if (!c->is_program && !strcmp(c->cmd, "ctorch") && c->cargc > 1) { /* `-- ctorch train ...` */
        c->cargv++, c->cargc--, c->cmd = c->cargv[0];
        known |= is_launchable(c->cmd);
    }
    if (!c->is_program && !known)
        return cli_fail(LAUNCH, CLI_USAGE, "cannot launch '%s': the command after `--` is a ctorch "
                        "command (train, eval, bench) or a program given by its path", c->cmd);
    c->is_train = !c->is_program && !strcmp(c->cmd, "train");
    if (c->dist_timeout > 0 && !c->is_train)
        return cli_fail(LAUNCH, CLI_USAGE, "--dist-timeout applies to `train`");
    return 0;
}

/* What mpirun starts: the program's absolute path, or this ctorch; 0 or the exit code. */
static int resolve_program(launch_cfg *c) {
    const char *cmd = c->cmd;
    if (c->is_program) {
        if (access(cmd, X_OK) != 0)
            return cli_fail(LAUNCH, CLI_USAGE, "cannot run %s: %s", cmd, strerror(errno));
        /* absolute (mpirun starts it from its own directory on other hosts), links kept */
        char cwd[PATH_MAX];
        if (cmd[0] != '/' && getcwd(cwd, sizeof cwd))
            snprintf(c->program, sizeof c->program, "%s/%s", cwd,
                     cmd[0] == '.' && cmd[1] == '/' ? cmd + 2 : cmd);
        else snprintf(c->program, sizeof c->program, "%s", cmd);
        return 0;
    }
    ssize_t n = readlink("/proc/self/exe", c->program, sizeof c->program - 1);
    if (n <= 0)
        return cli_fail(LAUNCH, CLI_RUNTIME, "cannot find this ctorch executable "
                        "(/proc/self/exe): %s", strerror(errno));
    c->program[n] = 0;
    return 0;
}

/* mpirun: $CTORCH_MPIRUN, else from PATH; 0 or the exit code. */
static int find_mpirun(launch_cfg *c) {
    const char *mpirun_env = getenv("CTORCH_MPIRUN");
    c->mpirun = find_program(mpirun_env && *mpirun_env ? mpirun_env : "mpirun");
    if (c->mpirun) return 0;
    if (mpirun_env && *mpirun_env)
        return cli_fail(LAUNCH, CLI_USAGE, "CTORCH_MPIRUN=%s: not found or not executable",
                        mpirun_env);
    return cli_fail(LAUNCH, CLI_USAGE, "mpirun not found: install openmpi-bin (apt-get install "
                    "openmpi-bin libopenmpi-dev)");
}

/* The hosts, whether they have slots enough, each rank's threads (the user's setting when
 * there is one); 0 or the exit code. */
static int plan_hosts(launch_cfg *c) {
    int cores = affinity_cores();
    cpu_set_t set;
    int cpus = affinity_cpus(&set);
    if (cpus <= 0) cpus = 1;
    c->hosts = 1;
    c->enough_slots = c->nproc <= cores;
    if (c->hostfile) {
        c->hosts = read_hostfile(c->hostfile, (int)c->nproc, cores, &c->enough_slots);
        if (c->hosts < 0)
            return cli_fail(LAUNCH, CLI_USAGE, "--hostfile %s: %s", c->hostfile, strerror(errno));
        if (c->hosts == 0)
            return cli_fail(LAUNCH, CLI_USAGE, "--hostfile %s names no host", c->hostfile);
    }
    c->threads = cpus / (int)c->nproc;
    if (c->threads < 1) c->threads = 1;
    const char *ct_env = getenv("CTORCH_NUM_THREADS"), *omp_env = getenv("OMP_NUM_THREADS");
    c->user_threads = (ct_env && *ct_env) || (omp_env && *omp_env);
    return 0;
}

/* train: the run directory, chosen here when not given, so that a restart can resume it. */
static void plan_run_dir(launch_cfg *c) {
    if (!c->is_train) return;
    c->tc = scan_train(c->cargc - 1, c->cargv + 1);
    if (c->tc.resume) c->run_dir = strdup(c->tc.resume);
    else if (c->tc.run_dir) c->run_dir = strdup(c->tc.run_dir);
    else if (c->tc.model && c->tc.dataset) c->run_dir = run_dir_default(c->tc.model, c->tc.dataset);
}

/* The ranks' thread counts: the user's variables passed on, else the planned count. */
static void add_thread_env(const launch_cfg *c, strv *base) {
    if (c->user_threads) {
        const char *ct_env = getenv("CTORCH_NUM_THREADS"), *omp_env = getenv("OMP_NUM_THREADS");
        if (ct_env && *ct_env) sv_add(base, "-x"), sv_add(base, "CTORCH_NUM_THREADS");
        if (omp_env && *omp_env) sv_add(base, "-x"), sv_add(base, "OMP_NUM_THREADS");
        return;
    }
    sv_add(base, "-x");
    sv_addf(base, "CTORCH_NUM_THREADS=%d", c->threads);
    sv_add(base, "-x");
    sv_addf(base, "OMP_NUM_THREADS=%d", c->threads);
}

/* mpirun's command line up to the program and ctorch command, the same for every attempt.
 * `--stdin none`: the ranks get no input (mpirun gives each /dev/null) and mpirun does not
 * read its own stdin at all. By default it forwards its stdin to rank 0, and OpenMPI 4.1's
 * mpirun can crash doing so (SIGSEGV in orte_iof_hnp_read_local_handler, open-mpi/ompi#7483)
 * when the read comes after rank 0 has exited: the job then fails with no rank named, and
 * is not restarted. */
static void build_base_argv(const launch_cfg *c, int argc, char **argv, strv *base) {
    sv_add(base, c->mpirun);
    if (geteuid() == 0) {
        sv_add(base, "--allow-run-as-root");
        setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
        setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    }
    if (!c->enough_slots) sv_add(base, "--oversubscribe");
    sv_add(base, "--bind-to");
    sv_add(base, c->bind_to);
    sv_add(base, "--stdin");
    sv_add(base, "none");
    sv_add(base, "--tag-output");
    sv_add(base, "--display-map");
    if (c->hostfile) {
        sv_add(base, "--hostfile");
        sv_add(base, c->hostfile);
        sv_add(base, "--map-by");
        sv_addf(base, "ppr:%lld:node", (long long)c->nproc);
    } else {
        sv_add(base, "-np");
        sv_addf(base, "%lld", (long long)c->nproc);
    }
    add_thread_env(c, base);
    /* the launcher's command line, for train's manifest ("distributed.launch_command") */
    sbuf line = {0};
    sb_add(&line, "ctorch launch", 13);
    for (int i = 0; i < argc; i++) add_word(&line, argv[i]);
    setenv("CTORCH_LAUNCH_COMMAND", sb_str(&line), 1);
    free(line.s);
    sv_add(base, "-x");
    sv_add(base, "CTORCH_LAUNCH_COMMAND");
    sv_add(base, c->program);
    if (!c->is_program) sv_add(base, c->cmd);
}

/* One attempt's command line: the base, then the command's arguments as given (a fresh
 * start) or, for a restarted `train` whose run has a manifest, `--resume DIR` plus the
 * options a resume may still change. */
static void build_attempt_argv(const launch_cfg *c, const strv *base, int attempt, strv *av) {
    for (int i = 0; i < base->n; i++) sv_add(av, base->v[i]);
    int resume = attempt > 0 && c->is_train && c->run_dir && file_exists(c->run_dir, "manifest.json");
    if (resume) {
        /* the run's recorded options come from its manifest; those the command line may
         * still set (--threads, --data-dir...) are passed again */
        sv_add(av, "--resume");
        sv_add(av, c->run_dir);
        for (int i = 1; i < c->cargc;) {
            int kind;
            const char *v;
            int next = train_arg(c->cargc, c->cargv, i, &kind, &v);
            if (kind == TRAIN_OPT_RESUMABLE)
                for (int k = i; k < next; k++) sv_add(av, c->cargv[k]);
            i = next;
        }
    } else {
        for (int i = 1; i < c->cargc; i++) sv_add(av, c->cargv[i]);
        if (c->is_train && c->run_dir && !c->tc.run_dir && !c->tc.resume) {
            sv_add(av, "--run-dir");
            sv_add(av, c->run_dir);
        }
    }
    if (c->is_train && c->dist_timeout > 0 && !c->tc.has_timeout) {
        sv_add(av, "--dist-timeout");
        sv_addf(av, "%g", c->dist_timeout);
    }
}

static void install_signal_handlers(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* Runs one attempt (shown first); mpirun's wait status, the failure's state in *j. */
static int run_attempt(const launch_cfg *c, const strv *base, int attempt, job_state *j) {
    strv av = {0};
    build_attempt_argv(c, base, attempt, &av);
    sbuf shown = {0};
    for (int i = 0; i < av.n; i++) add_word(&shown, av.v[i]);
    fprintf(stderr, "ctorch launch:%s\n", sb_str(&shown));
    fflush(stderr);
    free(shown.s);
    *j = (job_state){.fail_rank = -1};
    int st = run_mpirun(av.v, j);
    sv_free(&av);
    return st;
}

/* The job, started again after a restartable failure up to --max-restarts times; the
 * launcher's exit code. */
static int run_with_restarts(const launch_cfg *c, const strv *base) {
    int resumable = c->is_train && c->run_dir;
    for (int attempt = 0;; attempt++) {
        job_state j;
        int st = run_attempt(c, base, attempt, &j);
        if (st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0 && !g_signal) {
            job_free(&j);
            return CLI_OK;
        }
        if (g_signal) {
            job_free(&j);
            fprintf(stderr, "ctorch launch: stopped by signal %d (%s); the job was ended%s%s\n",
                    (int)g_signal, strsignal(g_signal), resumable ? "; continue it with "
                    "ctorch launch ... -- train --resume " : "", resumable ? c->run_dir : "");
            return CLI_RUNTIME;
        }
        int restartable;
        int rc = report_failure(&j, st, &restartable);
        job_free(&j);
        if (!restartable || attempt >= c->max_restarts) return rc;
        if (resumable && file_exists(c->run_dir, "manifest.json"))
            fprintf(stderr, "ctorch launch: restarting from the newest checkpoint (restart %d of "
                    "%lld): train --resume %s\n", attempt + 1, (long long)c->max_restarts, c->run_dir);
        else
            fprintf(stderr, "ctorch launch: restarting from the beginning (restart %d of %lld)\n",
                    attempt + 1, (long long)c->max_restarts);
    }
}

int cmd_launch(int argc, char **argv) {
    launch_cfg c = {0};
    int rc = parse_launch_args(argc, argv, &c);
    if (!rc) rc = resolve_program(&c);
    if (!rc) rc = find_mpirun(&c);
    if (!rc) rc = plan_hosts(&c);
    if (rc) {
        free(c.mpirun);
        return rc;
    }
    plan_run_dir(&c);
    strv base = {0};
    build_base_argv(&c, argc, argv, &base);
    install_signal_handlers();
    fprintf(stderr, "ctorch launch: %lld rank%s (%lld per host on %d host%s), %s%d thread%s each\n",
            (long long)c.nproc * c.hosts, c.nproc * c.hosts == 1 ? "" : "s", (long long)c.nproc,
            c.hosts, c.hosts == 1 ? "" : "s",
            c.user_threads ? "threads from the environment, not " : "", c.threads,
            c.threads == 1 ? "" : "s");
    rc = run_with_restarts(&c, &base);
    sv_free(&base);
    free(c.run_dir);
    free(c.mpirun);
    return rc;
}
