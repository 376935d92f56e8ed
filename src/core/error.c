/* Thread-local error message of the last failing ctorch call. */
#include "error.h"
#include "ctorch.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char g_msg[1024];

const char *ct_last_error(void) { return g_msg; }
void ct_clear_error(void) { g_msg[0] = 0; }

static void set_msg(const char *fmt, va_list ap) { vsnprintf(g_msg, sizeof g_msg, fmt, ap); }

int ct_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set_msg(fmt, ap);
    va_end(ap);
    return -1;
}

void *ct_error_null(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set_msg(fmt, ap);
    va_end(ap);
    return NULL;
}

void ct_error_context(const char *fmt, ...) {
    char prefix[256], old[sizeof g_msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, g_msg, sizeof old);
    size_t n = strlen(prefix);
    if (n + 2 >= sizeof g_msg) return;
    memcpy(g_msg, prefix, n);
    g_msg[n] = ':';
    g_msg[n + 1] = ' ';
    size_t m = strlen(old);
    if (n + 2 + m >= sizeof g_msg) m = sizeof g_msg - n - 3;
    memcpy(g_msg + n + 2, old, m);
    g_msg[n + 2 + m] = 0;
}
