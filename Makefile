# ctorch: plain Makefile. Optional features (CUDA plugin) are auto-detected and skipped
# with a one-line notice when their toolchain is missing.
CC      ?= gcc
BUILD   ?= build
OPT     ?= -O3
CFLAGS  ?=
# The project's flags; a CFLAGS given on the command line is added after them.
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE $(OPT) -g -Wall -Wextra -Werror -fPIC -pthread \
           -Iinclude -Isrc -I/usr/include/x86_64-linux-gnu/openblas-pthread $(ARCHIVE_CFLAGS) $(CFLAGS)
LDLIBS  ?=
# libarchive reads the official cifar-10-binary.tar.gz; without it (a GPU image without
# the package) that one feature is left out with a notice, as CUDA is without nvcc.
HAVE_LIBARCHIVE := $(shell printf '\043include <archive.h>\n' | $(CC) -E -x c - >/dev/null 2>&1 && echo 1)
ifeq ($(HAVE_LIBARCHIVE),1)
ARCHIVE_CFLAGS := -DCT_HAVE_LIBARCHIVE
ARCHIVE_LIBS := -larchive
else
$(info notice: libarchive's header not found; reading cifar-10-binary.tar.gz is left out (install libarchive-dev))
endif
ALL_LDLIBS = -lopenblas -lz -ljansson $(ARCHIVE_LIBS) -lpthread -ldl -lm $(LDLIBS)
SANFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

LIB_SRC := $(sort $(wildcard src/core/*.c src/ops/*.c src/backends/cpu/*.c src/nn/*.c \
             src/optim/*.c src/data/*.c src/io/*.c src/models/*.c))
CLI_SRC := $(sort $(wildcard src/cli/*.c))
TEST_SRC := $(sort $(wildcard tests/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
EXAMPLES := $(patsubst examples/%.c,$(BUILD)/examples/%,$(wildcard examples/*.c))
DATA_DIR ?= $(if $(wildcard ../shared/data),../shared/data,$(if $(CTORCH_DATA),$(CTORCH_DATA),data))

NVCC := $(shell command -v nvcc 2>/dev/null)

PHONY_EXTRA := examples
.PHONY: all lib cli cuda examples test test-sanitize valgrind fixtures deps run clean

all: lib cli cuda examples

lib: $(BUILD)/libctorch.a $(BUILD)/libctorch.so
cli: $(BUILD)/ctorch

$(BUILD)/%.o: %.c $(wildcard include/*.h) $(wildcard src/*/*.h) $(wildcard src/*/*/*.h) $(wildcard tests/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/libctorch.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libctorch.so: $(LIB_OBJ)
	$(CC) -shared -o $@ $^ $(ALL_LDLIBS)

$(BUILD)/ctorch: $(CLI_OBJ) $(LIB_OBJ)
	$(CC) $(ALL_CFLAGS) -o $@ $(CLI_OBJ) $(LIB_OBJ) $(ALL_LDLIBS) -rdynamic

examples: $(EXAMPLES)

$(BUILD)/examples/%: examples/%.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(LIB_OBJ) $(ALL_LDLIBS) -rdynamic -Wl,-rpath,'$$ORIGIN/..'

$(BUILD)/test_ctorch: $(TEST_OBJ) $(LIB_OBJ)
	$(CC) $(ALL_CFLAGS) -o $@ $(TEST_OBJ) $(LIB_OBJ) $(ALL_LDLIBS) -rdynamic

# ---------------------------------------------------------------- CUDA plugin
ifeq ($(NVCC),)
cuda:
	@echo "notice: nvcc not found; skipping the CUDA plugin (ctorch runs on the CPU)"
else
include src/backends/cuda/cuda.mk
endif

# ---------------------------------------------------------------------- tests
deps:
	@scripts/install-deps.sh

test: deps
	@$(MAKE) --no-print-directory all $(BUILD)/test_ctorch $(if $(NVCC),cuda-emu)
	@scripts/check-readme.sh $(BUILD)
	CTORCH_DATA=$(DATA_DIR) $(BUILD)/test_ctorch

test-sanitize: deps
	@$(MAKE) --no-print-directory BUILD=build-san OPT=-O1 CFLAGS="$(SANFLAGS)" \
	    LDLIBS="$(SANFLAGS)" build-san/test_ctorch
	CTORCH_DATA=$(DATA_DIR) ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    build-san/test_ctorch $(T)

valgrind: deps $(BUILD)/test_ctorch
	valgrind --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=3 \
	    $(BUILD)/test_ctorch train_loop

fixtures:
	@for f in tests/fixtures/gen_*.py; do /usr/bin/python3 $$f || exit 1; done

run: deps
	@$(MAKE) --no-print-directory all
	$(BUILD)/ctorch train --model simple_cnn --dataset cifar10 --data-dir $(DATA_DIR)

clean:
	rm -rf build build-san
