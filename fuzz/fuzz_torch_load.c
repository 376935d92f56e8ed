/* libFuzzer target: the torch.save reader (src/io/torch_load.c, src/io/torch_pickle.c) on
 * arbitrary bytes, from memory: the zip path through libarchive's memory reader, the legacy
 * path, the unpickler, the selection of a state_dict (top level and a checkpoint key) and
 * the making of tensors. Built by `make fuzz` (clang, -fsanitize=fuzzer,address,undefined);
 * corpus in fuzz/corpus/torch_load (docs/fuzzing.md). */
#include "ctorch.h"
#include "ctorch_nn.h"
#include "io/torch_load.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    ct_set_num_threads(1); /* no worker threads: one input, one thread */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ct_torch_file *f = ct_torch_open_buffer(data, size, "fuzz");
    if (f) {
        ct_state_dict_free(ct_torch_state_dict(f, NULL));
        ct_state_dict_free(ct_torch_state_dict(f, "model_state_dict"));
        ct_torch_close(f);
    }
    ct_clear_error();
    return 0;
}
