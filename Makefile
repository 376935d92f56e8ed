# ctorch: plain Makefile. Optional features (CUDA plugin) are auto-detected and skipped
# with a one-line notice when their toolchain is missing.
#
#   make install [PREFIX=/usr/local] [DESTDIR=]   headers, libctorch.{so,a}, the CUDA
#   make uninstall [PREFIX=...]                   plugin, ctorch, lib/pkgconfig/ctorch.pc
CC      ?= gcc
BUILD   ?= build
OPT     ?= -O3
CFLAGS  ?=
# The project's flags; a CFLAGS given on the command line is added after them.
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE $(OPT) -g -Wall -Wextra -Werror -fPIC -pthread \
           -Iinclude -Isrc -I/usr/include/x86_64-linux-gnu/openblas-pthread $(ARCHIVE_CFLAGS) $(IMAGE_CFLAGS) \
           $(ONNX_CFLAGS) $(CFLAGS)
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
# libmicrohttpd serves `ctorch train --metrics-port` (src/monitor, docs/monitoring.md); only
# the CLI links it. Without its header the server is left out and --metrics-port says so.
HAVE_MHD := $(shell printf '\043include <microhttpd.h>\n' | $(CC) -E -x c - >/dev/null 2>&1 && echo 1)
ifeq ($(HAVE_MHD),1)
MHD_CFLAGS := -DCT_HAVE_MHD
MHD_LIBS := -lmicrohttpd
else
$(info notice: microhttpd.h not found; ctorch train --metrics-port is left out (install libmicrohttpd-dev))
endif
# ONNX export (`ctorch export --onnx`, ct_onnx_export, docs/onnx.md): protobuf-c's C code
# for Debian libonnx-dev's onnx.proto, generated at build time by protoc-c into
# $(BUILD)/gen/onnx (never committed) and linked with -lprotobuf-c. Without the compiler,
# the schema or the runtime's header the exporter is left out with a notice:
# ct_onnx_export and `ctorch export` then say so (exit 2).
PROTOC_C   ?= $(shell command -v protoc-c 2>/dev/null)
ONNX_PROTO ?= /usr/include/onnx/onnx.proto
HAVE_PROTOBUF_C := $(shell printf '\043include <protobuf-c/protobuf-c.h>\n' | $(CC) -E -x c - >/dev/null 2>&1 && echo 1)
ifneq ($(and $(PROTOC_C),$(wildcard $(ONNX_PROTO)),$(HAVE_PROTOBUF_C)),)
ONNX_GEN     := $(BUILD)/gen/onnx
ONNX_CFLAGS  := -DCT_HAVE_ONNX
ONNX_LIBS    := -lprotobuf-c
ONNX_GEN_OBJ := $(ONNX_GEN)/onnx.pb-c.o
else
$(info notice: protoc-c, $(ONNX_PROTO) or protobuf-c/protobuf-c.h not found; ctorch export --onnx is left out (install libprotobuf-c-dev protobuf-c-compiler libonnx-dev))
endif
# libjpeg-turbo and libpng decode ImageFolder's images (src/data/image.c, docs/data.md);
# without their headers `--dataset imagefolder` says it is not built in.
HAVE_IMAGE := $(shell printf '\043include <stdio.h>\n\043include <jpeglib.h>\n\043include <png.h>\n' | $(CC) -E -x c - >/dev/null 2>&1 && echo 1)
ifeq ($(HAVE_IMAGE),1)
IMAGE_CFLAGS := -DCT_HAVE_IMAGE
IMAGE_LIBS := -ljpeg -lpng
else
$(info notice: jpeglib.h or png.h not found; the imagefolder dataset is left out (install libjpeg62-turbo-dev and libpng-dev))
endif
ALL_LDLIBS = -lopenblas -lz -ljansson -lcrypto $(ARCHIVE_LIBS) $(IMAGE_LIBS) $(ONNX_LIBS) -lpthread -ldl -lm \
             $(LDLIBS)
# libctorch.so's version and soname, from CT_VERSION in include/ctorch.h.
CT_VERSION := $(shell sed -n 's/^\#define CT_VERSION "\([^"]*\)".*/\1/p' include/ctorch.h)
SOVERSION  := $(firstword $(subst ., ,$(CT_VERSION)))
SONAME     := libctorch.so.$(SOVERSION)
SANFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

LIB_SRC := $(sort $(wildcard src/core/*.c src/ops/*.c src/backends/cpu/*.c src/nn/*.c \
             src/optim/*.c src/data/*.c src/io/*.c src/models/*.c src/dist/*.c))
CLI_SRC := $(sort $(wildcard src/cli/*.c src/monitor/*.c))
TEST_SRC := $(sort $(wildcard tests/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o) $(ONNX_GEN_OBJ)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
EXAMPLES := $(patsubst examples/%.c,$(BUILD)/examples/%,$(wildcard examples/*.c))
DATA_DIR ?= $(if $(wildcard ../shared/data),../shared/data,$(if $(CTORCH_DATA),$(CTORCH_DATA),data))
# The tests' data: DATA_DIR when it exists; otherwise no CTORCH_DATA at all, so that the
# tests needing data report skipped and `ctorch doctor` is not told of a directory that
# is not there (which it rightly calls a problem).
TEST_DATA_ENV := $(if $(wildcard $(DATA_DIR)),CTORCH_DATA=$(DATA_DIR),env -u CTORCH_DATA)

NVCC := $(shell command -v nvcc 2>/dev/null)
MPICC := $(shell command -v mpicc 2>/dev/null)

PHONY_EXTRA := examples
.PHONY: all lib cli cuda mpi examples test test-sanitize valgrind fixtures deps run clean \
        install uninstall bench-metrics image test-image \
        test-onnx-full fuzz fuzz-run fuzz-merge

all: lib cli cuda mpi examples

lib: $(BUILD)/libctorch.a $(BUILD)/libctorch.so $(BUILD)/$(SONAME)
cli: $(BUILD)/ctorch

$(BUILD)/%.o: %.c $(wildcard include/*.h) $(wildcard src/*/*.h) $(wildcard src/*/*/*.h) $(wildcard tests/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

# The commit and the flags of this build, compiled into src/cli/run_info.c for the run
# manifest (docs/runs.md): scripts/gen-run-info.sh rewrites the header, when the Makefile is
# read, only when its text changes, so that a new commit, an edit to a tracked file
# ("-dirty"), or other OPT/CFLAGS recompile run_info.o and nothing else, and an unchanged
# tree is up to date (`make -q`).
RUN_INFO_H := $(BUILD)/gen/run_info_build.h
RUN_INFO_FLAGS = $(strip $(filter-out -I%,$(ALL_CFLAGS)))
sq = $(subst ','\'',$(1))
$(shell scripts/gen-run-info.sh '$(RUN_INFO_H)' '$(call sq,$(RUN_INFO_FLAGS))')
# The CPU kernels assume no floating-point traps (ctorch never enables them): GCC may then
# if-convert the branch-free selects of ct_vexpf/ct_vgelu_cdf (cpu_vexp.h) and vectorise
# their loops. Values are unchanged (each element gets the same IEEE operations).
$(BUILD)/src/backends/cpu/%.o: ALL_CFLAGS += -fno-trapping-math
$(BUILD)/src/cli/run_info.o: $(RUN_INFO_H)
$(BUILD)/src/cli/run_info.o: ALL_CFLAGS += -I$(BUILD)/gen

# The ONNX schema's C code (see ONNX_PROTO above): generated from a copy of the .proto so
# that protoc-c names the files onnx.pb-c.{c,h}; the exporter and its test include it.
ifneq ($(ONNX_GEN),)
$(ONNX_GEN)/onnx.pb-c.h: $(ONNX_PROTO)
	@mkdir -p $(dir $@)
	cp $(ONNX_PROTO) $(ONNX_GEN)/onnx.proto
	cd $(ONNX_GEN) && $(PROTOC_C) --c_out=. onnx.proto
$(ONNX_GEN)/onnx.pb-c.c: $(ONNX_GEN)/onnx.pb-c.h
$(ONNX_GEN_OBJ): $(ONNX_GEN)/onnx.pb-c.c
	$(CC) $(ALL_CFLAGS) -I$(ONNX_GEN) -c $< -o $@
$(BUILD)/src/nn/onnx_export.o $(BUILD)/tests/test_onnx.o: $(ONNX_GEN)/onnx.pb-c.h
$(BUILD)/src/nn/onnx_export.o $(BUILD)/tests/test_onnx.o: ALL_CFLAGS += -I$(ONNX_GEN)
endif

$(BUILD)/libctorch.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# A program linked with -Lbuild -lctorch needs libctorch.so.0 (the soname) at run time:
# build/libctorch.so.0 is a link to build/libctorch.so. This link and the CLI's depend on
# the Makefile too, so that an older build gets the soname and the RUNPATH that
# `make install` relies on (relinking only).
$(BUILD)/libctorch.so: $(LIB_OBJ) Makefile
	$(CC) -shared -Wl,-soname,$(SONAME) -o $@ $(LIB_OBJ) $(ALL_LDLIBS)

$(BUILD)/$(SONAME): $(BUILD)/libctorch.so
	ln -sf libctorch.so $@

# The CLI has the library linked in. Its RUNPATH $ORIGIN/../lib is where `make install`
# puts the CUDA plugin: src/core/dispatch.c's last resort, dlopen("libctorch_cuda.so"),
# searches the calling executable's RUNPATH, so an installed bin/ctorch finds
# lib/libctorch_cuda.so (in build/, the plugin next to the executable is found first).
# The monitor (src/monitor: the metrics endpoint and the live page) is part of the CLI: it
# alone links libmicrohttpd. GET / serves src/monitor/page.html, embedded at build time
# as a C array (od + sed: no xxd needed).
PAGE_HTML_H := $(BUILD)/gen/page_html.h
$(PAGE_HTML_H): src/monitor/page.html
	@mkdir -p $(dir $@)
	@{ echo '/* generated from src/monitor/page.html by the Makefile */'; \
	   echo 'static const unsigned char page_html[] = {'; \
	   od -An -v -tx1 $< | sed 's/ *\([0-9a-f][0-9a-f]\)/0x\1,/g'; \
	   echo '};'; } > $@.tmp && mv $@.tmp $@
$(BUILD)/src/monitor/server.o: $(PAGE_HTML_H)
$(BUILD)/src/monitor/%.o: ALL_CFLAGS += -I$(BUILD)/gen $(MHD_CFLAGS)

$(BUILD)/ctorch: $(CLI_OBJ) $(LIB_OBJ) Makefile
	$(CC) $(ALL_CFLAGS) -o $@ $(CLI_OBJ) $(LIB_OBJ) $(ALL_LDLIBS) $(MHD_LIBS) -rdynamic \
	    -Wl,-rpath,'$$ORIGIN/../lib'

examples: $(EXAMPLES)

$(BUILD)/examples/%: examples/%.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(LIB_OBJ) $(ALL_LDLIBS) -rdynamic -Wl,-rpath,'$$ORIGIN/..'

# The suite also calls the CLI modules that use the library only (tests/test_run_info.c).
TEST_CLI_OBJ := $(BUILD)/src/cli/run_info.o
$(BUILD)/test_ctorch: $(TEST_OBJ) $(TEST_CLI_OBJ) $(LIB_OBJ)
	$(CC) $(ALL_CFLAGS) -o $@ $(TEST_OBJ) $(TEST_CLI_OBJ) $(LIB_OBJ) $(ALL_LDLIBS) -rdynamic

# One rank of the process-group tests (tests/test_dist.c runs it under mpirun); next to
# libctorch_mpi.so so that it finds the plugin as ctorch does.
$(BUILD)/dist_worker: tests/dist/dist_worker.c $(LIB_OBJ)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(LIB_OBJ) $(ALL_LDLIBS) -rdynamic

# ---------------------------------------------------------------- CUDA plugin
ifeq ($(NVCC),)
cuda:
	@echo "notice: nvcc not found; skipping the CUDA plugin (ctorch runs on the CPU)"
else
include src/backends/cuda/cuda.mk
endif

# ----------------------------------------------------------------- MPI plugin
# libctorch_mpi.so: the process groups' engine (src/dist/mpi), built with mpicc and loaded
# by ct_dist_init at run time; the library and the CLI never link libmpi.
ifeq ($(MPICC),)
mpi:
	@echo "notice: mpicc not found; skipping the MPI plugin (install libopenmpi-dev for multi-process training)"
else
mpi: $(BUILD)/libctorch_mpi.so
$(BUILD)/libctorch_mpi.so: $(wildcard src/dist/mpi/*.c) src/dist/dist_plugin.h
	@mkdir -p $(dir $@)
	OMPI_CC=$(CC) $(MPICC) -std=c11 -D_GNU_SOURCE $(OPT) -g -Wall -Wextra -Werror -fPIC -shared \
	    -fvisibility=hidden -Isrc -o $@ $(wildcard src/dist/mpi/*.c) -Wl,-soname,libctorch_mpi.so
endif

# -------------------------------------------------------------------- install
# make install [PREFIX=/usr/local] [DESTDIR=staging root]: the public headers (ctorch.h is
# the one a program includes), libctorch.so.$(CT_VERSION) with its soname link
# $(SONAME) and the libctorch.so link, libctorch.a, the CUDA plugin next to libctorch.so
# (where dispatch.c looks for it: beside the library, via dladdr), bin/ctorch, and
# lib/pkgconfig/ctorch.pc. It installs the normal build's outputs (building them first
# if needed, with the normal flags); it never rebuilds with other flags.
PREFIX       ?= /usr/local
DESTDIR      ?=
BINDIR       ?= $(PREFIX)/bin
LIBDIR       ?= $(PREFIX)/lib
INCLUDEDIR   ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
PKG_CONFIG   ?= pkg-config
INSTALL_HEADERS := $(notdir $(wildcard include/ctorch*.h))
INSTALL_DIRS = $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) \
               $(DESTDIR)$(PKGCONFIGDIR)

# ctorch.pc. Dependencies whose Debian .pc files are usable go in Requires.private (zlib,
# jansson), the others are -l flags in Libs.private: openblas.pc would add its include
# directory (ctorch's headers do not need it) and -lgfortran; libarchive.pc's private libs
# (-lacl -lzstd -llz4 ...) are not installed by libarchive-dev, so `--static` could not
# link. Libs.private starts with -Wl,-Bdynamic and ends with -rdynamic, for the static
# command `cc prog.c -Wl,-Bstatic $$(pkg-config --static --cflags --libs ctorch)`:
# libctorch.a linked in, its dependencies shared, ct_error exported for the CUDA plugin.
# Libs carries -Wl,-rpath,$${libdir} (PC_RPATH) unless libdir is one the loader searches
# by default, so that a program compiled with pkg-config runs without LD_LIBRARY_PATH or
# ldconfig (and, linked statically, still finds the plugin in libdir through dlopen);
# packagers may set PC_RPATH= .
pc_has = $(shell $(PKG_CONFIG) --exists $(1) 2>/dev/null && echo yes)
PC_REQUIRES = $(foreach p,zlib jansson,$(if $(call pc_has,$(p)),$(p)))
PC_REQUIRED_LIBS = $(if $(filter zlib,$(PC_REQUIRES)),-lz) \
                   $(if $(filter jansson,$(PC_REQUIRES)),-ljansson)
PC_LIBS_PRIVATE = -Wl,-Bdynamic $(filter-out $(PC_REQUIRED_LIBS),$(ALL_LDLIBS)) -rdynamic
MULTIARCH = $(shell $(CC) -print-multiarch 2>/dev/null)
SYSTEM_LIBDIRS = /lib /lib64 /usr/lib /usr/lib64 $(if $(MULTIARCH),/lib/$(MULTIARCH) \
                 /usr/lib/$(MULTIARCH))
PC_RPATH_FLAG = -Wl,-rpath,$${libdir}
PC_RPATH ?= $(if $(filter $(SYSTEM_LIBDIRS),$(patsubst %/,%,$(LIBDIR))),,$(PC_RPATH_FLAG))
PC_DEFAULT_PATH = $(shell $(PKG_CONFIG) --variable pc_path pkg-config 2>/dev/null)
pc_rel = $(patsubst $(PREFIX)/%,$${prefix}/%,$(1))

install: lib cli $(if $(NVCC),cuda) $(if $(MPICC),mpi)
	@for v in "PREFIX=$(PREFIX)" "BINDIR=$(BINDIR)" "LIBDIR=$(LIBDIR)" \
	          "INCLUDEDIR=$(INCLUDEDIR)" "PKGCONFIGDIR=$(PKGCONFIGDIR)"; do \
	    case "$${v#*=}" in /*) ;; *) echo "error: make install: $$v is not an absolute" \
	        "path (for example: make install PREFIX=/usr/local or PREFIX=\$$HOME/.local)" >&2; \
	        exit 1;; esac; done
	@for d in $(INSTALL_DIRS); do \
	    { mkdir -p "$$d" 2>/dev/null && [ -w "$$d" ]; } || { echo "error: make install:" \
	        "cannot create or write $$d (PREFIX=$(PREFIX)$(if $(DESTDIR), DESTDIR=$(DESTDIR)))." \
	        "Choose a PREFIX you can write (for example: make install PREFIX=\$$HOME/.local)" \
	        "or run make install as root" >&2; exit 1; }; done
	install -m 644 $(addprefix include/,$(INSTALL_HEADERS)) $(DESTDIR)$(INCLUDEDIR)/
	install -m 755 $(BUILD)/libctorch.so $(DESTDIR)$(LIBDIR)/libctorch.so.$(CT_VERSION)
	ln -sf libctorch.so.$(CT_VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libctorch.so
	install -m 644 $(BUILD)/libctorch.a $(DESTDIR)$(LIBDIR)/libctorch.a
	@if [ -f $(BUILD)/libctorch_cuda.so ]; then \
	    echo "install -m 755 $(BUILD)/libctorch_cuda.so $(DESTDIR)$(LIBDIR)/libctorch_cuda.so"; \
	    install -m 755 $(BUILD)/libctorch_cuda.so $(DESTDIR)$(LIBDIR)/libctorch_cuda.so; \
	else echo "notice: no CUDA plugin in $(BUILD) (nvcc not found): installing the CPU-only library"; fi
	@if [ -f $(BUILD)/libctorch_mpi.so ]; then \
	    echo "install -m 755 $(BUILD)/libctorch_mpi.so $(DESTDIR)$(LIBDIR)/libctorch_mpi.so"; \
	    install -m 755 $(BUILD)/libctorch_mpi.so $(DESTDIR)$(LIBDIR)/libctorch_mpi.so; \
	else echo "notice: no MPI plugin in $(BUILD) (mpicc not found): ctorch launch will not work"; fi
	install -m 755 $(BUILD)/ctorch $(DESTDIR)$(BINDIR)/ctorch
	@printf '%s\n' 'prefix=$(PREFIX)' 'exec_prefix=$${prefix}' \
	    'libdir=$(call pc_rel,$(LIBDIR))' 'includedir=$(call pc_rel,$(INCLUDEDIR))' '' \
	    'Name: ctorch' \
	    'Description: tensors with define-by-run autograd, nn, optim, data (C11)' \
	    'Version: $(CT_VERSION)' \
	    'Requires.private: $(strip $(PC_REQUIRES))' \
	    'Cflags: -I$${includedir}' \
	    'Libs: $(strip -L$${libdir} $(PC_RPATH) -lctorch)' \
	    'Libs.private: $(strip $(PC_LIBS_PRIVATE))' > $(DESTDIR)$(PKGCONFIGDIR)/ctorch.pc
	@echo "installed ctorch $(CT_VERSION) in $(DESTDIR)$(PREFIX); build a program with:" \
	    "cc prog.c \$$(pkg-config --cflags --libs ctorch)$(if $(filter $(PKGCONFIGDIR), \
	    $(subst :, ,$(PC_DEFAULT_PATH))),, (with PKG_CONFIG_PATH=$(PKGCONFIGDIR)))"

uninstall:
	rm -f $(addprefix $(DESTDIR)$(INCLUDEDIR)/,$(INSTALL_HEADERS))
	rm -f $(addprefix $(DESTDIR)$(LIBDIR)/,libctorch.so $(SONAME) \
	    libctorch.so.$(CT_VERSION) libctorch.a libctorch_cuda.so libctorch_mpi.so)
	rm -f $(DESTDIR)$(BINDIR)/ctorch $(DESTDIR)$(PKGCONFIGDIR)/ctorch.pc
	@rmdir $(DESTDIR)$(PKGCONFIGDIR) 2>/dev/null || true

# ---------------------------------------------------------------------- tests
deps:
	@scripts/install-deps.sh

test: deps
	@$(MAKE) --no-print-directory all $(BUILD)/test_ctorch $(BUILD)/dist_worker $(if $(NVCC),cuda-emu) \
	    $(if $(HAVE_LIBFUZZER),fuzz)
	@scripts/check-readme.sh $(BUILD) "$(ARCHIVE_LIBS) $(IMAGE_LIBS)"
	$(TEST_DATA_ENV) $(BUILD)/test_ctorch

test-sanitize: deps
	@$(MAKE) --no-print-directory BUILD=build-san OPT=-O1 CFLAGS="$(SANFLAGS)" \
	    LDLIBS="$(SANFLAGS)" build-san/test_ctorch
	$(TEST_DATA_ENV) ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    build-san/test_ctorch $(T)

valgrind: deps $(BUILD)/test_ctorch
	valgrind --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=3 \
	    $(BUILD)/test_ctorch train_loop

# Scraped vs unscraped training throughput and malformed clients (bench/metrics_bench.py,
# docs/monitoring.md); not part of `make test`. BENCH_PAIRS, BENCH_TRAIN_LIMIT and BENCH_EPOCHS size it.
bench-metrics: cli
	$(TEST_DATA_ENV) python3 bench/metrics_bench.py --bin $(BUILD)/ctorch

# The ONNX peer checks at full size (tests/test_onnx.c, docs/onnx.md): resnet18 on 256
# CIFAR-10 test images (make test: 32), its --amp bf16 export, and ctorch eval against ONNX
# Runtime on all 10,000 test images of a briefly trained simple_cnn. Needs the peers
# (bench/peer-requirements.txt: onnx, onnxruntime); not part of make test (about a minute).
test-onnx-full: cli $(BUILD)/test_ctorch
	$(TEST_DATA_ENV) CT_TEST_ONNX_FULL=1 $(BUILD)/test_ctorch onnx_ort

fixtures:
	@for f in tests/fixtures/gen_*.py; do /usr/bin/python3 $$f || exit 1; done

run: deps
	@$(MAKE) --no-print-directory all
	$(BUILD)/ctorch train --model simple_cnn --dataset cifar10 --data-dir $(DATA_DIR)

# ------------------------------------------------------------------ the image
# make image: the OCI image of ctorch and its plugins on a Debian root filesystem made by
# mmdebstrap, no base image pulled (scripts/build-image.sh, docs/container.md):
# $(BUILD)/ctorch-image.oci.tar and $(BUILD)/ctorch-image.docker.tar. make test-image runs
# the image tests (tests/test_image.c; make test skips them while the image is absent).
image: lib cli $(if $(NVCC),cuda) $(if $(MPICC),mpi)
	@scripts/build-image.sh $(BUILD)

test-image: $(BUILD)/test_ctorch
	@test -f $(BUILD)/ctorch-image.oci.tar || { echo "error: $(BUILD)/ctorch-image.oci.tar" \
	    "not found: run make image first" >&2; exit 1; }
	$(TEST_DATA_ENV) CT_TEST_REQUIRE_IMAGE=1 $(BUILD)/test_ctorch image

# -------------------------------------------------------------------- fuzzing
# make fuzz: one libFuzzer program per fuzz/fuzz_<name>.c, $(BUILD)/fuzz/fuzz_<name>, built
# with clang (-fsanitize=fuzzer,address,undefined) over the library compiled the same way in
# $(BUILD)/fuzz/obj; FUZZ_LIBS_<name> adds a target's own libraries (e.g. -ljpeg -lpng).
# make fuzz-run [FUZZ_SECONDS=600] [FUZZ_TARGETS=torch_load]: fuzzes each target for that
# long from its committed corpus fuzz/corpus/<name> (new inputs go to
# $(BUILD)/fuzz/corpus/<name>, crashes to $(BUILD)/fuzz/artifacts/); make fuzz-merge
# replaces fuzz/corpus/<name> with the smallest set of the committed and new inputs that keeps
# every feature (-set_cover_merge=1). make test runs
# every built target briefly over its corpus (tests/test_fuzz.c). Without clang's
# libFuzzer the targets are left out with a notice. docs/fuzzing.md.
FUZZ_CC      ?= clang
FUZZ_SAN     = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
# The library at -O0 (the SIMD kernels take minutes to compile at -O1 with sanitizers, and
# fuzzing barely runs them); the readers under test and the targets at -O1.
FUZZ_OPT     = -O0
FUZZ_CFLAGS  = -std=c11 -D_GNU_SOURCE $(FUZZ_OPT) -g -Wall -Wextra -Werror -pthread -Iinclude -Isrc \
               -I/usr/include/x86_64-linux-gnu/openblas-pthread $(ARCHIVE_CFLAGS) $(IMAGE_CFLAGS) $(FUZZ_SAN)
FUZZ_NAMES   := $(patsubst fuzz/fuzz_%.c,%,$(wildcard fuzz/fuzz_*.c))
FUZZ_TARGETS ?= $(FUZZ_NAMES)
FUZZ_SECONDS ?= 600
FUZZ_LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/fuzz/obj/%.o)
# evaluated only by the fuzz targets and `make test` (a clang link: a fraction of a second)
HAVE_LIBFUZZER = $(shell printf 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }' | \
                 $(FUZZ_CC) -fsanitize=fuzzer -x c - -o /dev/null >/dev/null 2>&1 && echo 1)

ifeq ($(filter fuzz fuzz-run fuzz-merge,$(MAKECMDGOALS)),)
else ifneq ($(HAVE_LIBFUZZER),1)
$(info notice: $(FUZZ_CC) with libFuzzer not found; the fuzz targets are left out (install clang))
endif

fuzz: $(if $(HAVE_LIBFUZZER),$(FUZZ_NAMES:%=$(BUILD)/fuzz/fuzz_%))
# kept between builds (made through a pattern rule, they would count as intermediate)
.SECONDARY: $(FUZZ_LIB_OBJ)

$(BUILD)/fuzz/obj/src/io/%.o $(BUILD)/fuzz/obj/src/nn/%.o $(BUILD)/fuzz/obj/src/data/%.o: \
    FUZZ_OPT = -O1
$(BUILD)/fuzz/obj/%.o: %.c $(wildcard include/*.h) $(wildcard src/*/*.h) $(wildcard src/*/*/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(BUILD)/fuzz/fuzz_%: fuzz/fuzz_%.c $(FUZZ_LIB_OBJ)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -O1 -fsanitize=fuzzer -o $@ $< $(FUZZ_LIB_OBJ) $(FUZZ_LIBS_$*) \
	    $(ALL_LDLIBS)

fuzz-run: fuzz
	@for t in $(FUZZ_TARGETS); do \
	    mkdir -p $(BUILD)/fuzz/corpus/$$t $(BUILD)/fuzz/artifacts; \
	    echo "fuzzing $$t for $(FUZZ_SECONDS) s"; \
	    ASAN_OPTIONS=detect_leaks=1 $(BUILD)/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) \
	        -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 \
	        -artifact_prefix=$(BUILD)/fuzz/artifacts/$$t- \
	        $$(test -f fuzz/$$t.dict && echo -dict=fuzz/$$t.dict) \
	        $(BUILD)/fuzz/corpus/$$t fuzz/corpus/$$t || exit 1; \
	done

fuzz-merge: fuzz
	@for t in $(FUZZ_TARGETS); do \
	    rm -rf $(BUILD)/fuzz/merged/$$t; \
	    mkdir -p $(BUILD)/fuzz/merged/$$t fuzz/corpus/$$t $(BUILD)/fuzz/corpus/$$t; \
	    $(BUILD)/fuzz/fuzz_$$t -set_cover_merge=1 $(BUILD)/fuzz/merged/$$t fuzz/corpus/$$t \
	        $(BUILD)/fuzz/corpus/$$t || exit 1; \
	    rm -rf fuzz/corpus/$$t && mv $(BUILD)/fuzz/merged/$$t fuzz/corpus/$$t || exit 1; \
	    echo "fuzz/corpus/$$t: $$(ls fuzz/corpus/$$t | wc -l) inputs"; \
	done

clean:
	rm -rf build build-san
