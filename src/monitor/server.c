/* The monitor's HTTP server (libmicrohttpd): GET /metrics, /api/run, /api/history and the
 * page at /. One MHD thread (epoll) at SCHED_IDLE, so that scrapes only take CPU time
 * training leaves; connection, per-IP, time and per-connection memory limits, so that
 * slow or malformed clients cost a connection slot at most. The /metrics text is
 * formatted at most every 100 ms and the same response is sent to every scraper. */
#include "monitor_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#ifdef CT_HAVE_MHD
#include <microhttpd.h>
#include "page_html.h"
#endif

/* --metrics-addr: a numeric address or a name; its first address in *ss. */
static int parse_addr(const char *addr, int port, struct sockaddr_storage *ss, socklen_t *len,
                      char *err, size_t n) {
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(addr, ps, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, n, "--metrics-addr %s: not an address of this machine (%s); give an IP "
                 "address such as 127.0.0.1, ::1 or 0.0.0.0", addr, gai_strerror(rc));
        return -1;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int is_loopback(const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a)) return 1;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return 0;
}

/* The token: the file's first line without surrounding blanks. NULL + err when the file
 * cannot be read or holds no token (the token itself is never printed). */
static char *read_token(const char *path, char *err, size_t n) {
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, n, "--metrics-token-file %s: %s", path, strerror(errno));
        return NULL;
    }
    char line[1024];
    char *t = fgets(line, sizeof line, f) ? line : NULL;
    fclose(f);
    while (t && (*t == ' ' || *t == '\t')) t++;
    size_t l = t ? strlen(t) : 0;
    while (l && (t[l - 1] == '\n' || t[l - 1] == '\r' || t[l - 1] == ' ' || t[l - 1] == '\t')) t[--l] = 0;
    if (!l) {
        snprintf(err, n, "--metrics-token-file %s is empty; put a token in it (for example: "
                 "head -c 32 /dev/urandom | base64 > %s)", path, path);
        return NULL;
    }
    return strdup(t);
}

int mon_check(const mon_opts *o, char *err, size_t n) {
    struct sockaddr_storage ss;
    socklen_t len;
    const char *addr = o->addr ? o->addr : "127.0.0.1";
    if (parse_addr(addr, o->port, &ss, &len, err, n) != 0) return -1;
    if (!is_loopback(&ss) && !o->token_file) {
        snprintf(err, n, "--metrics-addr %s is not a loopback address: anyone who can reach it "
                 "could read the run, so a bearer token is required. Make one and pass it: "
                 "(umask 077; head -c 32 /dev/urandom | base64 > metrics.token), then "
                 "--metrics-token-file metrics.token (Prometheus: authorization: {credentials_file: "
                 "metrics.token})", addr);
        return -1;
    }
    if (o->token_file) {
        char *t = read_token(o->token_file, err, n);
        if (!t) return -1;
        free(t);
    }
    return 0;
}

#ifndef CT_HAVE_MHD
int mon_available(void) { return 0; }
mon_monitor *mon_start(const mon_opts *o, const mon_run_info *info, char *err, size_t n) {
    (void)o, (void)info;
    snprintf(err, n, "built without libmicrohttpd; install libmicrohttpd-dev and rebuild");
    return NULL;
}
int mon_port(const mon_monitor *m) { (void)m; return 0; }
void mon_stop(mon_monitor *m) { mon__free(m); }
#else
int mon_available(void) { return 1; }

typedef struct {
    struct MHD_Daemon *d;
    char *token;   /* NULL: no token needed */
    int port;
    struct MHD_Response *metrics; /* the cached /metrics response */
    double metrics_t;
} server;

enum { CACHE_MS = 100 };

/* The MHD thread lowers itself at its first connection (connections are only accepted by
 * that thread): SCHED_IDLE, or nice 19 where that is refused. */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_ctx,
                          enum MHD_ConnectionNotificationCode code) {
    (void)cls, (void)c, (void)socket_ctx, (void)code;
    static _Thread_local int lowered;
    if (lowered) return;
    lowered = 1;
    struct sched_param sp = {0};
    if (sched_setscheduler(0, SCHED_IDLE, &sp) != 0 && setpriority(PRIO_PROCESS, 0, 19) != 0) {}
}

static int token_ok(const server *s, struct MHD_Connection *c) {
    if (!s->token) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    while (*h == ' ') h++;
    size_t a = strlen(h), b = strlen(s->token);
    unsigned char diff = a != b; /* constant time over the token's length */
    for (size_t i = 0; i < b; i++) diff |= (unsigned char)(h[i < a ? i : 0] ^ s->token[i]);
    return diff == 0;
}

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned code, const char *type,
                                 const char *text, size_t len, int copy) {
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, (void *)text, copy ? MHD_RESPMEM_MUST_COPY : MHD_RESPMEM_MUST_FREE);
    if (!r) {
        if (!copy) free((void *)text);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (code == MHD_HTTP_UNAUTHORIZED) MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (code == MHD_HTTP_METHOD_NOT_ALLOWED) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result ret = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned code, const char *msg) {
    return send_text(c, code, "text/plain; charset=utf-8", msg, strlen(msg), 1);
}

static enum MHD_Result send_metrics(mon_monitor *m, server *s, struct MHD_Connection *c) {
    double now = mon__now();
    if (!s->metrics || now - s->metrics_t > CACHE_MS / 1000.0 || now < s->metrics_t) {
        size_t len;
        char *text = mon_format_metrics(m, &len);
        if (!text) return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
        struct MHD_Response *r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
        if (!r) {
            free(text);
            return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
        }
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
        if (s->metrics) MHD_destroy_response(s->metrics); /* queued copies keep their reference */
        s->metrics = r;
        s->metrics_t = now;
    }
    return MHD_queue_response(c, MHD_HTTP_OK, s->metrics);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **req) {
    (void)version, (void)upload, (void)req;
    mon_monitor *m = cls;
    server *s = m->server;
    *upload_size = 0; /* bodies are not read */
    int get = !strcmp(method, MHD_HTTP_METHOD_GET) || !strcmp(method, MHD_HTTP_METHOD_HEAD);
    int page = !strcmp(url, "/") || !strcmp(url, "/index.html");
    int known = page || !strcmp(url, "/metrics") || !strcmp(url, "/api/run") || !strcmp(url, "/api/history");
    if (!page && !token_ok(s, c))
        return send_error(c, MHD_HTTP_UNAUTHORIZED, "a bearer token is required (Authorization: Bearer TOKEN)\n");
    if (!known) return send_error(c, MHD_HTTP_NOT_FOUND, "not found; try /metrics, /api/run, /api/history or /\n");
    if (!get) return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET\n");
    if (page)
        return send_text(c, MHD_HTTP_OK, "text/html; charset=utf-8", (const char *)page_html,
                         sizeof page_html, 1);
    if (!strcmp(url, "/metrics")) return send_metrics(m, s, c);
    size_t len = 0;
    char *j = !strcmp(url, "/api/run") ? mon_format_run(m, &len) : mon_format_history(m, &len);
    if (!j) return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    return send_text(c, MHD_HTTP_OK, "application/json", j, len, 0);
}

/* The listening socket, bound here so that a failure names the address and port. */
static int listen_on(const mon_opts *o, char *err, size_t n, int *ipv6, int *port) {
    struct sockaddr_storage ss;
    socklen_t len;
    const char *addr = o->addr ? o->addr : "127.0.0.1";
    if (parse_addr(addr, o->port, &ss, &len, err, n) != 0) return -1;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 64) != 0) {
        int e = errno;
        snprintf(err, n, "--metrics-port %d on %s: %s%s", o->port, addr, strerror(e),
                 e == EADDRINUSE ? " (another process listens there; choose another port, or 0 for "
                                   "any free one)" : "");
        if (fd >= 0) close(fd);
        return -1;
    }
    struct sockaddr_storage got;
    socklen_t gl = sizeof got;
    getsockname(fd, (struct sockaddr *)&got, &gl);
    *port = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                            : ((struct sockaddr_in *)&got)->sin_port);
    *ipv6 = ss.ss_family == AF_INET6;
    return fd;
}

mon_monitor *mon_start(const mon_opts *o, const mon_run_info *info, char *err, size_t n) {
    if (mon_check(o, err, n) != 0) return NULL;
    mon_monitor *m = mon__new(info);
    server *s = calloc(1, sizeof *s);
    if (!m || !s) {
        snprintf(err, n, "out of memory");
        goto fail;
    }
    m->server = s;
    if (o->token_file && !(s->token = read_token(o->token_file, err, n))) goto fail;
    int ipv6 = 0, fd = listen_on(o, err, n, &ipv6, &s->port);
    if (fd < 0) goto fail;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | (ipv6 ? MHD_USE_IPv6 : 0);
    s->d = MHD_start_daemon(flags, 0, NULL, NULL, handle, m, MHD_OPTION_LISTEN_SOCKET, fd,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)48,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)16384,
                            MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL, MHD_OPTION_END);
    if (!s->d) {
        close(fd);
        snprintf(err, n, "--metrics-port %d: libmicrohttpd could not start its server thread", o->port);
        goto fail;
    }
    return m;
fail:
    mon_stop(m);
    if (!m) free(s);
    return NULL;
}

int mon_port(const mon_monitor *m) {
    return m && m->server ? ((const server *)m->server)->port : 0;
}

void mon_stop(mon_monitor *m) {
    if (!m) return;
    server *s = m->server;
    if (s) {
        if (s->d) MHD_stop_daemon(s->d); /* closes the listening socket it was given */
        if (s->metrics) MHD_destroy_response(s->metrics);
        free(s->token);
        free(s);
    }
    mon__free(m);
}
#endif
