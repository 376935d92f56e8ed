/* Tests of the CUDA emulator itself: that correct kernels compute what a GPU computes
 * (block reductions through shared memory and barriers, warp shuffles, 2-D blocks, grids
 * of many blocks), and that the faults it exists to catch are caught: divergent barriers,
 * shuffles with exited lanes, host pointers passed to kernels, launch configurations a
 * GPU rejects, copies outside an allocation, double frees, running out of memory. */
#include "cuda_runtime.h"

#include <stdio.h>
#include <stdlib.h>

static int g_pass, g_fail;

#define EXPECT(cond, ...)                                                                  \
    do {                                                                                   \
        if (cond) {                                                                        \
            g_pass++;                                                                      \
        } else {                                                                           \
            g_fail++;                                                                      \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                    \
            printf(__VA_ARGS__);                                                           \
            printf("\n");                                                                  \
        }                                                                                  \
    } while (0)

/* ------------------------------------------------------------ kernels */
__global__ void k_block_sum(const float *x, int n, float *out) {
    __shared__ float sh[256];
    float v = 0;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        v += x[i];
    sh[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = sh[0];
}

__global__ void k_warp_sum(const double *x, double *out) {
    double v = x[threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    out[threadIdx.x] = v; /* every lane holds its warp's sum */
}

__global__ void k_shfl_down(const int *x, int *out) {
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, x[threadIdx.x], 3);
}

__global__ void k_coords(int *out) {
    const int t = threadIdx.x + threadIdx.y * blockDim.x;
    const int b = blockIdx.x + blockIdx.y * gridDim.x;
    out[b * blockDim.x * blockDim.y + t] = b * 1000 + t;
}

__global__ void k_early_exit_sync(float *x) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    x[threadIdx.x] = 1;
}

__global__ void k_exit_then_shuffle(float *x) {
    if (threadIdx.x == 5) return;
    x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, x[threadIdx.x], 1);
}

__global__ void k_half_sync(float *x) {
    if (threadIdx.x < 32) __syncthreads();
    else x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, x[threadIdx.x], 1);
}

/* A data race: each thread reads its neighbour's shared-memory slot without a barrier. */
__global__ void k_race(int *out) {
    __shared__ int sh[64];
    sh[threadIdx.x] = (int)threadIdx.x + 1;
    out[threadIdx.x] = sh[(threadIdx.x + 1) % blockDim.x];
}

__global__ void k_write(float *x, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) x[i] = (float)i;
}

__global__ void k_copy_plus1(const float *x, float *y, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) y[i] = x[i] + 1;
}

/* emu_streams.c */
extern "C" void ct_emu_set_streams(const char *name);

/* ------------------------------------------------------------ cases */
static void correct_kernels(void) {
    const int n = 100000, blocks = 7;
    float *hx = (float *)malloc(n * sizeof(float)), *dx, *dout, hout[blocks];
    double want = 0;
    for (int i = 0; i < n; i++) hx[i] = (float)(i % 13) - 6.0f, want += hx[i];
    EXPECT(cudaMalloc((void **)&dx, n * sizeof(float)) == cudaSuccess, "cudaMalloc");
    EXPECT(cudaMalloc((void **)&dout, sizeof hout) == cudaSuccess, "cudaMalloc");
    cudaMemcpy(dx, hx, n * sizeof(float), cudaMemcpyHostToDevice);
    CUK_EMU_LAUNCH(blocks, 256, 0, 0, k_block_sum)(dx, n, dout);
    EXPECT(cudaGetLastError() == cudaSuccess, "block sum launch");
    cudaMemcpy(hout, dout, sizeof hout, cudaMemcpyDeviceToHost);
    double got = 0;
    for (int b = 0; b < blocks; b++) got += hout[b];
    EXPECT(got == want, "block sum %g, want %g", got, want);

    double hd[64], hr[64], *dd, *dr;
    cudaMalloc((void **)&dd, sizeof hd), cudaMalloc((void **)&dr, sizeof hr);
    for (int i = 0; i < 64; i++) hd[i] = i;
    cudaMemcpy(dd, hd, sizeof hd, cudaMemcpyHostToDevice);
    CUK_EMU_LAUNCH(1, 64, 0, 0, k_warp_sum)(dd, dr);
    cudaMemcpy(hr, dr, sizeof hr, cudaMemcpyDeviceToHost);
    EXPECT(hr[0] == 496 && hr[31] == 496 && hr[32] == 1520 && hr[63] == 1520,
           "warp sums %g %g %g %g", hr[0], hr[31], hr[32], hr[63]);

    int hi[32], ho[32], *di, *dio;
    cudaMalloc((void **)&di, sizeof hi), cudaMalloc((void **)&dio, sizeof ho);
    for (int i = 0; i < 32; i++) hi[i] = 10 * i;
    cudaMemcpy(di, hi, sizeof hi, cudaMemcpyHostToDevice);
    CUK_EMU_LAUNCH(1, 32, 0, 0, k_shfl_down)(di, dio);
    cudaMemcpy(ho, dio, sizeof ho, cudaMemcpyDeviceToHost);
    EXPECT(ho[0] == 30 && ho[28] == 310 && ho[29] == 290 && ho[31] == 310,
           "shfl_down %d %d %d %d", ho[0], ho[28], ho[29], ho[31]);

    int *dc, hc[2 * 3 * 4 * 5];
    cudaMalloc((void **)&dc, sizeof hc);
    CUK_EMU_LAUNCH(dim3(2, 3), dim3(4, 5), 0, 0, k_coords)(dc);
    cudaMemcpy(hc, dc, sizeof hc, cudaMemcpyDeviceToHost);
    int ok = 1;
    for (int b = 0; b < 6; b++)
        for (int t = 0; t < 20; t++) ok &= hc[b * 20 + t] == b * 1000 + t;
    EXPECT(ok, "2-D grid and block coordinates");
    cudaFree(dx), cudaFree(dout), cudaFree(dd), cudaFree(dr), cudaFree(di), cudaFree(dio),
        cudaFree(dc);
    free(hx);
}

/* Correct kernels give the same result in every thread order; a racy one does not. */
static void schedules(void) {
    const char *names[3] = {"forward", "reverse", "random"};
    int *d, race[3][64];
    float *dx, *dout, sums[3][4];
    float hx[1000];
    for (int i = 0; i < 1000; i++) hx[i] = (float)(i % 7) - 3.0f;
    cudaMalloc((void **)&d, sizeof race[0]);
    cudaMalloc((void **)&dx, sizeof hx), cudaMalloc((void **)&dout, sizeof sums[0]);
    cudaMemcpy(dx, hx, sizeof hx, cudaMemcpyHostToDevice);
    for (int s = 0; s < 3; s++) {
        cuda_emu::ct_emu_set_schedule(names[s]);
        cudaMemset(d, 0, sizeof race[s]);
        CUK_EMU_LAUNCH(1, 64, 0, 0, k_race)(d);
        cudaMemcpy(race[s], d, sizeof race[s], cudaMemcpyDeviceToHost);
        CUK_EMU_LAUNCH(4, 256, 0, 0, k_block_sum)(dx, 1000, dout);
        cudaMemcpy(sums[s], dout, sizeof sums[s], cudaMemcpyDeviceToHost);
    }
    cuda_emu::ct_emu_set_schedule(getenv("CT_EMU_SCHEDULE"));
    EXPECT(memcmp(race[0], race[1], sizeof race[0]) != 0,
           "a shared-memory race gives the same result forward and reversed");
    EXPECT(memcmp(sums[0], sums[1], sizeof sums[0]) == 0 &&
               memcmp(sums[0], sums[2], sizeof sums[0]) == 0,
           "a barrier-synchronised reduction differs between schedules");
    cudaFree(d), cudaFree(dx), cudaFree(dout);
}

/* Deferred streams (CT_EMU_STREAMS=lazy): work runs when something waits for it, so a
 * consumer that forgot to wait for its producer's event sees stale data, and events are
 * not complete until then. */
static void deferred_streams(void) {
    ct_emu_set_streams("lazy");
    cudaStream_t compute, copy;
    cudaEvent_t ev;
    cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking);
    cudaStreamCreateWithFlags(&copy, cudaStreamNonBlocking);
    cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
    float *pinned, *dx, *dy, out[64];
    cudaMallocHost((void **)&pinned, 64 * sizeof(float));
    cudaMalloc((void **)&dx, 64 * sizeof(float)), cudaMalloc((void **)&dy, 64 * sizeof(float));
    for (int waits = 0; waits < 2; waits++) {
        for (int i = 0; i < 64; i++) pinned[i] = (float)i;
        cudaMemsetAsync(dx, 0, 64 * sizeof(float), compute);
        cudaMemcpyAsync(dx, pinned, 64 * sizeof(float), cudaMemcpyHostToDevice, copy);
        cudaEventRecord(ev, copy);
        EXPECT(cudaEventQuery(ev) == cudaErrorNotReady, "lazy: event complete before any wait");
        if (waits) cudaStreamWaitEvent(compute, ev, 0);
        CUK_EMU_LAUNCH(1, 64, 0, compute, k_copy_plus1)(dx, dy, 64);
        cudaStreamSynchronize(compute);
        cudaMemcpy(out, dy, sizeof out, cudaMemcpyDeviceToHost);
        if (waits)
            EXPECT(out[0] == 1 && out[63] == 64, "lazy, with the wait: %g %g", out[0], out[63]);
        else
            EXPECT(out[0] == 1 && out[63] == 1, "lazy, no wait: the kernel should have run before "
                   "the copy (got %g %g)", out[0], out[63]);
        cudaDeviceSynchronize();
    }
    /* pageable sources are read at the call, pinned ones when the copy runs */
    float pageable[4] = {1, 2, 3, 4};
    for (int i = 0; i < 4; i++) pinned[i] = 1;
    cudaMemcpyAsync(dx, pageable, sizeof pageable, cudaMemcpyHostToDevice, compute);
    cudaMemcpyAsync(dx + 4, pinned, 4 * sizeof(float), cudaMemcpyHostToDevice, compute);
    pageable[0] = 100, pinned[0] = 100;
    cudaStreamSynchronize(compute);
    cudaMemcpy(out, dx, 8 * sizeof(float), cudaMemcpyDeviceToHost);
    EXPECT(out[0] == 1 && out[4] == 100, "staging: pageable %g (want 1), pinned %g (want 100)",
           out[0], out[4]);
    EXPECT(cudaEventQuery(ev) == cudaSuccess, "event complete after the synchronisation");
    cudaFree(dx), cudaFree(dy), cudaFreeHost(pinned);
    cudaEventDestroy(ev), cudaStreamDestroy(compute), cudaStreamDestroy(copy);
    ct_emu_set_streams(getenv("CT_EMU_STREAMS"));
}

static void caught_faults(void) {
    float *d;
    cudaMalloc((void **)&d, 64 * sizeof(float));
    CUK_EMU_LAUNCH(1, 64, 0, 0, k_early_exit_sync)(d);
    EXPECT(cudaGetLastError() == cudaErrorLaunchFailure, "__syncthreads after an exit");
    EXPECT(cudaGetLastError() == cudaSuccess, "fault reported once");
    CUK_EMU_LAUNCH(1, 32, 0, 0, k_exit_then_shuffle)(d);
    EXPECT(cudaDeviceSynchronize() == cudaErrorLaunchFailure, "shuffle with an exited lane");
    CUK_EMU_LAUNCH(1, 64, 0, 0, k_half_sync)(d);
    EXPECT(cudaGetLastError() == cudaErrorLaunchFailure, "barrier never released");
    CUK_EMU_LAUNCH(1, 30, 0, 0, k_warp_sum)((const double *)d, (double *)d);
    EXPECT(cudaGetLastError() == cudaErrorLaunchFailure, "full-mask shuffle in a 30-thread block");

    float host[64];
    CUK_EMU_LAUNCH(1, 32, 0, 0, k_write)(host, 64);
    EXPECT(cudaGetLastError() == cudaErrorLaunchFailure, "host pointer passed to a kernel");
    CUK_EMU_LAUNCH(1, 2048, 0, 0, k_write)(d, 64);
    EXPECT(cudaGetLastError() == cudaErrorInvalidConfiguration, "2048 threads per block");
    CUK_EMU_LAUNCH(0, 32, 0, 0, k_write)(d, 64);
    EXPECT(cudaGetLastError() == cudaErrorInvalidConfiguration, "empty grid");
    CUK_EMU_LAUNCH(1, 32, 0, 0, k_write)(d, 64);
    EXPECT(cudaGetLastError() == cudaSuccess, "a good launch after faults");

    EXPECT(cudaMemcpy(host, d, 65 * sizeof(float), cudaMemcpyDeviceToHost) == cudaErrorInvalidValue,
           "copy past the end of an allocation");
    EXPECT(cudaMemcpy(host, d + 1, 63 * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess,
           "copy inside an allocation");
    EXPECT(host[0] == 1.0f && host[62] == 63.0f, "copied values %g %g", host[0], host[62]);
    EXPECT(cudaMemcpy(d, host, 4, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue,
           "DeviceToHost with the pointers swapped");
    EXPECT(cudaFree(d + 1) != cudaSuccess, "cudaFree of an interior pointer");
    EXPECT(cudaFree(d) == cudaSuccess, "cudaFree");
    EXPECT(cudaFree(d) != cudaSuccess, "double cudaFree");
    cudaGetLastError();

    void *big = NULL;
    size_t free_b = 0, total = 0;
    cudaMemGetInfo(&free_b, &total);
    EXPECT(cudaMalloc(&big, total + 1) == cudaErrorMemoryAllocation && big == NULL,
           "allocation beyond capacity");
    cudaGetLastError();
    float *fresh;
    cudaMalloc((void **)&fresh, 16);
    float v;
    cudaMemcpy(&v, fresh, 4, cudaMemcpyDeviceToHost);
    EXPECT(v != v, "new device memory reads as NaN, got %g", v);
    cudaFree(fresh);
}

int main(void) {
    setenv("CT_EMU_QUIET", "1", 1); /* the faults below are expected */
    correct_kernels();
    schedules();
    deferred_streams();
    caught_faults();
    printf("cuda emulator self-test: %d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
