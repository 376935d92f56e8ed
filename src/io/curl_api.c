/* libcurl through dlopen: see curl_api.h. */
#include "io/curl_api.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

static ct_curl_api g_api;
static int g_ok;
static char g_why[256];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void curl_load(void) {
    static const char *names[] = {"libcurl.so.4", "libcurl.so", "libcurl-gnutls.so.4",
                                  "libcurl-nss.so.4"};
    void *handle = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !handle; i++)
        handle = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        snprintf(g_why, sizeof g_why,
                 "libcurl is not installed (install it: sudo apt-get install libcurl4)");
        return;
    }
#define LOAD(field, sym)                                                                   \
    do {                                                                                   \
        *(void **)&g_api.field = dlsym(handle, sym);                                       \
        if (!g_api.field) {                                                                \
            snprintf(g_why, sizeof g_why, "the libcurl found lacks %s (install libcurl4)", \
                     sym);                                                                 \
            return;                                                                        \
        }                                                                                  \
    } while (0)
    CURLcode (*global_init)(long) = NULL;
    *(void **)&global_init = dlsym(handle, "curl_global_init");
    if (!global_init) {
        snprintf(g_why, sizeof g_why, "the libcurl found lacks curl_global_init (install libcurl4)");
        return;
    }
    LOAD(easy_init, "curl_easy_init");
    LOAD(easy_setopt, "curl_easy_setopt");
    LOAD(easy_perform, "curl_easy_perform");
    LOAD(easy_getinfo, "curl_easy_getinfo");
    LOAD(easy_cleanup, "curl_easy_cleanup");
    LOAD(easy_strerror, "curl_easy_strerror");
    LOAD(easy_escape, "curl_easy_escape");
    LOAD(slist_append, "curl_slist_append");
    LOAD(slist_free_all, "curl_slist_free_all");
    LOAD(free, "curl_free");
#undef LOAD
    if (global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(g_why, sizeof g_why, "curl_global_init failed");
        return;
    }
    g_ok = 1;
}

const ct_curl_api *ct_curl_api_get(const char **why) {
    pthread_once(&g_once, curl_load);
    if (g_ok) return &g_api;
    if (why) *why = g_why;
    return NULL;
}
