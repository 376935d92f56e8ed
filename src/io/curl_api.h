/* libcurl loaded at run time (dlopen of libcurl.so.4), shared by the network features:
 * `ctorch download` (src/data/download.c) and `ctorch archive --upload` (src/cli/zenodo.c).
 * The library, the CLI and the tests link without -lcurl, and a machine without libcurl
 * runs everything else; only those features report that libcurl is missing. Internal. */
#ifndef CT_IO_CURL_API_H
#define CT_IO_CURL_API_H

#include <curl/curl.h>

typedef struct ct_curl_api {
    CURL *(*easy_init)(void);
    CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
    CURLcode (*easy_perform)(CURL *);
    CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
    void (*easy_cleanup)(CURL *);
    const char *(*easy_strerror)(CURLcode);
    char *(*easy_escape)(CURL *, const char *, int);
    struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
    void (*slist_free_all)(struct curl_slist *);
    void (*free)(void *); /* curl_free, for what easy_escape returns */
} ct_curl_api;

/* The table, loaded once (thread-safe; curl_global_init done). NULL when libcurl is
 * missing or unusable; then *why (when why is not NULL) is a static sentence naming the
 * problem and the fix, e.g. "libcurl is not installed (install it: sudo apt-get install
 * libcurl4)". */
const ct_curl_api *ct_curl_api_get(const char **why);

#endif
