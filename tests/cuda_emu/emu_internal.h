/* Shared inside the CUDA emulator's runtime: emu_runtime.c (memory, copies, errors) and
 * emu_streams.c (streams, events, when queued work runs). */
#ifndef CT_CUDA_EMU_INTERNAL_H
#define CT_CUDA_EMU_INTERNAL_H

#include <cuda_runtime_api.h>

/* Queues fn(ctx) on stream s, then dtor(ctx) (either may be NULL). When it runs depends
 * on CT_EMU_STREAMS (emu_streams.c): at once by default. */
void ct_emu_enqueue(cudaStream_t s, void (*fn)(void *), void *ctx, void (*dtor)(void *));
/* Runs everything queued on s, and what it waits for (s NULL: every stream). */
void ct_emu_stream_flush(cudaStream_t s);
/* Runs everything queued on every stream. */
void ct_emu_flush_all(void);
/* The pending kernel fault of this thread, cleared. */
cudaError_t ct_emu_take_fault(void);
/* Whether [p, p+n) lies in pinned host memory from cudaHostAlloc / cudaMallocHost. */
int ct_emu_is_pinned(const void *p, size_t n);

#endif
