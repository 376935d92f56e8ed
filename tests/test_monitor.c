/* `ctorch train --metrics-port` (src/monitor, docs/monitoring.md): a real run's /metrics
 * (well-formed, promtool-clean, counters that move), /api/run and /api/history, the
 * HTTP errors, malformed and slow clients, the token, the usage errors; the alert rules
 * (promtool check/test rules); and Prometheus + Alertmanager, both real, seeing a NaN run
 * and a stalled run. Needs MNIST in CTORCH_DATA; the Prometheus parts skip without
 * promtool / prometheus / prometheus-alertmanager. */
#include "test.h"
#include "cli_util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *mnist_dir(void) {
    const char *d = getenv("CTORCH_DATA");
    if (!d) return NULL;
    char p[1024];
    snprintf(p, sizeof p, "%s/mnist/train-images-idx3-ubyte", d);
    if (access(p, R_OK) == 0) return d;
    snprintf(p, sizeof p, "%s/mnist/train-images-idx3-ubyte.gz", d);
    return access(p, R_OK) == 0 ? d : NULL;
}

static int have(const char *tool) {
    char c[256];
    snprintf(c, sizeof c, "command -v %s >/dev/null 2>&1", tool);
    return system(c) == 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------------ a tiny HTTP client */
typedef struct {
    int status; /* 0: no response (connection closed or refused) */
    char *head, *body;
    size_t body_len;
} http_resp;

static void resp_free(http_resp *r) {
    free(r->head);
    r->head = r->body = NULL;
}

static int connect_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

/* Sends raw request bytes, reads until the server closes; splits head and body. */
static http_resp http_raw(int port, const char *req, size_t len) {
    http_resp r = {0};
    int fd = connect_to(port);
    if (fd < 0) return r;
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (n <= 0) break;
        off += (size_t)n;
    }
    size_t cap = 1 << 16, got = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (got == cap) buf = realloc(buf, (cap *= 2) + 1);
        ssize_t n = recv(fd, buf + got, cap - got, 0);
        if (n <= 0) break;
        got += (size_t)n;
    }
    close(fd);
    buf[got] = 0;
    char *sep = strstr(buf, "\r\n\r\n");
    if (!sep || sscanf(buf, "HTTP/%*d.%*d %d", &r.status) != 1) {
        free(buf);
        r.status = 0;
        return r;
    }
    *sep = 0;
    r.head = buf;
    r.body = sep + 4;
    r.body_len = got - (size_t)(r.body - buf);
    return r;
}

static http_resp http_get(int port, const char *method, const char *path, const char *token) {
    char req[2048], auth[600] = "";
    if (token) snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", token);
    snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nHost: 127.0.0.1:%d\r\n%s\r\n", method, path, port, auth);
    return http_raw(port, req, strlen(req));
}

static int head_has(const http_resp *r, const char *needle) {
    if (!r->head) return 0;
    for (const char *p = r->head; *p; p++)
        if (strncasecmp(p, needle, strlen(needle)) == 0) return 1;
    return 0;
}

/* ------------------------------------------------------------------ the exposition format */
/* Checks the text format line by line: every sample's family has HELP and TYPE before it,
 * names follow Prometheus' rules, label values are quoted, values parse. The number of
 * samples, or -1 (with the offending line in why). */
static int well_formed(const char *text, char *why, size_t n) {
    char fam[64][128];
    int nfam = 0, samples = 0;
    const char *p = text;
    while (*p) {
        const char *e = strchr(p, '\n');
        if (!e) {
            snprintf(why, n, "no newline at the end");
            return -1;
        }
        char line[4096];
        size_t l = (size_t)(e - p) < sizeof line - 1 ? (size_t)(e - p) : sizeof line - 1;
        memcpy(line, p, l);
        line[l] = 0;
        p = e + 1;
        char name[128], type[32];
        if (sscanf(line, "# TYPE %127s %31s", name, type) == 2) {
            if (strcmp(type, "gauge") && strcmp(type, "counter") && strcmp(type, "histogram")) {
                snprintf(why, n, "bad TYPE: %.200s", line);
                return -1;
            }
            if (nfam < 64) snprintf(fam[nfam++], sizeof fam[0], "%s", name);
            continue;
        }
        if (line[0] == '#') continue;
        size_t k = 0;
        while (isalnum((unsigned char)line[k]) || line[k] == '_' || line[k] == ':') k++;
        if (k == 0 || isdigit((unsigned char)line[0])) {
            snprintf(why, n, "bad metric name: %.200s", line);
            return -1;
        }
        snprintf(name, sizeof name, "%.*s", (int)k, line);
        int known = 0;
        for (int i = 0; i < nfam && !known; i++) {
            size_t fl = strlen(fam[i]);
            known = !strcmp(name, fam[i]) ||
                    (!strncmp(name, fam[i], fl) && (!strcmp(name + fl, "_bucket") ||
                                                   !strcmp(name + fl, "_sum") || !strcmp(name + fl, "_count")));
        }
        if (!known) {
            snprintf(why, n, "sample without TYPE: %.200s", line);
            return -1;
        }
        const char *v = line + k;
        if (*v == '{') {
            const char *q = v + 1;
            while (*q && *q != '}') { /* name="value", ... */
                while (isalnum((unsigned char)*q) || *q == '_') q++;
                if (q[0] != '=' || q[1] != '"') {
                    snprintf(why, n, "bad label: %.200s", line);
                    return -1;
                }
                q += 2;
                while (*q && *q != '"') q += (*q == '\\' && q[1]) ? 2 : 1;
                if (*q != '"') {
                    snprintf(why, n, "unterminated label: %.200s", line);
                    return -1;
                }
                q++;
                if (*q == ',') q++;
            }
            if (*q != '}') {
                snprintf(why, n, "unterminated labels: %.200s", line);
                return -1;
            }
            v = q + 1;
        }
        char *end;
        if (*v != ' ' || (strtod(v + 1, &end), *end != 0 && *end != ' ')) {
            snprintf(why, n, "bad value: %.200s", line);
            return -1;
        }
        samples++;
    }
    return samples;
}

/* The value of the first sample whose line starts with prefix; NAN when none. */
static double sample_value(const char *text, const char *prefix) {
    const char *p = text;
    while (p && *p) {
        if (!strncmp(p, prefix, strlen(prefix))) {
            const char *sp = strchr(p, '}');
            if (!sp) sp = p + strlen(prefix);
            return strtod(strchr(sp, ' ') + 1, NULL);
        }
        p = strchr(p, '\n');
        if (p) p++;
    }
    return NAN;
}

/* ------------------------------------------------------------------ running ctorch */
/* Waits for "metrics: http://HOST:PORT" in log; the port, or 0 when the process ended or
 * `secs` passed. */
static int wait_port(pid_t pid, const char *log, double secs) {
    double t0 = now_s();
    while (now_s() - t0 < secs) {
        FILE *f = fopen(log, "r");
        char line[1024];
        int port = 0;
        while (f && fgets(line, sizeof line, f)) {
            const char *m = strstr(line, "metrics: http://");
            const char *c = m ? strrchr(m, ':') : NULL;
            if (c) port = atoi(c + 1);
        }
        if (f) fclose(f);
        if (port > 0) return port;
        if (waitpid(pid, NULL, WNOHANG) == pid) return 0;
        usleep(50000);
    }
    return 0;
}

static void stop_proc(pid_t pid) {
    if (pid <= 0) return;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static pid_t start_train(const char *extra, const char *name, char *log, size_t nlog) {
    char cmd[2048];
    snprintf(log, nlog, "%s/%s.log", tmpdir(), name);
    snprintf(cmd, sizeof cmd, "%s train --model mlp --dataset mnist --data-dir %s --threads 1 "
             "--test-limit 200 --no-checkpoints --run-dir %s/%s %s", bin(), mnist_dir(), tmpdir(),
             name, extra);
    return spawn(cmd, log);
}

static const char *const REQUIRED[] = {
    "ctorch_train_loss", "ctorch_train_accuracy", "ctorch_test_accuracy", "ctorch_learning_rate",
    "ctorch_epoch", "ctorch_steps_total", "ctorch_images_total", "ctorch_images_per_second",
    "ctorch_data_wait_seconds_bucket", "ctorch_data_wait_seconds_sum", "ctorch_data_wait_seconds_count",
    "ctorch_step_seconds_bucket", "ctorch_nan_events_total", "ctorch_amp_skipped_steps_total",
    "ctorch_run_active", "ctorch_planned_steps", "ctorch_build_info", "process_resident_memory_bytes",
    "process_cpu_seconds_total", "process_start_time_seconds", NULL};

static void check_metrics_text(const char *body) {
    char why[600], needle[200];
    int n = well_formed(body, why, sizeof why);
    CHECK_MSG(n > 20, "/metrics is not well-formed (%d samples): %s", n, why);
    for (int i = 0; REQUIRED[i]; i++) {
        snprintf(needle, sizeof needle, "\n%s", REQUIRED[i]);
        CHECK_MSG(strstr(body, needle) || !strncmp(body, REQUIRED[i], strlen(REQUIRED[i])),
                  "/metrics lacks %s", REQUIRED[i]);
    }
    CHECK_MSG(strstr(body, "ctorch_steps_total{run=\"mon-basic\",model=\"mlp\",rank=\"0\"}"),
              "ctorch_ series lack the run, model and rank labels");
    if (have("promtool")) {
        char path[600], cmd[1400], log[600];
        snprintf(path, sizeof path, "%s/metrics.txt", tmpdir());
        snprintf(log, sizeof log, "%s/promtool-metrics.log", tmpdir());
        FILE *f = fopen(path, "w");
        if (f) {
            fputs(body, f);
            fclose(f);
        }
        snprintf(cmd, sizeof cmd, "promtool check metrics < %s", path);
        int rc = run(cmd, log);
        struct stat st;
        CHECK_MSG(rc == 0 && stat(log, &st) == 0 && st.st_size == 0,
                  "promtool check metrics: exit %d, see %s", rc, log);
        if (rc != 0) show_log(log);
    }
}

static void check_json_endpoints(int port) {
    http_resp r = http_get(port, "GET", "/api/run", NULL);
    CHECK_MSG(r.status == 200 && head_has(&r, "application/json"), "/api/run: %d", r.status);
    json_error_t je;
    json_t *j = r.body ? json_loads(r.body, 0, &je) : NULL;
    CHECK_MSG(j, "/api/run is not JSON: %s", r.body ? r.body : "");
    const char *state = json_string_value(json_object_get(j, "state"));
    CHECK(state && (!strcmp(state, "starting") || !strcmp(state, "training")));
    CHECK(!strcmp(json_string_value(json_object_get(j, "run")) ?: "", "mon-basic"));
    CHECK(!strcmp(json_string_value(json_object_get(j, "model")) ?: "", "mlp"));
    CHECK(!strcmp(json_string_value(json_object_get(j, "dataset")) ?: "", "mnist"));
    CHECK(json_integer_value(json_object_get(j, "world_size")) == 1);
    CHECK(json_integer_value(json_object_get(j, "steps_per_epoch")) == 16); /* 1000 / 64 */
    CHECK(json_integer_value(json_object_get(j, "planned_steps")) == 16 * 400);
    CHECK(json_number_value(json_object_get(json_object_get(j, "config"), "lr")) == 0.01);
    json_decref(j);
    resp_free(&r);
    r = http_get(port, "GET", "/api/history", NULL);
    j = r.status == 200 && r.body ? json_loads(r.body, 0, &je) : NULL;
    json_t *pts = json_object_get(j, "points");
    CHECK_MSG(json_is_array(pts) && json_array_size(pts) >= 1, "/api/history: %d %s", r.status,
              r.body ? r.body : "");
    json_t *p0 = json_array_get(pts, 0);
    CHECK(json_integer_value(json_object_get(p0, "step")) == 16);
    CHECK(json_integer_value(json_object_get(p0, "epoch")) == 1);
    CHECK(json_is_number(json_object_get(p0, "loss")) && json_is_number(json_object_get(p0, "test_accuracy")));
    CHECK(json_is_number(json_object_get(p0, "time")) && json_is_number(json_object_get(p0, "lr")));
    CHECK(json_is_number(json_object_get(p0, "train_accuracy")) &&
          json_is_number(json_object_get(p0, "images_per_second")));
    json_decref(j);
    resp_free(&r);
}

/* Unknown paths, other methods, a malformed request, oversized headers and a client that
 * sends one byte at a time: answered or refused, and the server answers /metrics after. */
static void check_bad_requests(int port) {
    http_resp r = http_get(port, "GET", "/nope", NULL);
    CHECK_MSG(r.status == 404, "unknown path: %d", r.status);
    resp_free(&r);
    r = http_get(port, "POST", "/metrics", NULL);
    CHECK_MSG(r.status == 405, "POST /metrics: %d", r.status);
    resp_free(&r);
    r = http_get(port, "DELETE", "/api/run", NULL);
    CHECK_MSG(r.status == 405, "DELETE /api/run: %d", r.status);
    resp_free(&r);
    static const char garbage[] = "\x01\x02 garbage\r\n\r\n";
    r = http_raw(port, garbage, sizeof garbage - 1);
    CHECK_MSG(r.status == 0 || r.status == 400, "garbage request: %d", r.status);
    resp_free(&r);
    size_t big = 64 * 1024;
    char *req = malloc(big + 256);
    int off = snprintf(req, 256, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(req + off, 'a', big);
    memcpy(req + off + big, "\r\n\r\n", 5);
    r = http_raw(port, req, (size_t)off + big + 4);
    CHECK_MSG(r.status == 0 || r.status == 413 || r.status == 431,
              "a 64 KiB header was answered %d (refused: 413/431 or closed)", r.status);
    resp_free(&r);
    free(req);
    int slow = connect_to(port); /* slowloris: one byte, then silence, held open */
    if (slow >= 0 && send(slow, "G", 1, MSG_NOSIGNAL) != 1) {}
    double t0 = now_s();
    r = http_get(port, "GET", "/metrics", NULL);
    CHECK_MSG(r.status == 200 && now_s() - t0 < 2, "/metrics after bad requests: %d in %.2f s",
              r.status, now_s() - t0);
    resp_free(&r);
    if (slow >= 0) close(slow);
}

TEST(monitor_metrics_api_and_bad_clients_on_a_real_run) {
    if (!mnist_dir()) SKIP("CTORCH_DATA does not hold MNIST");
    char log[600];
    pid_t pid = start_train("--train-limit 1000 --epochs 400 --metrics-port 0", "mon-basic", log,
                            sizeof log);
    int port = wait_port(pid, log, 30);
    CHECK_MSG(port > 0, "no metrics line from ctorch train");
    if (port <= 0) {
        show_log(log);
        stop_proc(pid);
        return;
    }
    http_resp a = {0}, b = {0};
    double t0 = now_s(); /* wait for the first logged epoch */
    do {
        resp_free(&a);
        usleep(100000);
        a = http_get(port, "GET", "/metrics", NULL);
    } while (now_s() - t0 < 20 && a.body && !strstr(a.body, "ctorch_test_accuracy"));
    CHECK_MSG(a.status == 200, "/metrics: %d", a.status);
    CHECK(head_has(&a, "text/plain; version=0.0.4"));
    if (a.body) check_metrics_text(a.body);
    usleep(300000); /* past the 100 ms cache */
    b = http_get(port, "GET", "/metrics", NULL);
    const char *sel = "ctorch_steps_total{";
    double s1 = a.body ? sample_value(a.body, sel) : NAN, s2 = b.body ? sample_value(b.body, sel) : NAN;
    double i1 = a.body ? sample_value(a.body, "ctorch_images_total{") : NAN;
    double i2 = b.body ? sample_value(b.body, "ctorch_images_total{") : NAN;
    CHECK_MSG(s2 > s1 && s1 > 0, "ctorch_steps_total did not increase: %g then %g", s1, s2);
    CHECK_MSG(i2 > i1 && i1 > 0, "ctorch_images_total did not increase: %g then %g", i1, i2);
    CHECK(sample_value(b.body ? b.body : "", "ctorch_run_active{") == 1);
    printf("    steps %g -> %g in 0.3 s, images %g -> %g\n", s1, s2, i1, i2);
    resp_free(&a);
    resp_free(&b);
    check_json_endpoints(port);
    check_bad_requests(port);
    http_resp page = http_get(port, "GET", "/", NULL);
    CHECK_MSG(page.status == 200 && head_has(&page, "text/html") && page.body && strstr(page.body, "<html"),
              "GET /: %d", page.status);
    resp_free(&page);
    CHECK_MSG(waitpid(pid, NULL, WNOHANG) == 0, "ctorch train ended during the requests");
    stop_proc(pid);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

TEST(monitor_bearer_token) {
    if (!mnist_dir()) SKIP("CTORCH_DATA does not hold MNIST");
    char tok[600], log[600], opts[1400];
    snprintf(tok, sizeof tok, "%s/metrics.token", tmpdir());
    write_file(tok, "s3cret-Tok3n\n");
    snprintf(opts, sizeof opts, "--train-limit 1000 --epochs 400 --metrics-port 0 "
             "--metrics-token-file %s", tok);
    pid_t pid = start_train(opts, "mon-token", log, sizeof log);
    int port = wait_port(pid, log, 30);
    CHECK_MSG(port > 0, "no metrics line");
    const char *paths[] = {"/metrics", "/api/run", "/api/history", "/nope"};
    for (int i = 0; port > 0 && i < 4; i++) {
        http_resp r = http_get(port, "GET", paths[i], NULL);
        CHECK_MSG(r.status == 401 && head_has(&r, "WWW-Authenticate: Bearer"), "%s without a token: %d",
                  paths[i], r.status);
        resp_free(&r);
        r = http_get(port, "GET", paths[i], "wrong-token");
        CHECK_MSG(r.status == 401, "%s with a wrong token: %d", paths[i], r.status);
        resp_free(&r);
        r = http_get(port, "GET", paths[i], "s3cret-Tok3n0");
        CHECK_MSG(r.status == 401, "%s with a longer token: %d", paths[i], r.status);
        resp_free(&r);
        r = http_get(port, "GET", paths[i], "s3cret-Tok3n");
        CHECK_MSG(r.status == (i == 3 ? 404 : 200), "%s with the token: %d", paths[i], r.status);
        resp_free(&r);
    }
    http_resp page = http_get(port, "GET", "/", NULL); /* the page holds no data */
    CHECK_MSG(page.status == 200, "GET / without a token: %d", page.status);
    resp_free(&page);
    stop_proc(pid);
    CHECK_MSG(!log_has(log, "s3cret"), "the token was printed");
}

TEST(monitor_usage_errors_and_port_in_use) {
    if (!mnist_dir()) SKIP("CTORCH_DATA does not hold MNIST");
    char cmd[2048], log[600], tok[600], empty[600];
    snprintf(log, sizeof log, "%s/mon-usage.log", tmpdir());
    snprintf(tok, sizeof tok, "%s/usage.token", tmpdir());
    snprintf(empty, sizeof empty, "%s/empty.token", tmpdir());
    write_file(tok, "abc\n");
    write_file(empty, " \n");
    const struct {
        const char *args, *needle;
        int code;
    } cases[] = {
        {"--metrics-port 0 --metrics-addr 0.0.0.0", "--metrics-token-file", 2},
        {"--metrics-port 0 --metrics-addr 0.0.0.0", "head -c 32 /dev/urandom", 2},
        {"--metrics-port 0 --metrics-token-file /nonexistent/token", "/nonexistent/token", 2},
        {"--metrics-port 0 --metrics-addr 0.0.0.0 --metrics-token-file EMPTY", "is empty", 2},
        {"--metrics-port 0 --metrics-addr not..an..address", "--metrics-addr", 2},
        {"--metrics-port 70000", "--metrics-port", 2},
        {"--metrics-addr 127.0.0.1", "go with --metrics-port", 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[700];
        snprintf(args, sizeof args, "%s", cases[i].args);
        char *e = strstr(args, "EMPTY");
        if (e) snprintf(e, sizeof args - (size_t)(e - args), "%s", empty);
        snprintf(cmd, sizeof cmd, "%s train --model mlp --dataset mnist --data-dir %s --epochs 1 "
                 "--run-dir %s/usage-%zu %s", bin(), mnist_dir(), tmpdir(), i, args);
        int rc = run(cmd, log);
        CHECK_MSG(rc == cases[i].code && log_has(log, cases[i].needle), "%s: exit %d (want %d, "
                  "message with '%s')", cases[i].args, rc, cases[i].code, cases[i].needle);
        if (rc != cases[i].code) show_log(log);
    }
    /* a port that is taken: exit 1 naming it, before any training */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 1) == 0 &&
          getsockname(fd, (struct sockaddr *)&a, &al) == 0);
    int port = ntohs(a.sin_port);
    snprintf(cmd, sizeof cmd, "%s train --model mlp --dataset mnist --data-dir %s --epochs 1 "
             "--train-limit 256 --run-dir %s/usage-port --metrics-port %d", bin(), mnist_dir(),
             tmpdir(), port);
    int rc = run(cmd, log);
    char needle[64];
    snprintf(needle, sizeof needle, "--metrics-port %d", port);
    CHECK_MSG(rc == 1 && log_has(log, needle) && log_has(log, "in use") && !log_has(log, "epoch 1/1"),
              "port in use: exit %d", rc);
    if (rc != 1) show_log(log);
    close(fd);
}

/* ------------------------------------------------------------------ alert rules */
TEST(monitor_alert_rules_promtool) {
    if (!have("promtool")) SKIP("promtool not installed (Debian: prometheus)");
    char log[600];
    snprintf(log, sizeof log, "%s/promtool-rules.log", tmpdir());
    int rc = run("promtool check rules deploy/prometheus/alerts.yml", log);
    CHECK_MSG(rc == 0 && log_has(log, "SUCCESS: 9 rules found"), "promtool check rules: exit %d", rc);
    if (rc) show_log(log);
    rc = run("cd deploy/prometheus && promtool test rules alerts_test.yml", log);
    CHECK_MSG(rc == 0 && log_has(log, "SUCCESS"), "promtool test rules: exit %d", rc);
    if (rc) show_log(log);
    rc = run("promtool check config deploy/prometheus/prometheus.yml", log);
    CHECK_MSG(rc == 0, "promtool check config prometheus.yml: exit %d", rc);
    if (have("amtool")) {
        rc = run("amtool check-config deploy/prometheus/alertmanager.yml", log);
        CHECK_MSG(rc == 0, "amtool check-config alertmanager.yml: exit %d", rc);
    }
}

/* ------------------------------------------------------------------ Prometheus + Alertmanager */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof a;
    int p = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &l) == 0)
        p = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return p;
}

/* alerts.yml run 60 times faster: every duration in minutes ("5m]", "for: 5m", "offset
 * 10m") becomes the same number of seconds (alerts.yml writes durations in minutes only). */
static int write_fast_rules(const char *out) {
    FILE *f = fopen("deploy/prometheus/alerts.yml", "r"), *o = fopen(out, "w");
    if (!f || !o) {
        if (f) fclose(f);
        if (o) fclose(o);
        return -1;
    }
    int c, prev = 0;
    while ((c = fgetc(f)) != EOF) {
        if (c == 'm' && isdigit(prev)) {
            int next = fgetc(f);
            fputc(isalnum(next) ? 'm' : 's', o);
            if (next != EOF) fputc(next, o);
            prev = next;
            continue;
        }
        fputc(c, o);
        prev = c;
    }
    fclose(f);
    return fclose(o);
}

/* Whether Alertmanager's /api/v2/alerts holds alertname with run="run". */
static int am_has(int am_port, const char *alertname, const char *run_name) {
    http_resp r = http_get(am_port, "GET", "/api/v2/alerts", NULL);
    json_error_t je;
    json_t *j = r.status == 200 && r.body ? json_loads(r.body, 0, &je) : NULL;
    int found = 0;
    for (size_t i = 0; i < json_array_size(j) && !found; i++) {
        json_t *l = json_object_get(json_array_get(j, i), "labels");
        found = !strcmp(json_string_value(json_object_get(l, "alertname")) ?: "", alertname) &&
                !strcmp(json_string_value(json_object_get(l, "run")) ?: "", run_name);
    }
    json_decref(j);
    resp_free(&r);
    return found;
}

typedef struct {
    pid_t am, prom, nan_run, stall_run;
    int traced;
} stack;

static void stop_stack(stack *s) {
    if (s->traced) ptrace(PTRACE_DETACH, s->stall_run, NULL, NULL);
    pid_t all[4] = {s->stall_run, s->nan_run, s->prom, s->am};
    for (int i = 0; i < 4; i++) stop_proc(all[i]);
}

static int start_prometheus(stack *s, int am_port, int prom_port, int p_nan, int p_stall) {
    char dir[600], cfg[700], rules[700], cmd[2400], log[700];
    snprintf(dir, sizeof dir, "%s/prom", tmpdir());
    mkdir(dir, 0755);
    snprintf(rules, sizeof rules, "%s/alerts-fast.yml", dir);
    snprintf(cfg, sizeof cfg, "%s/prometheus.yml", dir);
    if (write_fast_rules(rules) != 0) return -1;
    FILE *f = fopen(cfg, "w");
    if (!f) return -1;
    fprintf(f, "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
               "rule_files: ['%s']\n"
               "alerting: {alertmanagers: [{static_configs: [{targets: ['127.0.0.1:%d']}]}]}\n"
               "scrape_configs:\n"
               "  - job_name: ctorch\n"
               "    static_configs: [{targets: ['127.0.0.1:%d', '127.0.0.1:%d']}]\n",
            rules, am_port, p_nan, p_stall);
    fclose(f);
    snprintf(log, sizeof log, "%s/prometheus.log", tmpdir());
    snprintf(cmd, sizeof cmd, "prometheus --config.file=%s --storage.tsdb.path=%s/data "
             "--web.listen-address=127.0.0.1:%d --log.level=warn", cfg, dir, prom_port);
    s->prom = spawn(cmd, log);
    return 0;
}

static void start_alertmanager(stack *s, int am_port) {
    char dir[600], cfg[700], cmd[2400], log[700];
    snprintf(dir, sizeof dir, "%s/am", tmpdir());
    mkdir(dir, 0755);
    snprintf(cfg, sizeof cfg, "%s/alertmanager.yml", dir);
    write_file(cfg, "route: {receiver: 'null', group_wait: 1s, group_interval: 1s}\n"
                    "receivers: [{name: 'null'}]\n");
    snprintf(log, sizeof log, "%s/alertmanager.log", tmpdir());
    snprintf(cmd, sizeof cmd, "prometheus-alertmanager --config.file=%s --storage.path=%s "
             "--web.listen-address=127.0.0.1:%d --cluster.listen-address= --log.level=warn",
             cfg, dir, am_port);
    s->am = spawn(cmd, log);
}

/* Stops only the training thread of pid (its main thread: tid == pid) with ptrace, so
 * that the run stops stepping while its metrics server goes on answering. */
static int stall_training_thread(pid_t pid) {
    if (ptrace(PTRACE_SEIZE, pid, NULL, NULL) != 0) return -1;
    if (ptrace(PTRACE_INTERRUPT, pid, NULL, NULL) != 0) return -1;
    int st;
    return waitpid(pid, &st, __WALL) == pid && WIFSTOPPED(st) ? 0 : -1;
}

TEST(monitor_alerts_reach_real_alertmanager) {
    if (!mnist_dir()) SKIP("CTORCH_DATA does not hold MNIST");
    if (!have("prometheus") || !have("prometheus-alertmanager"))
        SKIP("prometheus or prometheus-alertmanager not installed (Debian packages of those names)");
    stack s = {0};
    char log_nan[600], log_stall[600];
    double t0 = now_s();
    s.nan_run = start_train("--train-limit 2000 --epochs 5 --lr 1e5 --metrics-port 0 "
                            "--metrics-linger 120", "mon-nan", log_nan, sizeof log_nan);
    s.stall_run = start_train("--epochs 200 --metrics-port 0", "mon-stall", log_stall, sizeof log_stall);
    int p_nan = wait_port(s.nan_run, log_nan, 30), p_stall = wait_port(s.stall_run, log_stall, 30);
    int am_port = free_port(), prom_port = free_port();
    CHECK_MSG(p_nan > 0 && p_stall > 0 && am_port > 0 && prom_port > 0 && am_port != prom_port,
              "ports: %d %d %d %d", p_nan, p_stall, am_port, prom_port);
    start_alertmanager(&s, am_port);
    if (p_nan <= 0 || p_stall <= 0 || start_prometheus(&s, am_port, prom_port, p_nan, p_stall) != 0) {
        stop_stack(&s);
        return;
    }
    sleep(4); /* Prometheus scrapes the stepping run a few times */
    CHECK_MSG(stall_training_thread(s.stall_run) == 0, "ptrace could not stop the training thread: %s",
              strerror(errno));
    s.traced = 1;
    double t_stall = now_s();
    int nan_seen = 0, stall_seen = 0;
    while (now_s() - t_stall < 60 && !(nan_seen && stall_seen)) {
        if (!nan_seen && am_has(am_port, "CtorchLossNaN", "mon-nan")) {
            nan_seen = 1;
            printf("    CtorchLossNaN at Alertmanager %.1f s after start\n", now_s() - t0);
        }
        if (!stall_seen && am_has(am_port, "CtorchTrainingStalled", "mon-stall")) {
            stall_seen = 1;
            printf("    CtorchTrainingStalled at Alertmanager %.1f s after the stall\n", now_s() - t_stall);
        }
        usleep(500000);
    }
    CHECK_MSG(log_has(log_nan, "the loss is NaN"), "the NaN run did not go NaN");
    CHECK_MSG(nan_seen, "CtorchLossNaN never reached Alertmanager");
    CHECK_MSG(stall_seen, "CtorchTrainingStalled never reached Alertmanager");
    /* the stalled run's server still answers: the alert is the stall, not a dead exporter */
    http_resp r = http_get(p_stall, "GET", "/metrics", NULL);
    CHECK_MSG(r.status == 200, "the stalled run's /metrics: %d", r.status);
    resp_free(&r);
    CHECK_MSG(!am_has(am_port, "CtorchTrainingStalled", "mon-nan"),
              "the NaN run (not training) was reported stalled");
    stop_stack(&s);
}
