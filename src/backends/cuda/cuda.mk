# The CUDA plugin, libctorch_cuda.so. Included by the top Makefile only when nvcc is
# found (it defines NVCC as nvcc's path). The core library and the CLI never link a CUDA
# library: the core dlopens this plugin at the first CUDA use (src/core/dispatch.c), and
# the plugin itself links the CUDA runtime statically and dlopens libcuda (the driver),
# cuBLAS and cuDNN in ct_cuda_plugin_init, so that a missing piece is reported by name
# instead of as a loader error. See docs/cuda.md.
#
#   make cuda                          sm_80 + sm_90 SASS, compute_90 PTX (JIT for newer)
#   make cuda CUDA_ARCHS="75 80 86 90" other GPUs (cc 7.5 needs a CUDA <= 12 toolkit)

CUDA_HOME    ?= $(patsubst %/bin/nvcc,%,$(realpath $(NVCC)))
CUDA_INC     := $(CUDA_HOME)/include
CUDA_LIBDIR  := $(firstword $(wildcard $(CUDA_HOME)/lib64 $(CUDA_HOME)/lib) $(CUDA_HOME)/lib64)
CUDA_ARCHS   ?= 80 90
CUDA_PTX     ?= 90
CUDA_GENCODE := $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
                -gencode arch=compute_$(CUDA_PTX),code=compute_$(CUDA_PTX)
# The architectures compiled in, for the "GPU architecture not in the build" check.
comma := ,
CUDA_ARCH_DEFS := -DCT_CUDA_SASS='$(subst $() $(),$(comma),$(strip $(CUDA_ARCHS)))' \
                  -DCT_CUDA_PTX=$(CUDA_PTX)

NVCC_OPT  ?= -O3
NVCCFLAGS := -std=c++17 $(NVCC_OPT) -g $(CUDA_GENCODE) -Werror all-warnings \
             -Xcompiler -fPIC,-Wall,-Wextra,-Werror,-fvisibility=hidden \
             -Iinclude -Isrc
CUDA_CFLAGS = $(ALL_CFLAGS) -fvisibility=hidden \
               -I$(CUDA_INC) $(CUDA_ARCH_DEFS)

CUDA_DIR   := src/backends/cuda
CUDA_CSRC  := $(sort $(wildcard $(CUDA_DIR)/*.c))
CUDA_CUSRC := $(sort $(wildcard $(CUDA_DIR)/*.cu))
CUDA_HDRS  := $(wildcard $(CUDA_DIR)/*.h) $(wildcard src/core/*.h) $(wildcard include/*.h)
CUDA_OBJ   := $(CUDA_CSRC:$(CUDA_DIR)/%.c=$(BUILD)/cuda/%.o) \
              $(CUDA_CUSRC:$(CUDA_DIR)/%.cu=$(BUILD)/cuda/%.cu.o)

.PHONY: cuda
cuda: $(BUILD)/libctorch_cuda.so

$(BUILD)/cuda/%.o: $(CUDA_DIR)/%.c $(CUDA_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CUDA_CFLAGS) -c $< -o $@

$(BUILD)/cuda/%.cu.o: $(CUDA_DIR)/%.cu $(CUDA_HDRS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

# -z defs: the plugin references no symbol of the core (it finds ct_error at run time),
# so it loads into any process; cudart is static, libcuda/cuBLAS/cuDNN are dlopened.
$(BUILD)/libctorch_cuda.so: $(CUDA_OBJ)
	$(NVCC) -shared -cudart static -o $@ $(CUDA_OBJ) \
	    -Xlinker -soname,libctorch_cuda.so -Xlinker -z,defs \
	    -Xlinker -rpath,'$$ORIGIN:$(CUDA_LIBDIR)' -ldl -lpthread -lrt -lm

# The same plugin on the CPU SIMT emulator, for testing without a GPU.
include tests/cuda_emu/emu.mk
