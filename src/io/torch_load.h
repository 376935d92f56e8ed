/* torch.save files, opened once and selected from (not public: ctorch_io.h has
 * ct_torch_load and ct_torch_load_buffer). */
#ifndef CT_TORCH_LOAD_H
#define CT_TORCH_LOAD_H

#include "ctorch_nn.h"

#include <stddef.h>

typedef struct ct_torch_file ct_torch_file;

/* Reads the container and unpickles the object (storages are read when selected).
 * The buffer must outlive the returned file. name is used in messages. */
ct_torch_file *ct_torch_open_buffer(const void *data, size_t n, const char *name);
/* The same on a file (mapped into memory). */
ct_torch_file *ct_torch_open(const char *path);
/* The state_dict at key (NULL: the top level), see ct_torch_load. */
ct_state_dict *ct_torch_state_dict(ct_torch_file *f, const char *key);
void ct_torch_close(ct_torch_file *f);

#endif
