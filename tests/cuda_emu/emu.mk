# The CUDA plugin built for the CPU emulator (tests/cuda_emu/README.md): the same sources
# as libctorch_cuda.so, the .cu files compiled as host C++ (CT_CUDA_EMU) so their kernels
# run on simt.cc's fibers, linked with emu_runtime.c instead of cudart, beside stand-ins
# for the driver (libcuda.so.1), cuBLAS, cuDNN and NCCL (one rank). Included by
# src/backends/cuda/cuda.mk (it needs the toolkit's headers, not a GPU).
#
#   make cuda-emu                  build it (make test does, and runs it: tests/test_cuda_emu.c)
#   make test-cuda-emu [T=filter]  run the backend suite (or the tests matching T) on it

EMU_DIR   := tests/cuda_emu
EMU_BUILD := $(BUILD)/cuda_emu
CXX       ?= g++
EMU_OPT   ?= -O1
CUBLAS_MAJOR := $(shell sed -n 's/^\#define CUBLAS_VER_MAJOR *\([0-9]*\).*/\1/p' $(CUDA_INC)/cublas_api.h)
# cuDNN's headers are optional (the plugin then uses src/backends/cuda/cudnn_subset.h: 9)
CUDNN_MAJOR  := $(or $(shell sed -n 's/^\#define CUDNN_MAJOR *\([0-9]*\).*/\1/p' \
                  $(CUDA_INC)/cudnn_version.h 2>/dev/null),9)
EMU_CXXFLAGS = -std=c++17 $(EMU_OPT) -g -fPIC -Wall -Wextra -Werror -Wno-unknown-pragmas -DCT_CUDA_EMU \
               -fvisibility=hidden -I$(EMU_DIR)/include -Iinclude -Isrc -I$(CUDA_INC) $(CFLAGS)
EMU_CFLAGS  = -std=c11 -D_GNU_SOURCE $(EMU_OPT) -g -fPIC -Wall -Wextra -Werror \
              -I$(CUDA_INC) $(CFLAGS)

ifeq ($(wildcard $(CUDA_INC)/cudnn.h),)
# The cuDNN stand-in is compiled against cuDNN's own header, which is not part of the
# toolkit (a GPU image may have cuDNN from pip only): no emulator then.
.PHONY: cuda-emu test-cuda-emu
cuda-emu test-cuda-emu:
	@echo "notice: cudnn.h is not in $(CUDA_INC); skipping the CUDA emulator (tests/cuda_emu)"
else
EMU_PLUGIN_OBJ := $(CUDA_CSRC:$(CUDA_DIR)/%.c=$(EMU_BUILD)/%.o) \
                  $(CUDA_CUSRC:$(CUDA_DIR)/%.cu=$(EMU_BUILD)/%.cu.o) \
                  $(EMU_BUILD)/simt.o $(EMU_BUILD)/emu_runtime.o $(EMU_BUILD)/emu_streams.o
EMU_LIBS := $(EMU_BUILD)/libctorch_cuda.so $(EMU_BUILD)/libcuda.so.1 \
            $(EMU_BUILD)/libcublas.so.$(CUBLAS_MAJOR) $(EMU_BUILD)/libcudnn.so.$(CUDNN_MAJOR) \
            $(EMU_BUILD)/libnccl.so.2
EMU_HDRS := $(CUDA_HDRS) $(wildcard $(EMU_DIR)/include/*.h) $(wildcard $(CUDA_DIR)/*.cuh)

.PHONY: cuda-emu test-cuda-emu
cuda-emu: $(EMU_LIBS) $(EMU_BUILD)/test_simt $(EMU_BUILD)/wrong_abi/libctorch_cuda.so

# A plugin with another backend-table layout (the core must refuse it).
$(EMU_BUILD)/wrong_abi/libctorch_cuda.so: $(EMU_DIR)/wrong_abi_plugin.c
	@mkdir -p $(dir $@)
	$(CC) $(EMU_CFLAGS) -shared -o $@ $< -Wl,-soname,libctorch_cuda.so

# The plugin's C files: as for the real plugin, but against the emulator's runtime.
$(EMU_BUILD)/%.o: $(CUDA_DIR)/%.c $(EMU_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CUDA_CFLAGS) -DCT_CUDA_EMU -c $< -o $@

$(EMU_BUILD)/%.cu.o: $(CUDA_DIR)/%.cu $(EMU_HDRS)
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -x c++ -c $< -o $@

$(EMU_BUILD)/simt.o: $(EMU_DIR)/simt.cc $(EMU_HDRS)
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -c $< -o $@

$(EMU_BUILD)/emu_%.o: $(EMU_DIR)/emu_%.c $(EMU_DIR)/emu_internal.h
	@mkdir -p $(dir $@)
	$(CC) $(EMU_CFLAGS) -c $< -o $@

$(EMU_BUILD)/libctorch_cuda.so: $(EMU_PLUGIN_OBJ)
	$(CXX) -shared -o $@ $^ $(LDLIBS) -Wl,-soname,libctorch_cuda.so -Wl,-z,defs \
	    -Wl,-rpath,'$$ORIGIN' -ldl -lpthread -lm

$(EMU_BUILD)/libcuda.so.1: $(EMU_DIR)/emu_driver.c
	@mkdir -p $(dir $@)
	$(CC) $(EMU_CFLAGS) -shared -o $@ $< -Wl,-soname,libcuda.so.1 $(LDLIBS)

$(EMU_BUILD)/libcublas.so.$(CUBLAS_MAJOR): $(EMU_DIR)/emu_cublas.c $(EMU_DIR)/emu_flush.h src/core/half.h
	@mkdir -p $(dir $@)
	$(CC) $(EMU_CFLAGS) -shared -o $@ $< -Wl,-soname,libcublas.so.$(CUBLAS_MAJOR) $(LDLIBS) -lm

$(EMU_BUILD)/libcudnn.so.$(CUDNN_MAJOR): $(EMU_DIR)/emu_cudnn.c $(EMU_DIR)/emu_flush.h src/core/half.h
	@mkdir -p $(dir $@)
	$(CC) $(EMU_CFLAGS) -shared -o $@ $< -Wl,-soname,libcudnn.so.$(CUDNN_MAJOR) $(LDLIBS) -lm

# One-rank NCCL (nccl.h when installed, else the plugin's nccl_subset.h).
$(EMU_BUILD)/libnccl.so.2: $(EMU_DIR)/emu_nccl.c $(CUDA_DIR)/nccl_subset.h $(CUDA_DIR)/nccl_types.h
	@mkdir -p $(dir $@)
	$(CC) $(EMU_CFLAGS) -I$(CUDA_DIR) -shared -o $@ $< -Wl,-soname,libnccl.so.2 $(LDLIBS) -ldl -lpthread

EMU_RT_OBJ := $(EMU_BUILD)/simt.o $(EMU_BUILD)/emu_runtime.o $(EMU_BUILD)/emu_streams.o
$(EMU_BUILD)/test_simt: $(EMU_DIR)/test_simt.cc $(EMU_RT_OBJ) $(EMU_HDRS)
	$(CXX) $(EMU_CXXFLAGS) -o $@ $< $(EMU_RT_OBJ) $(LDLIBS) -lpthread

endif

# The environment that makes a ctorch program use the emulated plugin.
EMU_ENV = CTORCH_CUDA_PLUGIN=$(abspath $(EMU_BUILD))/libctorch_cuda.so \
          LD_LIBRARY_PATH=$(abspath $(EMU_BUILD))$(if $(LD_LIBRARY_PATH),:$(LD_LIBRARY_PATH)) \
          CTORCH_CUBLAS_LIBRARY= CTORCH_CUDNN_LIBRARY= CTORCH_NCCL_LIBRARY= CT_TEST_EMULATED=1

ifneq ($(wildcard $(CUDA_INC)/cudnn.h),)
test-cuda-emu: $(EMU_LIBS) $(EMU_BUILD)/test_simt $(BUILD)/test_ctorch
	$(EMU_BUILD)/test_simt
	$(EMU_ENV) CTORCH_DATA=$(DATA_DIR) $(BUILD)/test_ctorch $(or $(T),backends)
endif
