/* For the cuBLAS and cuDNN stand-ins: under the emulator's deferred streams
 * (CT_EMU_STREAMS=lazy|mixed, emu_streams.c), the work queued on a handle's stream must run
 * before the library reads its inputs, as it would on a GPU where the library's kernels
 * follow that work on the stream. The emulated plugin exports ct_emu_stream_flush for
 * this; a library loaded without it (its own tests) has nothing to wait for. */
#ifndef CT_CUDA_EMU_FLUSH_H
#define CT_CUDA_EMU_FLUSH_H

#include <cuda_runtime_api.h>
#include <dlfcn.h>

static inline void emu_flush_stream(cudaStream_t s) {
    static void (*flush)(cudaStream_t);
    static int looked;
    if (!__atomic_load_n(&looked, __ATOMIC_ACQUIRE)) {
        void *h = dlopen("libctorch_cuda.so", RTLD_NOW | RTLD_NOLOAD);
        void *f = h ? dlsym(h, "ct_emu_stream_flush") : NULL;
        *(void **)&flush = f;
        __atomic_store_n(&looked, 1, __ATOMIC_RELEASE);
    }
    if (flush) flush(s);
}

#endif
