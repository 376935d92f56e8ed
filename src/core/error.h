/* Error reporting: a thread-local message set by failing calls. */
#ifndef CT_ERROR_H
#define CT_ERROR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define CT_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define CT_PRINTF(a, b)
#endif

/* Sets the message; returns -1 so callers can `return ct_error(...)`. */
int ct_error(const char *fmt, ...) CT_PRINTF(1, 2);
/* Same, returning NULL for pointer-returning functions. */
void *ct_error_null(const char *fmt, ...) CT_PRINTF(1, 2);
/* Prefixes the current message with "context: ". */
void ct_error_context(const char *fmt, ...) CT_PRINTF(1, 2);

#ifdef __cplusplus
}
#endif

#endif
