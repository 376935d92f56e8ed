/* NCCL's types and enums: from the installed nccl.h when there is one, else from
 * nccl_subset.h (the part ctorch uses). Functions are always reached through dlsym. */
#ifndef CT_CUDA_NCCL_TYPES_H
#define CT_CUDA_NCCL_TYPES_H

#if defined(__has_include) && !defined(CT_CUDA_NO_NCCL_H)
#if __has_include(<nccl.h>)
#include <nccl.h>
#define CT_HAVE_NCCL_H 1
#endif
#endif
#ifndef CT_HAVE_NCCL_H
#include "nccl_subset.h"
#endif

#endif
