/* A CUDA plugin built for another backend-table layout, for the test that the core refuses
 * it (tests/test_cuda_emu.c): ct_cuda_plugin_abi answers a value no build has, and
 * ct_cuda_plugin_init must never be called. */
#include <stddef.h>
#include <stdio.h>

long ct_cuda_plugin_abi(void) { return 1; }

const void *ct_cuda_plugin_init(char *reason, size_t n) {
    snprintf(reason, n, "wrong_abi_plugin: ct_cuda_plugin_init was called despite the ABI");
    return NULL;
}
