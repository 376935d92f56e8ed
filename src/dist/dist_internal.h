/* Internal to the distributed layer (src/dist). */
#ifndef CT_DIST_INTERNAL_H
#define CT_DIST_INTERNAL_H

#include <stddef.h>

/* "rank R on HOST" for messages. */
const char *ct__dist_where(char *buf, size_t n);

#endif
