/* The live page (src/monitor/page.html, docs/live-page.md) in headless Chromium, and
 * `ctorch plot` against the curves.svg that `ctorch train` writes. The Chromium tests skip
 * when Debian's chromium (and python3, for the mock server) are not installed. */
#include "cli_util.h"
#include "test.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SHOT_DIR "build/test-output"

/* ------------------------------------------------------------------ helpers */
/* The whole file, NUL-terminated (malloc'd; *len its size), or NULL. */
static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    for (size_t r; b && (r = fread(b + n, 1, cap - n - 1, f)) > 0;) {
        n += r;
        if (cap - n < 2) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) free(b);
            b = nb;
        }
    }
    fclose(f);
    if (b) b[n] = 0;
    if (len) *len = n;
    return b;
}

static int count_in(const char *text, const char *needle) {
    int c = 0;
    for (const char *p = text; p && (p = strstr(p, needle)) != NULL; p++) c++;
    return c;
}

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fputs(text, f) >= 0;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* ---------------------------------------------------------------- ctorch plot */
TEST(page_plot_redraws_train_curves_from_the_run_dir) {
    if (!data_dir()) SKIP("CTORCH_DATA with CIFAR-10 not set");
    char dir[512], cmd[4096], log[600], out[600];
    snprintf(dir, sizeof dir, "%s/plotrun", tmpdir());
    snprintf(log, sizeof log, "%s/plot.log", tmpdir());
    snprintf(cmd, sizeof cmd,
             "%s train --model simple_cnn --dataset cifar10 --data-dir %s --train-limit 512 "
             "--test-limit 128 --batch-size 64 --epochs 3 --schedule cosine --threads 2 "
             "--run-dir %s",
             bin(), data_dir(), dir);
    int rc = run(cmd, log);
    if (rc != 0) show_log(log);
    CHECK(rc == 0);
    char path[700];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    size_t n = 0;
    char *jsonl = slurp(path, &n);
    CHECK_NN(jsonl);
    int rows = count_in(jsonl, "\n");
    CHECK_MSG(rows == 3, "metrics.jsonl has %d rows, want 3 (one per epoch)", rows);
    snprintf(path, sizeof path, "%s/curves.svg", dir);
    char *train_svg = slurp(path, NULL);
    CHECK_NN(train_svg);
    if (!jsonl || !train_svg) goto out;
    /* the page's four panels, over the step; each curve has one point per logged row */
    const char *panels[] = {"data-panel=\"Loss\"", "data-panel=\"Accuracy\"",
                            "data-panel=\"Throughput\"", "data-panel=\"Learning rate\""};
    for (int k = 0; k < 4; k++) CHECK_MSG(count_in(train_svg, panels[k]) == 1, "no %s", panels[k]);
    CHECK(count_in(train_svg, ">step</text>") == 4);
    const char *series[] = {"train_loss", "test_loss", "train_acc", "test_acc", "images_per_sec", "lr"};
    for (int s = 0; s < 6; s++)
        CHECK_MSG(svg_series_points(train_svg, series[s]) == rows, "curves.svg: %s has %d points, "
                  "metrics.jsonl %d rows", series[s], svg_series_points(train_svg, series[s]), rows);
    /* the cosine schedule: the learning rate falls, so its curve is not flat */
    /* ctorch plot draws the same file (same default title: the run directory) */
    snprintf(out, sizeof out, "%s/plot.svg", tmpdir());
    snprintf(cmd, sizeof cmd, "%s plot %s/ --out %s", bin(), dir, out);
    CHECK(run(cmd, log) == 0);
    CHECK(log_has(log, "wrote ") && log_has(log, "(3 rows)"));
    char *plot_svg = slurp(out, NULL);
    CHECK_NN(plot_svg);
    CHECK_MSG(plot_svg && !strcmp(plot_svg, train_svg), "ctorch plot's %s differs from the %s "
              "train wrote", out, path);
    free(plot_svg);
    /* without --out: RUN_DIR/curves.svg rewritten, the same; --title changes the title */
    unlink(path);
    snprintf(cmd, sizeof cmd, "%s plot %s", bin(), dir);
    CHECK(run(cmd, log) == 0);
    plot_svg = slurp(path, NULL);
    CHECK(plot_svg && !strcmp(plot_svg, train_svg));
    free(plot_svg);
    snprintf(cmd, sizeof cmd, "%s plot %s --out %s --title 'lr <0.1> & cosine'", bin(), dir, out);
    CHECK(run(cmd, log) == 0);
    plot_svg = slurp(out, NULL);
    CHECK(plot_svg && count_in(plot_svg, ">lr &lt;0.1&gt; &amp; cosine</text>") == 1);
    free(plot_svg);
out:
    free(jsonl);
    free(train_svg);
}

TEST(page_plot_refuses_bad_run_dirs_and_usage) {
    char d[512], cmd[2048], log[600], p[700];
    snprintf(d, sizeof d, "%s/plotbad", tmpdir());
    snprintf(log, sizeof log, "%s/plotbad.log", tmpdir());
    mkdir(d, 0755);
    struct {
        const char *args, *needle;
        int code;
    } cases[] = {
        {"", "name the run directory", 2},
        {"a b", "unexpected argument 'b'", 2},
        {"--bogus x", "--bogus", 2},
        {"%s/missing", "No such file or directory", 2},
        {"%s/file", "is not a directory", 2},
        {"%s", "is not a run directory: it has no metrics.jsonl", 2},
    };
    snprintf(p, sizeof p, "%s/file", d);
    CHECK_OK(write_text(p, "x\n"));
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char args[800];
        snprintf(args, sizeof args, cases[i].args, d);
        snprintf(cmd, sizeof cmd, "%s plot %s", bin(), args);
        int rc = run(cmd, log);
        CHECK_MSG(rc == cases[i].code && log_has(log, cases[i].needle),
                  "ctorch plot %s: exit %d (want %d), output without '%s'", args, rc,
                  cases[i].code, cases[i].needle);
    }
    /* an empty metrics.jsonl, a line that is not an object: exit 2 naming it */
    snprintf(p, sizeof p, "%s/metrics.jsonl", d);
    CHECK_OK(write_text(p, "\n"));
    snprintf(cmd, sizeof cmd, "%s plot %s", bin(), d);
    CHECK(run(cmd, log) == 2 && log_has(log, "has no rows yet"));
    CHECK_OK(write_text(p, "{\"epoch\": 1, \"step\": 16, \"train_loss\": 2.1}\n[1, 2]\n"));
    CHECK(run(cmd, log) == 2 && log_has(log, "line 2 is not a JSON object"));
    CHECK_OK(write_text(p, "{\"epoch\": 1, \"step\": 16, \"train_loss\": 2.1}\n{\"epoch\": 2, "));
    CHECK(run(cmd, log) == 2 && log_has(log, "line 2 is not a JSON object"));
    snprintf(p, sizeof p, "%s/curves.svg", d);
    CHECK(access(p, F_OK) != 0); /* nothing written */
    /* a good file; --out into a missing directory is a runtime failure (exit 1); a title
     * that is not UTF-8 is bad input (exit 2); neither leaves a file behind */
    snprintf(p, sizeof p, "%s/metrics.jsonl", d);
    CHECK_OK(write_text(p, "{\"epoch\": 1, \"step\": 16, \"train_loss\": 2.1, \"lr\": 0.1}\n\n"
                           "{\"epoch\": 2, \"step\": 32, \"train_loss\": 1.9, \"lr\": 0.05}\n"));
    snprintf(cmd, sizeof cmd, "%s plot %s --out %s/no/such/dir/c.svg", bin(), d, d);
    CHECK(run(cmd, log) == 1 && log_has(log, "does not exist"));
    snprintf(cmd, sizeof cmd, "%s plot %s --title $(printf 'bad\\377')", bin(), d);
    CHECK(run(cmd, log) == 2 && log_has(log, "not valid UTF-8"));
    snprintf(p, sizeof p, "%s/curves.svg", d);
    CHECK(access(p, F_OK) != 0);
    snprintf(cmd, sizeof cmd, "%s plot %s", bin(), d);
    CHECK(run(cmd, log) == 0 && log_has(log, "(2 rows)"));
    char *svg = slurp(p, NULL);
    CHECK(svg && svg_series_points(svg, "train_loss") == 2 && svg_series_points(svg, "lr") == 2);
    CHECK(svg && count_in(svg, "no data") == 2); /* accuracy and throughput: nothing logged */
    free(svg);
    snprintf(cmd, sizeof cmd, "%s help plot", bin());
    CHECK(run(cmd, log) == 0 && log_has(log, "usage: ctorch plot RUN_DIR"));
}

/* ------------------------------------------------------------ headless Chromium */
static const char *chromium(void) {
    static const char *const names[] = {"chromium", "chromium-browser", "google-chrome"};
    for (int i = 0; i < 3; i++) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "command -v %s >/dev/null 2>&1", names[i]);
        if (system(cmd) == 0) return names[i];
    }
    return NULL;
}

/* Loads url in headless Chromium (a fresh profile, killed after 90 s) with `budget` ms of
 * virtual time: the DOM after it into dom_path, or, with shot, a screenshot there. */
static int chromium_run(const char *url, int budget, const char *dom_path, const char *shot) {
    char prof[256];
    if (ct_test_mkdtemp(prof, sizeof prof, "/tmp/ctorch-chromium-XXXXXX") != 0) return -1;
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "timeout -k 5 90 %s --headless --no-sandbox --disable-gpu --no-first-run "
             "--disable-extensions --user-data-dir='%s' --virtual-time-budget=%d "
             "--window-size=1280,1000 %s%s%s '%s' %s%s 2>/dev/null",
             chromium(), prof, budget, shot ? "--screenshot='" : "--dump-dom", shot ? shot : "",
             shot ? "'" : "", url, dom_path ? "> " : "", dom_path ? dom_path : "");
    int st = system(cmd);
    ct_test_rm_rf(prof);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The JSON of <pre id="points"> in a dumped DOM (entities undone), or NULL. */
static json_t *page_points(const char *dom) {
    const char *p = strstr(dom, "<pre id=\"points\">");
    if (!p) return NULL;
    p += strlen("<pre id=\"points\">");
    const char *e = strstr(p, "</pre>");
    if (!e) return NULL;
    char *t = malloc((size_t)(e - p) + 1), *o = t;
    if (!t) return NULL;
    while (p < e) {
        static const char *const ent[][2] = {{"&quot;", "\""}, {"&amp;", "&"}, {"&lt;", "<"}, {"&gt;", ">"}};
        int hit = 0;
        for (int k = 0; k < 4 && !hit; k++)
            if (!strncmp(p, ent[k][0], strlen(ent[k][0]))) {
                *o++ = ent[k][1][0];
                p += strlen(ent[k][0]);
                hit = 1;
            }
        if (!hit) *o++ = *p++;
    }
    *o = 0;
    json_t *j = json_loads(t, 0, NULL);
    free(t);
    return j;
}

/* The points of chart.series: a JSON array of [step, value]. */
static json_t *series_of(json_t *pts, const char *chart, const char *series) {
    return json_object_get(json_object_get(pts, chart), series);
}

static double pt(json_t *a, size_t i, int k) { return json_number_value(json_array_get(json_array_get(a, i), k)); }

/* Every point of chart.series at a step the page scraped (not a history step) is a value
 * served at that step: observed is a JSON array of {"steps", key: value} (what the server
 * answered). Returns the points matched; -1 after a failed check. */
static int match_served(json_t *pts, const char *chart, const char *series, const char *key,
                        json_t *observed, json_t *history_steps) {
    json_t *a = series_of(pts, chart, series);
    int matched = 0;
    for (size_t i = 0; i < json_array_size(a); i++) {
        double x = pt(a, i, 0), y = pt(a, i, 1);
        int from_history = 0;
        for (size_t h = 0; h < json_array_size(history_steps); h++)
            from_history |= json_number_value(json_array_get(history_steps, h)) == x;
        int seen = 0, same = 0;
        for (size_t k = 0; k < json_array_size(observed); k++) {
            json_t *o = json_array_get(observed, k);
            if (json_number_value(json_object_get(o, "steps")) != x) continue;
            seen = 1;
            same |= json_number_value(json_object_get(o, key)) == y;
        }
        if (seen && !same && !from_history) {
            ct_test_fail(__FILE__, __LINE__, "%s.%s: the page has %.17g at step %.0f, the server "
                         "served another value there", chart, series, y, x);
            return -1;
        }
        matched += seen && same;
    }
    return matched;
}

/* Starts tests/page_mock.py; its port, or -1. */
static int start_mock(const char *extra, const char *logf, pid_t *pid) {
    char portf[600], cmd[2048], out[600];
    snprintf(portf, sizeof portf, "%s/mock.port", tmpdir());
    snprintf(out, sizeof out, "%s/mock.out", tmpdir());
    unlink(portf);
    unlink(logf);
    snprintf(cmd, sizeof cmd, "python3 tests/page_mock.py --page src/monitor/page.html "
             "--port-file %s --log %s %s", portf, logf, extra);
    *pid = spawn(cmd, out);
    for (int i = 0; i < 200; i++) {
        FILE *f = fopen(portf, "r");
        int port = -1;
        if (f) {
            if (fscanf(f, "%d", &port) != 1) port = -1;
            fclose(f);
            if (port > 0) return port;
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    show_log(out);
    return -1;
}

static void stop(pid_t pid) {
    if (pid <= 0) return;
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

/* What the mock served: its log lines as a JSON array. */
static json_t *served(const char *logf) {
    json_t *a = json_array();
    FILE *f = fopen(logf, "r");
    char line[1024];
    while (f && fgets(line, sizeof line, f)) json_array_append_new(a, json_loads(line, 0, NULL));
    if (f) fclose(f);
    return a;
}

static const char *body_attr(const char *dom, const char *attr, char *buf, size_t n) {
    const char *b = strstr(dom, "<body");
    const char *end = b ? strchr(b, '>') : NULL;
    char key[64];
    snprintf(key, sizeof key, " %s=\"", attr);
    const char *p = b ? strstr(b, key) : NULL;
    if (!p || p > end) return NULL;
    p += strlen(key);
    size_t k = 0;
    while (*p && *p != '"' && k + 1 < n) buf[k++] = *p++;
    buf[k] = 0;
    return buf;
}

TEST(page_chromium_draws_what_the_mock_serves) {
    if (!chromium()) SKIP("no chromium (Debian: apt-get install chromium chromium-driver)");
    if (system("python3 -c 'import http.server' >/dev/null 2>&1") != 0) SKIP("no python3 for the mock server");
    char logf[600], dom[600], url[300], attr[64];
    snprintf(logf, sizeof logf, "%s/mock.log", tmpdir());
    snprintf(dom, sizeof dom, "%s/dom.html", tmpdir());
    pid_t pid;
    int port = start_mock("--token s3cret --gpu", logf, &pid);
    CHECK_MSG(port > 0, "the mock server did not start");
    if (port <= 0) {
        stop(pid);
        return;
    }
    /* 1. with the token: ready, several scrapes, every chart drawn from what was served */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/#token=s3cret", port);
    CHECK(chromium_run(url, 6000, dom, NULL) == 0);
    char *text = slurp(dom, NULL);
    CHECK_NN(text);
    json_t *pts = text ? page_points(text) : NULL;
    CHECK_MSG(pts, "no <pre id=\"points\"> JSON in the page");
    json_t *obs = served(logf), *hist = json_pack("[i,i,i]", 16, 32, 48);
    if (text && pts) {
        CHECK(body_attr(text, "data-ready", attr, sizeof attr) && !strcmp(attr, "1"));
        int scrapes = body_attr(text, "data-scrapes", attr, sizeof attr) ? atoi(attr) : 0;
        CHECK_MSG(scrapes >= 2, "the page scraped /metrics %d times in 6 s", scrapes);
        /* history (3 rows) + one point per scrape, each at the step it was served */
        json_t *loss = series_of(pts, "loss", "loss");
        CHECK_MSG((int)json_array_size(loss) == 3 + scrapes, "loss: %zu points, want 3 + %d",
                  json_array_size(loss), scrapes);
        CHECK(pt(loss, 0, 0) == 16 && pt(loss, 1, 0) == 32 && pt(loss, 2, 0) == 48);
        CHECK(match_served(pts, "loss", "loss", "loss", obs, hist) == scrapes);
        CHECK(match_served(pts, "accuracy", "train", "train_accuracy", obs, hist) == scrapes);
        CHECK(match_served(pts, "throughput", "images_per_second", "images_per_second", obs, hist) == scrapes);
        CHECK(match_served(pts, "lr", "lr", "lr", obs, hist) == scrapes);
        /* the last point is what the last answers said (one more may be in flight) */
        size_t nl = json_array_size(loss), no = json_array_size(obs);
        int last_ok = 0;
        for (size_t k = no >= 2 ? no - 2 : 0; k < no; k++)
            last_ok |= json_number_value(json_object_get(json_array_get(obs, k), "steps")) == pt(loss, nl - 1, 0);
        CHECK_MSG(last_ok, "the page's last step %.0f is not the server's last", pt(loss, nl - 1, 0));
        /* test accuracy: the history's rows that have one (step 32 has null) */
        json_t *test = series_of(pts, "accuracy", "test");
        CHECK(json_array_size(test) >= 2 && pt(test, 0, 0) == 16 && pt(test, 1, 0) == 48);
        /* the GPU chart: utilisation, memory and temperature of both GPUs */
        json_t *g0 = series_of(pts, "gpu", "gpu0_util"), *t1 = series_of(pts, "gpu", "gpu1_temp");
        CHECK((int)json_array_size(g0) == scrapes && json_array_size(t1) >= 1 && pt(t1, 0, 1) == 58);
        CHECK(json_array_size(series_of(pts, "gpu", "gpu1_mem")) >= 1 &&
              fabs(pt(series_of(pts, "gpu", "gpu1_mem"), 0, 1) - 12.5) < 1e-9);
        /* each chart's own data-points attribute, the config table, the progress and ETA */
        CHECK(count_in(text, "id=\"chart-loss\" data-points=") == 1);
        CHECK(count_in(text, "<td>batch_size</td><td>64</td>") == 1);
        CHECK(count_in(text, "<td>schedule</td><td>cosine</td>") == 1);
        CHECK(strstr(text, " / 480</dd>") != NULL);
        const char *eta = strstr(text, "id=\"p-eta\">");
        CHECK(eta && eta[11] >= '0' && eta[11] <= '9'); /* a duration, not "–" */
        CHECK(count_in(text, "class=\"badge training\"") == 1);
        CHECK(count_in(text, "class=\"empty\">no GPU") == 0);
    }
    json_decref(pts);
    free(text);
    /* 2. the screenshot kept in the test output (docs/img/live-page.png is a copy) */
    mkdir("build", 0755);
    mkdir(SHOT_DIR, 0755);
    unlink(SHOT_DIR "/page.png");
    CHECK(chromium_run(url, 6000, NULL, SHOT_DIR "/page.png") == 0);
    struct stat st;
    CHECK_MSG(stat(SHOT_DIR "/page.png", &st) == 0 && st.st_size > 20000,
              "no screenshot in " SHOT_DIR "/page.png");
    printf("    screenshot: " SHOT_DIR "/page.png\n");
    /* 3. without the token: 401, and the page says how to add it; nothing drawn */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
    CHECK(chromium_run(url, 3000, dom, NULL) == 0);
    text = slurp(dom, NULL);
    CHECK(text && body_attr(text, "data-error", attr, sizeof attr) && !strcmp(attr, "401"));
    CHECK(text && strstr(text, "#token=YOUR_TOKEN") != NULL);
    CHECK(text && !body_attr(text, "data-ready", attr, sizeof attr));
    free(text);
    stop(pid);
    json_decref(obs);

    /* 4. no GPU series, and the server gone after 3 scrapes: "disconnected", the charts
     * keep their points, the GPU chart says there is no GPU */
    port = start_mock("--die-after 3", logf, &pid);
    CHECK(port > 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
    if (port > 0) CHECK(chromium_run(url, 8000, dom, NULL) == 0);
    text = slurp(dom, NULL);
    pts = text ? page_points(text) : NULL;
    CHECK(text && body_attr(text, "data-error", attr, sizeof attr) && !strcmp(attr, "disconnected"));
    CHECK(text && strstr(text, ">disconnected") != NULL);
    CHECK(text && strstr(text, "class=\"empty\">no GPU") != NULL);
    CHECK(pts && json_array_size(series_of(pts, "loss", "loss")) == 3 + 3);
    CHECK(pts && json_object_size(json_object_get(pts, "gpu")) == 0);
    obs = served(logf);
    CHECK(pts && match_served(pts, "loss", "loss", "loss", obs, hist) == 3);
    json_decref(obs);
    json_decref(pts);
    json_decref(hist);
    free(text);
    stop(pid);
}

/* ------------------------------------------- against `ctorch train --metrics-port` */
/* GET http://127.0.0.1:port/path (HTTP/1.0, 5 s timeouts): the body (malloc'd) of a 200
 * answer, else NULL. Independent of the page's own client and parser. */
static char *http_get(int port, const char *path) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return NULL;
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 || write(fd, req, (size_t)n) != n) {
        close(fd);
        return NULL;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (ssize_t r; buf && (r = read(fd, buf + len, cap - len - 1)) > 0;) {
        len += (size_t)r;
        if (cap - len < 2) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    close(fd);
    if (!buf) return NULL;
    buf[len] = 0;
    char *body = strstr(buf, "\r\n\r\n");
    if (strncmp(buf, "HTTP/1.", 7) != 0 || !body || strncmp(buf + 9, "200", 3) != 0) {
        free(buf);
        return NULL;
    }
    memmove(buf, body + 4, strlen(body + 4) + 1);
    return buf;
}

/* The value of the first sample of name (name{...} VALUE) in exposition text; NAN if none. */
static double sample(const char *text, const char *name) {
    size_t k = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, k) != 0 || (p[k] != '{' && p[k] != ' ')) continue;
        const char *v = p[k] == '{' ? strstr(p, "} ") : p + k;
        return v ? strtod(v + (p[k] == '{' ? 2 : 1), NULL) : NAN;
    }
    return NAN;
}

/* Scrapes /metrics as fast as it can while the page runs: what the server answered. */
typedef struct {
    int port;
    volatile int stop;
    json_t *seen;
} probe;

static void *probe_main(void *arg) {
    probe *p = arg;
    while (!p->stop) {
        char *m = http_get(p->port, "/metrics");
        if (m && !isnan(sample(m, "ctorch_steps_total")))
            json_array_append_new(p->seen, json_pack("{s:f,s:f,s:f,s:f}", "steps",
                                  sample(m, "ctorch_steps_total"), "loss", sample(m, "ctorch_train_loss"),
                                  "train_accuracy", sample(m, "ctorch_train_accuracy"), "lr",
                                  sample(m, "ctorch_learning_rate")));
        free(m);
        struct timespec ts = {0, 3 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static int wait_log(const char *log, const char *needle, int seconds) {
    for (int i = 0; i < seconds * 10; i++) {
        if (log_has(log, needle)) return 1;
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

TEST(page_chromium_draws_a_real_training_run) {
    if (!chromium()) SKIP("no chromium (Debian: apt-get install chromium chromium-driver)");
    if (!data_dir()) SKIP("CTORCH_DATA with CIFAR-10 not set");
    char dir[512], log[600], cmd[4096], dom[600], url[300], attr[64];
    snprintf(dir, sizeof dir, "%s/liverun", tmpdir());
    snprintf(log, sizeof log, "%s/liverun.log", tmpdir());
    snprintf(dom, sizeof dom, "%s/live-dom.html", tmpdir());
    snprintf(cmd, sizeof cmd,
             "%s train --model simple_cnn --dataset cifar10 --data-dir %s --train-limit 2048 "
             "--test-limit 256 --batch-size 256 --epochs 10 --schedule cosine --threads 1 "
             "--run-dir %s --metrics-port 0 --metrics-linger 120",
             bin(), data_dir(), dir);
    pid_t pid = spawn(cmd, log);
    if (!wait_log(log, "metrics: http://127.0.0.1:", 60)) {
        int built_without = log_has(log, "built without libmicrohttpd");
        stop(pid);
        if (built_without) SKIP("ctorch built without libmicrohttpd: no --metrics-port");
        show_log(log);
        CHECK_MSG(0, "ctorch train --metrics-port 0 did not say where it serves");
        return;
    }
    char *text = slurp(log, NULL);
    const char *at = text ? strstr(text, "metrics: http://127.0.0.1:") : NULL;
    int port = at ? atoi(at + strlen("metrics: http://127.0.0.1:")) : 0;
    free(text);
    CHECK(port > 0);
    /* 1. while it trains (after its first logged row): the page scrapes several times and
     * every point it drew at a step is what /metrics answered at that step */
    CHECK(wait_log(log, "epoch 1/10", 120));
    probe pr = {port, 0, json_array()};
    pthread_t th;
    int threaded = pthread_create(&th, NULL, probe_main, &pr) == 0;
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
    CHECK(chromium_run(url, 4000, dom, NULL) == 0);
    pr.stop = 1;
    if (threaded) pthread_join(th, NULL);
    /* the steps of the logged rows so far: the page drew those from /api/history (epoch
     * figures, not a step's) */
    json_t *none = json_array();
    char *hist_text = http_get(port, "/api/history");
    json_t *hist = hist_text ? json_loads(hist_text, 0, NULL) : NULL;
    CHECK_MSG(hist, "no JSON from /api/history");
    for (size_t i = 0; i < json_array_size(json_object_get(hist, "points")); i++)
        json_array_append(none, json_object_get(json_array_get(json_object_get(hist, "points"), i), "step"));
    json_decref(hist);
    free(hist_text);
    text = slurp(dom, NULL);
    json_t *pts = text ? page_points(text) : NULL;
    CHECK_MSG(pts, "no points in the page served by ctorch train");
    if (pts) {
        CHECK(body_attr(text, "data-ready", attr, sizeof attr) && !strcmp(attr, "1"));
        int scrapes = body_attr(text, "data-scrapes", attr, sizeof attr) ? atoi(attr) : 0;
        json_t *loss = series_of(pts, "loss", "loss");
        CHECK_MSG(scrapes >= 2 && json_array_size(loss) >= 2, "%d scrapes, %zu loss points",
                  scrapes, json_array_size(loss));
        for (size_t i = 1; i < json_array_size(loss); i++) CHECK(pt(loss, i, 0) > pt(loss, i - 1, 0));
        /* the live points must be what the probe saw at their step */
        int m = match_served(pts, "loss", "loss", "loss", pr.seen, none);
        CHECK(match_served(pts, "accuracy", "train", "train_accuracy", pr.seen, none) >= 0);
        CHECK(match_served(pts, "lr", "lr", "lr", pr.seen, none) >= 0);
        printf("    during the run: %d scrapes, %zu loss points, %d of them seen by the probe "
               "(%zu probe scrapes)\n", scrapes, json_array_size(loss), m, json_array_size(pr.seen));
        CHECK_MSG(m >= 1, "no point of the page at a step the probe saw");
    }
    json_decref(pts);
    json_decref(pr.seen);
    free(text);

    /* 2. after the run (--metrics-linger): the page draws metrics.jsonl's rows, the curves
     * of curves.svg, and its last point is the step /metrics reports */
    CHECK(wait_log(log, "serving for", 180));
    char *metrics = http_get(port, "/metrics");
    CHECK_NN(metrics);
    CHECK(chromium_run(url, 3000, dom, NULL) == 0);
    mkdir("build", 0755);
    mkdir(SHOT_DIR, 0755);
    CHECK(chromium_run(url, 3000, NULL, SHOT_DIR "/page-train.png") == 0);
    text = slurp(dom, NULL);
    pts = text ? page_points(text) : NULL;
    char path[700];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    char *jsonl = slurp(path, NULL);
    CHECK(pts && jsonl && metrics);
    if (pts && jsonl && metrics) {
        json_t *rows = json_array();
        for (char *line = strtok(jsonl, "\n"); line; line = strtok(NULL, "\n"))
            json_array_append_new(rows, json_loads(line, 0, NULL));
        CHECK(json_array_size(rows) == 10);
        struct {
            const char *chart, *series, *key;
        } cmp[] = {{"loss", "loss", "train_loss"},
                   {"accuracy", "train", "train_acc"},
                   {"accuracy", "test", "test_acc"},
                   {"lr", "lr", "lr"},
                   {"throughput", "images_per_second", "images_per_sec"}};
        for (size_t c = 0; c < sizeof cmp / sizeof *cmp; c++) {
            json_t *a = series_of(pts, cmp[c].chart, cmp[c].series);
            CHECK_MSG(json_array_size(a) == json_array_size(rows), "%s.%s: %zu points, %zu rows",
                      cmp[c].chart, cmp[c].series, json_array_size(a), json_array_size(rows));
            for (size_t i = 0; i < json_array_size(a) && i < json_array_size(rows); i++) {
                json_t *r = json_array_get(rows, i);
                double want = json_number_value(json_object_get(r, cmp[c].key));
                CHECK_MSG(pt(a, i, 0) == json_number_value(json_object_get(r, "step")) &&
                          fabs(pt(a, i, 1) - want) <= 1e-6 * fmax(1, fabs(want)),
                          "%s.%s point %zu: (%g, %.9g), metrics.jsonl (%g, %.9g)", cmp[c].chart,
                          cmp[c].series, i, pt(a, i, 0), pt(a, i, 1),
                          json_number_value(json_object_get(r, "step")), want);
            }
        }
        double steps = sample(metrics, "ctorch_steps_total");
        json_t *loss = series_of(pts, "loss", "loss");
        CHECK_MSG(pt(loss, json_array_size(loss) - 1, 0) == steps, "last point at step %g, "
                  "/metrics says %g", pt(loss, json_array_size(loss) - 1, 0), steps);
        char want[64];
        snprintf(want, sizeof want, "id=\"p-step\">%.0f / %.0f<", steps, steps);
        CHECK_MSG(strstr(text, want) != NULL, "the progress does not say %s", want);
        CHECK(count_in(text, "class=\"badge finished\"") == 1);
        CHECK(strstr(text, "id=\"p-eta\">done<") != NULL);
        CHECK(count_in(text, "<td>schedule</td><td>cosine</td>") == 1);
        CHECK(strstr(text, "class=\"empty\">no GPU") != NULL); /* a CPU run */
        json_decref(rows);
    }
    json_decref(pts);
    json_decref(none);
    free(text);
    free(jsonl);
    free(metrics);
    /* a signal ends the lingering; the run itself had finished */
    kill(pid, SIGTERM);
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "ctorch train exit status %d", st);
}
