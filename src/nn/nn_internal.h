/* Helpers shared by the nn modules (not public). */
#ifndef CT_NN_INTERNAL_H
#define CT_NN_INTERNAL_H

#include "ctorch_nn.h"

/* Sets the error to `header (N problems):` + the report's lines that fit + `fix`. */
int ct_nn_report_error(const char *header, const char *report, const char *fix);

/* ct_state_dict_load, also giving a safetensors file's "model" metadata (malloc'd, or NULL)
 * for messages. */
ct_state_dict *ct_state_dict_load_meta(const char *spec, char **model);

#endif
