/* `ctorch archive --upload zenodo`: the Zenodo REST deposition API through libcurl (loaded
 * at run time, src/io/curl_api.h). POST {api}/deposit/depositions ({}), PUT the archive
 * into the reply's links.bucket, PUT {api}/deposit/depositions/{id} with the metadata and,
 * with --publish only, POST {api}/deposit/depositions/{id}/actions/publish. The token
 * travels in an Authorization header and is never printed. */
#include "cli.h"
#include "ctorch.h"
#include "io/curl_api.h"
#include "run_archive.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---------------------------------------------------------------------- token */
int zenodo_token(const char *cmd, const char *token_file, char *out, size_t n) {
    const char *tok = NULL;
    char buf[4096];
    if (token_file) {
        struct stat st;
        FILE *f = fopen(token_file, "r");
        if (!f || fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
            if (f) fclose(f);
            return cli_fail(cmd, CLI_USAGE, "--token-file %s: %s", token_file,
                            f ? "not a regular file" : strerror(errno));
        }
        if (st.st_mode & 077) {
            fclose(f);
            return cli_fail(cmd, CLI_USAGE, "--token-file %s has mode %04o: a token file must "
                            "be readable by its owner only. Fix: chmod 600 %s", token_file,
                            (unsigned)(st.st_mode & 07777), token_file);
        }
        size_t got = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[got] = 0;
        tok = buf;
    } else {
        tok = getenv("ZENODO_TOKEN");
    }
    while (tok && (*tok == ' ' || *tok == '\t' || *tok == '\n' || *tok == '\r')) tok++;
    size_t len = tok ? strcspn(tok, " \t\r\n") : 0;
    if (!len)
        return cli_fail(cmd, CLI_USAGE, "--upload zenodo needs a Zenodo personal access token "
                        "(scopes deposit:write, and deposit:actions for --publish; create one on "
                        "the Zenodo site under Applications > Personal access tokens): set "
                        "ZENODO_TOKEN or pass --token-file FILE (mode 0600)%s%s%s",
                        token_file ? "; " : "", token_file ? token_file : "",
                        token_file ? " is empty" : "");
    for (size_t i = len; tok[i]; i++)
        if (tok[i] != ' ' && tok[i] != '\t' && tok[i] != '\r' && tok[i] != '\n')
            return cli_fail(cmd, CLI_USAGE, "the Zenodo token %s holds more than one word: put "
                            "only the token in it", token_file ? token_file : "in ZENODO_TOKEN");
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)tok[i] < 0x21 || (unsigned char)tok[i] > 0x7e)
            return cli_fail(cmd, CLI_USAGE, "the Zenodo token %s has a character a token cannot "
                            "have", token_file ? token_file : "in ZENODO_TOKEN");
    if (len >= n) return cli_fail(cmd, CLI_USAGE, "the Zenodo token is longer than %zu bytes", n - 1);
    memcpy(out, tok, len);
    out[len] = 0;
    memset(buf, 0, sizeof buf);
    return CLI_OK;
}

/* -------------------------------------------------------------------- requests */
typedef struct {
    char *data;
    size_t n, cap;
} reply_buf;

static size_t on_reply(char *p, size_t size, size_t nmemb, void *ud) {
    reply_buf *b = ud;
    size_t add = size * nmemb;
    if (b->n + add + 1 > (16u << 20)) return 0; /* a reply past 16 MiB: abort the transfer */
    if (b->n + add + 1 > b->cap) {
        size_t cap = (b->n + add + 1) * 2;
        char *d = realloc(b->data, cap);
        if (!d) return 0;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->n, p, add);
    b->n += add;
    b->data[b->n] = 0;
    return add;
}

static size_t on_read(char *p, size_t size, size_t nmemb, void *ud) {
    return fread(p, 1, size * nmemb, (FILE *)ud);
}

typedef struct {
    const char *cmd;
    const ct_curl_api *cu;
    const char *token;
    long id;      /* the deposition, once created (0 before) */
    char html[1024]; /* its page */
} zenodo;

/* One request. body: JSON text, or NULL with upload (a file of `size` bytes to PUT).
 * Returns the HTTP status with *reply the parsed JSON reply (NULL when not JSON), or -1
 * with the transfer's error in err. */
static long request(zenodo *z, const char *method, const char *url, const char *body, FILE *upload,
                    long long size, json_t **reply, char *err, size_t nerr) {
    const ct_curl_api *cu = z->cu;
    *reply = NULL;
    CURL *c = cu->easy_init();
    if (!c) return snprintf(err, nerr, "curl_easy_init failed"), -1;
    char auth[4200], errbuf[CURL_ERROR_SIZE] = "";
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", z->token);
    struct curl_slist *h = cu->slist_append(NULL, auth);
    h = h ? cu->slist_append(h, upload ? "Content-Type: application/octet-stream"
                                       : "Content-Type: application/json") : NULL;
    h = h ? cu->slist_append(h, "Accept: application/json") : NULL;
    h = h ? cu->slist_append(h, "Expect:") : NULL; /* no 100-continue round trip */
    memset(auth, 0, sizeof auth);
    reply_buf rb = {NULL, 0, 0};
    cu->easy_setopt(c, CURLOPT_URL, url);
    cu->easy_setopt(c, CURLOPT_HTTPHEADER, h);
    cu->easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (upload) {
        cu->easy_setopt(c, CURLOPT_UPLOAD, 1L);
        cu->easy_setopt(c, CURLOPT_READFUNCTION, on_read);
        cu->easy_setopt(c, CURLOPT_READDATA, upload);
        cu->easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)size);
    } else {
        cu->easy_setopt(c, CURLOPT_POSTFIELDS, body);
        cu->easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    }
    cu->easy_setopt(c, CURLOPT_WRITEFUNCTION, on_reply);
    cu->easy_setopt(c, CURLOPT_WRITEDATA, &rb);
    cu->easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    cu->easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
    cu->easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L); /* abort below 1 KB/s ... */
    cu->easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 120L);   /* ... for two minutes */
    cu->easy_setopt(c, CURLOPT_USERAGENT, "ctorch/" CT_VERSION);
    cu->easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = h ? cu->easy_perform(c) : CURLE_OUT_OF_MEMORY;
    long status = -1;
    if (rc == CURLE_OK) cu->easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    else snprintf(err, nerr, "%s", errbuf[0] ? errbuf : cu->easy_strerror(rc));
    cu->easy_cleanup(c);
    cu->slist_free_all(h);
    if (rc == CURLE_OK && rb.data) *reply = json_loadb(rb.data, rb.n, 0, NULL);
    free(rb.data);
    return status;
}

/* Zenodo's error reply: its "message" and each of its "errors" (field: message(s)). */
static void zenodo_message(const json_t *reply, char *out, size_t n) {
    const char *msg = json_string_value(json_object_get(reply, "message"));
    size_t o = (size_t)snprintf(out, n, "%s", msg ? msg : "no message in the reply");
    json_t *errors = json_object_get(reply, "errors");
    for (size_t i = 0; i < json_array_size(errors) && o < n; i++) {
        json_t *e = json_array_get(errors, i);
        const char *field = json_string_value(json_object_get(e, "field"));
        json_t *m = json_object_get(e, "message");
        if (!m) m = json_object_get(e, "messages");
        const char *text = json_string_value(json_is_array(m) ? json_array_get(m, 0) : m);
        o += (size_t)snprintf(out + o, n - o, "%s%s%s%s", i ? "; " : " (", field ? field : "",
                              field ? ": " : "", text ? text : "invalid");
        if (i + 1 == json_array_size(errors) && o < n) o += (size_t)snprintf(out + o, n - o, ")");
    }
}

/* A failed step: Zenodo's message (or the transfer's), and the draft left behind. */
static int step_failed(zenodo *z, const char *what, const char *method, const char *url,
                       long status, const json_t *reply, const char *err) {
    char msg[2048];
    if (status < 0) snprintf(msg, sizeof msg, "%s", err);
    else zenodo_message(reply, msg, sizeof msg);
    char draft[1200] = "";
    if (z->id)
        snprintf(draft, sizeof draft, " The draft deposition %ld (%s) is left as it is: finish or "
                 "delete it there.", z->id, z->html[0] ? z->html : "see your Zenodo uploads");
    if (status < 0)
        return cli_fail(z->cmd, CLI_RUNTIME, "zenodo: %s: %s %s failed: %s.%s", what, method, url,
                        msg, draft);
    return cli_fail(z->cmd, CLI_RUNTIME, "zenodo: %s: %s %s answered HTTP %ld: %s%s%s", what,
                    method, url, status, msg, status == 401 || status == 403 ? " (check the "
                    "token and its scopes: deposit:write, deposit:actions)" : "", draft);
}

/* ----------------------------------------------------------------------- steps */
static int create(zenodo *z, const char *api, char *bucket, size_t nb) {
    char url[2048], err[CURL_ERROR_SIZE + 64];
    snprintf(url, sizeof url, "%s/deposit/depositions", api);
    json_t *r;
    long st = request(z, "POST", url, "{}", NULL, 0, &r, err, sizeof err);
    json_t *id = json_object_get(r, "id");
    const char *b = run_json_str(r, "links.bucket");
    const char *html = run_json_str(r, "links.html");
    int rc = CLI_OK;
    if (st < 200 || st > 299) rc = step_failed(z, "creating the deposition", "POST", url, st, r, err);
    else if (!json_is_integer(id) || !b)
        rc = cli_fail(z->cmd, CLI_RUNTIME, "zenodo: POST %s answered HTTP %ld without an id and "
                      "links.bucket: is --zenodo-url the API root (https://zenodo.org/api)?", url, st);
    if (rc == CLI_OK) {
        z->id = (long)json_integer_value(id);
        snprintf(z->html, sizeof z->html, "%s", html ? html : "");
        snprintf(bucket, nb, "%s", b);
        printf("zenodo: created deposition %ld%s%s\n", z->id, html ? " " : "", html ? html : "");
    }
    json_decref(r);
    return rc;
}

static int upload(zenodo *z, const char *bucket, const char *archive) {
    FILE *f = fopen(archive, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0) {
        if (f) fclose(f);
        return cli_fail(z->cmd, CLI_RUNTIME, "zenodo: cannot read %s: %s", archive, strerror(errno));
    }
    const char *base = strrchr(archive, '/');
    base = base ? base + 1 : archive;
    char *esc = z->cu->easy_escape(NULL, base, 0);
    char url[4096], err[CURL_ERROR_SIZE + 64];
    snprintf(url, sizeof url, "%s/%s", bucket, esc ? esc : base);
    if (esc) z->cu->free(esc);
    json_t *r;
    long code = request(z, "PUT", url, NULL, f, (long long)st.st_size, &r, err, sizeof err);
    fclose(f);
    int rc = code >= 200 && code <= 299 ? CLI_OK
                                        : step_failed(z, "uploading the archive", "PUT", url, code, r, err);
    if (rc == CLI_OK) printf("zenodo: uploaded %s (%lld bytes)\n", base, (long long)st.st_size);
    json_decref(r);
    return rc;
}

static int set_metadata(zenodo *z, const char *api, json_t *metadata) {
    char url[2048], err[CURL_ERROR_SIZE + 64];
    snprintf(url, sizeof url, "%s/deposit/depositions/%ld", api, z->id);
    json_t *wrap = json_pack("{s:O}", "metadata", metadata);
    char *body = wrap ? json_dumps(wrap, JSON_COMPACT) : NULL;
    json_decref(wrap);
    if (!body) return cli_fail(z->cmd, CLI_RUNTIME, "zenodo: out of memory");
    json_t *r;
    long st = request(z, "PUT", url, body, NULL, 0, &r, err, sizeof err);
    free(body);
    int rc = st >= 200 && st <= 299 ? CLI_OK
                                    : step_failed(z, "setting the metadata", "PUT", url, st, r, err);
    if (rc == CLI_OK) printf("zenodo: metadata set (%s)\n", run_json_str(metadata, "title"));
    json_decref(r);
    return rc;
}

static int publish(zenodo *z, const char *api) {
    char url[2048], err[CURL_ERROR_SIZE + 64];
    snprintf(url, sizeof url, "%s/deposit/depositions/%ld/actions/publish", api, z->id);
    json_t *r;
    long st = request(z, "POST", url, "", NULL, 0, &r, err, sizeof err);
    int rc = st >= 200 && st <= 299 ? CLI_OK : step_failed(z, "publishing", "POST", url, st, r, err);
    if (rc == CLI_OK) {
        const char *doi = run_json_str(r, "doi");
        const char *page = run_json_str(r, "links.record_html");
        if (!page) page = run_json_str(r, "links.html");
        if (page) snprintf(z->html, sizeof z->html, "%s", page);
        printf("zenodo: published deposition %ld%s%s\n", z->id, doi ? ", DOI " : "", doi ? doi : "");
    }
    json_decref(r);
    return rc;
}

int zenodo_upload(const char *cmd, const zenodo_job *job) {
    const char *why = NULL;
    zenodo z = {cmd, ct_curl_api_get(&why), job->token, 0, ""};
    if (!z.cu) return cli_fail(cmd, CLI_RUNTIME, "--upload zenodo: %s", why);
    char api[2048], bucket[2048];
    snprintf(api, sizeof api, "%s", job->api);
    for (size_t n = strlen(api); n > 0 && api[n - 1] == '/'; n--) api[n - 1] = 0;
    int rc = create(&z, api, bucket, sizeof bucket);
    if (rc == CLI_OK) rc = upload(&z, bucket, job->archive);
    if (rc == CLI_OK) rc = set_metadata(&z, api, job->metadata);
    if (rc == CLI_OK && job->publish) rc = publish(&z, api);
    if (rc == CLI_OK)
        printf("zenodo: deposition %ld %s: %s\n", z.id, job->publish ? "published" : "saved as a "
               "draft (review it, then publish it there or rerun with --publish)",
               z.html[0] ? z.html : "(no link in Zenodo's reply)");
    return rc;
}
