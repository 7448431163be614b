# mor: one plain, non-recursive Makefile. `make` builds the library, tools and examples;
# `make test` builds and runs every test. `make list` prints the targets. Warnings are errors
# only with WERROR=1 (CI passes it), so a new compiler's new warning never breaks a plain build.

VERSION_MAJOR := $(shell sed -n 's/^\#define MOR_VERSION_MAJOR \([0-9]*\).*/\1/p' include/mor.h)
VERSION_MINOR := $(shell sed -n 's/^\#define MOR_VERSION_MINOR \([0-9]*\).*/\1/p' include/mor.h)
VERSION_PATCH := $(shell sed -n 's/^\#define MOR_VERSION_PATCH \([0-9]*\).*/\1/p' include/mor.h)
VERSION       := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

CC      ?= cc
PREFIX  ?= /usr/local
LIBDIR  ?= $(PREFIX)/lib
INCDIR  ?= $(PREFIX)/include
BINDIR  ?= $(PREFIX)/bin
PCDIR   ?= $(LIBDIR)/pkgconfig
# Build directory for objects, tests and tool binaries (sanitizer builds use their own).
B       ?= build
# Where libmor.a / libmor.so.N go: lib/ for the normal build.
L       ?= lib

# Knobs:
# OPENMP=1  run the compute loops under OpenMP instead of the built-in pthread pool.
# SIMD=0    compile the scalar reference kernels only (the oracle), no ISA-specific files.
# THREADS=0 build without pthreads, for hosts that forbid threads.
# DEBUG=1   -O0 -g and internal debug logging.
# WERROR=1  turn every compiler warning into an error (.ci/run passes it to every make).
OPENMP  ?= 0
SIMD    ?= 1
THREADS ?= 1
DEBUG   ?= 0
WERROR  ?= 0

WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wpointer-arith -Wvla -Wformat=2 -Wundef -Wwrite-strings -Wno-format-nonliteral
ifeq ($(WERROR),1)
WARN    += -Werror
endif
OPT     := -O2
ifeq ($(DEBUG),1)
OPT     := -O0 -g -DMOR_DEBUG=2
endif
CFLAGS  ?=
BASE    := -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE $(OPT) -g $(WARN) -Iinclude -Isrc
LIBS    := -lm
ifeq ($(THREADS),1)
LIBS    += -pthread
else
BASE    += -DMOR_NO_THREADS
endif
ifeq ($(OPENMP),1)
BASE    += -fopenmp -DMOR_OPENMP
LIBS    += -fopenmp
endif
ifeq ($(SIMD),0)
BASE    += -DMOR_NO_SIMD
endif
ALL_CFLAGS := $(BASE) $(CFLAGS)
LIB_CFLAGS := $(ALL_CFLAGS) -fPIC -fvisibility=hidden -DMOR_BUILD

LIB_SRC  := $(wildcard src/*.c) $(wildcard src/kernels/*.c)
# ISA-specific kernel files of the target architecture only (x86-64: AVX2, AVX-512; AArch64:
# NEON), chosen at run time from CPU features.
ARCH    ?= $(firstword $(subst -, ,$(shell $(CC) -dumpmachine)))
ifeq ($(SIMD),1)
ifneq ($(filter x86_64 amd64,$(ARCH)),)
LIB_SRC_ISA := $(wildcard src/kernels/x86/*.c)
endif
ifneq ($(filter aarch64 arm64,$(ARCH)),)
LIB_SRC_ISA := $(wildcard src/kernels/arm/*.c)
endif
endif
LIB_OBJ  := $(patsubst src/%.c,$(B)/obj/%.o,$(LIB_SRC) $(LIB_SRC_ISA))
HDRS     := include/mor.h $(wildcard src/*.h) $(wildcard src/kernels/*.h)

# Code the tools, tests and fuzz targets share but the library never calls (the GGUF writer,
# the llama2.c importer, the quantizer): tools/lib/, built with the library's internal headers
# into $(B)/libmor-tools.a, which those programs link before libmor.a. Not installed.
TLIB_SRC := $(wildcard tools/lib/*.c)
TLIB_OBJ := $(patsubst tools/lib/%.c,$(B)/obj-tools/%.o,$(TLIB_SRC))
TLIB     := $(B)/libmor-tools.a
# Headers of the programs built on the internals: tools/lib/ and the shared generators of
# tests/support/.
INT_HDRS := $(HDRS) $(wildcard tools/lib/*.h) $(wildcard tests/support/*.h)
INT_CFLAGS := $(ALL_CFLAGS) -Itools/lib

TEST_SRC := $(wildcard tests/test-*.c)
TEST_BIN := $(patsubst tests/%.c,$(B)/%,$(TEST_SRC))
TOOL_SRC := $(wildcard tools/*.c)
TOOL_BIN := $(patsubst tools/%.c,$(B)/%,$(TOOL_SRC))
EX_SRC   := $(wildcard examples/*.c)
EX_BIN   := $(patsubst examples/%.c,$(B)/example-%,$(EX_SRC))

STATIC   := $(L)/libmor.a
SONAME   := libmor.so.$(VERSION_MAJOR)
SHARED   := $(L)/libmor.so.$(VERSION)

## all: the library (static and shared), tools and examples (default)
all: lib tools examples

## lib: lib/libmor.a and lib/libmor.so.N
lib: $(STATIC) $(SHARED) $(L)/$(SONAME) $(L)/libmor.so $(L)/pkgconfig/mor.pc

# V=1 prints every command; by default one short line per file.
ifeq ($(V),1)
Q :=
else
Q := @
endif

$(B)/obj/%.o: src/%.c $(HDRS) Makefile
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(LIB_CFLAGS) -c $< -o $@

# ISA-specific kernel files get their own flags; nothing else in the library does. ISA_CFLAGS
# is added to them only (the sanitizer builds compile them at -O1: instrumenting the unrolled
# AVX-512 products at -O2 took gcc over 5 minutes for that one file, and 1 minute at -O1).
ISA_CFLAGS ?=
$(B)/obj/kernels/x86/avx2.o: src/kernels/x86/avx2.c $(HDRS) Makefile
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $< (AVX2)")
	$(Q)$(CC) $(LIB_CFLAGS) -mavx2 -mfma -mf16c $(ISA_CFLAGS) -c $< -o $@
$(B)/obj/kernels/x86/avx512.o: src/kernels/x86/avx512.c $(HDRS) Makefile
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $< (AVX-512)")
	$(Q)$(CC) $(LIB_CFLAGS) -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mfma -mf16c $(ISA_CFLAGS) -c $< -o $@

$(B)/obj-tools/%.o: tools/lib/%.c $(HDRS) $(wildcard tools/lib/*.h) Makefile
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(LIB_CFLAGS) -Itools/lib -c $< -o $@

$(TLIB): $(TLIB_OBJ)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@
	$(Q)ar rcs $@ $^

$(STATIC): $(LIB_OBJ)
	@mkdir -p $(L)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@
	$(Q)ar rcs $@ $^

$(SHARED): $(LIB_OBJ) src/mor.map
	@mkdir -p $(L)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) -shared -o $@ $(LIB_OBJ) -Wl,-soname,$(SONAME) -Wl,--version-script=src/mor.map \
	    -Wl,--no-undefined $(LDFLAGS) $(LIBS)
$(L)/$(SONAME): $(SHARED)
	ln -sf libmor.so.$(VERSION) $@
$(L)/libmor.so: $(SHARED)
	ln -sf libmor.so.$(VERSION) $@

$(L)/pkgconfig/mor.pc: pkgconfig/mor.pc.in Makefile
	@mkdir -p $(dir $@)
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCDIR@|$(INCDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' -e 's|@LIBS@|$(LIBS)|' $< > $@

## tools: mor-run and the converters (build/)
tools: $(TOOL_BIN)
$(B)/%: tools/%.c $(TLIB) $(STATIC) $(INT_HDRS)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(INT_CFLAGS) $< -o $@ $(TLIB) $(STATIC) $(LDFLAGS) $(LIBS)

## examples: the programs in examples/, built exactly as a user would (mor.h + libmor)
examples: $(EX_BIN)
$(B)/example-%: examples/%.c $(STATIC) include/mor.h
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(ALL_CFLAGS) -Iinclude $< -o $@ $(STATIC) $(LDFLAGS) $(LIBS)

# Tests link the static library so they can reach internal mor__ symbols.
$(B)/test-%: tests/test-%.c tests/harness.h $(TLIB) $(STATIC) $(INT_HDRS)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(INT_CFLAGS) $< -o $@ $(TLIB) $(STATIC) $(LDFLAGS) $(LIBS)

## test: build and run every test, then check the exported symbols
# TEST_JOBS=N runs N test programs at once (each one's output is printed whole, in order);
# CI uses it for the slow sanitizer and valgrind passes.
TEST_JOBS ?= 1
# TEST_OMIT: test programs (names like test-kernels) a wrapped run leaves out (see valgrind, tsan).
TEST_OMIT ?=
TEST_RUN := $(filter-out $(addprefix $(B)/,$(TEST_OMIT)),$(TEST_BIN))
test: all $(TEST_BIN)
	@fail=0; \
	if [ "$(TEST_JOBS)" -gt 1 ]; then \
	    printf '%s\n' $(TEST_RUN) | W="$(TEST_WRAP)" xargs -P $(TEST_JOBS) -n 1 \
	        sh -c 's=$$(date +%s); eval "$$W ./$$1" > "$$1.log" 2>&1; echo $$? > "$$1.rc"; echo $$(( $$(date +%s) - s )) > "$$1.sec"' sh; \
	    for t in $(TEST_RUN); do echo "# $$t"; cat $$t.log; echo "# $$t: $$(cat $$t.sec) s"; [ "$$(cat $$t.rc)" = 0 ] || fail=1; done; \
	else \
	    for t in $(TEST_RUN); do echo "# $$t"; s=$$(date +%s); $(TEST_WRAP) ./$$t || fail=1; echo "# $$t: $$(( $$(date +%s) - s )) s"; done; \
	fi; \
	[ -z "$(strip $(TEST_OMIT))" ] || echo "# left out of this run: $(TEST_OMIT)"; \
	$(MAKE) --no-print-directory test-python B=$(B) L=$(L) || fail=1; \
	$(MAKE) --no-print-directory check-exports B=$(B) L=$(L) || fail=1; \
	$(MAKE) --no-print-directory check-deps || fail=1; \
	$(MAKE) --no-print-directory check-header B=$(B) || fail=1; \
	$(MAKE) --no-print-directory fuzz-replay B=$(B) L=$(L) || fail=1; \
	if [ $$fail = 0 ]; then echo "all test programs passed"; else echo "SOME TESTS FAILED"; exit 1; fi

## test-python: the Python tests (ctypes bindings, converter); needs python3 (stdlib only),
## skipped with a note when it is missing
PYTHON ?= python3
PY_TESTS := $(wildcard tests/test_*.py)
test-python: $(SHARED) tools
	@if [ -n "$(strip $(PY_TESTS))" ] && ! command -v $(PYTHON) >/dev/null; then \
	    echo "# SKIP python tests: $(PYTHON) not found"; exit 0; fi; \
	fail=0; for t in $(PY_TESTS); do echo "# $$t"; MOR_LIB=$(CURDIR)/$(SHARED) MOR_BUILD_DIR=$(CURDIR)/$(B) MOR_RUN=$(CURDIR)/$(B)/mor-run \
	    $(TEST_WRAP_PY) $(PYTHON) $$t || fail=1; done; exit $$fail

## check-exports: the shared library exports only mor_* symbols, under the MOR_0 version node
check-exports: $(SHARED)
	@bad=$$(nm -D --defined-only $(SHARED) | awk '{print $$3}' | grep -v '^mor_' | grep -v '^MOR_' ); \
	if [ -n "$$bad" ]; then echo "unexpected exports: $$bad"; exit 1; fi; \
	n=$$(nm -D --defined-only $(SHARED) | awk '{print $$3}' | grep -c '^mor_'); \
	echo "exports: $$n mor_ symbols, nothing else"; \
	readelf -d $(SHARED) | grep -q "SONAME.*\[$(SONAME)\]" && echo "soname: $(SONAME)"

## check-deps: dependencies in src/ point one way, down the layer table of tools/check-deps.sh
check-deps:
	@sh tools/check-deps.sh
.PHONY: check-deps

## check-header: mor.h compiles alone as strict C11 and as C++
check-header:
	@mkdir -p $(B)
	@printf '#include "mor.h"\nint main(void){return mor_version_number()==MOR_VERSION_NUMBER?0:1;}\n' > $(B)/hdr.c
	$(CC) -std=c11 -Wpedantic -Wall -Wextra -Werror -Iinclude -c $(B)/hdr.c -o $(B)/hdr.o
	@if command -v c++ >/dev/null; then c++ -x c++ -Wall -Wextra -Werror -Iinclude -c $(B)/hdr.c -o $(B)/hdr-cxx.o && echo "header: C11 and C++ ok"; fi

# The ISA kernel files under AddressSanitizer: -O1, and no use-after-scope poisoning of their
# unrolled locals (stack and heap bounds are still checked); see ISA_CFLAGS.
SAN_ISA := -O1 -fno-sanitize-address-use-after-scope
# The sanitizer, valgrind and emulated runs set MOR_TEST_QUICK=1: the heaviest tests run a
# smaller matrix of shapes there (every type, kernel table and path still runs).
## asan: build everything with AddressSanitizer (+ leak checks) into build-asan/ and run the tests
asan:
	MOR_TEST_QUICK=1 $(MAKE) test B=build-asan L=build-asan/lib CFLAGS="-fsanitize=address -fno-omit-frame-pointer" ISA_CFLAGS="$(SAN_ISA)" \
	    LDFLAGS="-fsanitize=address" PY_TESTS=

## ubsan: build with UndefinedBehaviorSanitizer (abort on any report) and run the tests
ubsan:
	MOR_TEST_QUICK=1 $(MAKE) test B=build-ubsan L=build-ubsan/lib CFLAGS="-fsanitize=undefined -fno-sanitize-recover=all" ISA_CFLAGS=-O1 \
	    LDFLAGS="-fsanitize=undefined" PY_TESTS=

## sanitize: AddressSanitizer and UndefinedBehaviorSanitizer in one build (build-san/), as CI runs them
sanitize:
	MOR_TEST_QUICK=1 $(MAKE) test B=build-san L=build-san/lib ISA_CFLAGS="$(SAN_ISA)" \
	    CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
	    LDFLAGS="-fsanitize=address,undefined" PY_TESTS=

## tsan: build with ThreadSanitizer into build-tsan/ and run the C tests (the pool, sessions and the
## scheduler on several threads, concurrent tokenization); any report fails
# setarch -R turns address randomization off for the tests: gcc's TSan runtime aborts with
# "unexpected memory mapping" on kernels with high mmap randomization (vm.mmap_rnd_bits 32).
TSAN_WRAP ?= $(shell setarch $$(uname -m) -R true 2>/dev/null && echo setarch $$(uname -m) -R)
tsan:
	MOR_TEST_QUICK=1 $(MAKE) test B=build-tsan L=build-tsan/lib CFLAGS="-fsanitize=thread" LDFLAGS="-fsanitize=thread" ISA_CFLAGS=-O1 \
	    TEST_OMIT="$(TSAN_OMIT)" \
	    TEST_WRAP="env TSAN_OPTIONS='halt_on_error=1 second_deadlock_stack=1 $(TSAN_OPTIONS)' $(TSAN_WRAP)" PY_TESTS=

## valgrind: run the tests under valgrind memcheck (errors and leaks fail)
# Left out there, and test-kernels under TSan: single-threaded numerics (kernels against the
# oracle, fixtures, cross-references) that took 80-180 s each under valgrind and 75 s under
# TSan; they run in the plain, ASan+UBSan and clang passes. VALGRIND_OMIT= runs them all.
VALGRIND_OMIT ?= test-kernels test-model test-xref
TSAN_OMIT ?= test-kernels
valgrind: all $(TEST_BIN)
	MOR_TEST_QUICK=1 $(MAKE) test PY_TESTS= TEST_OMIT="$(VALGRIND_OMIT)" TEST_WRAP="valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite,indirect"

## abi-check: compare the shared library's ABI with the committed baseline (tests/abi/libmor.abi);
## incompatible changes fail, additions are reported
abi-check: $(SHARED)
	@command -v abidiff >/dev/null || { echo "abi-check needs abigail-tools (apt-get install abigail-tools)"; exit 1; }
	@mkdir -p $(B)
	abidw --no-corpus-path --headers-dir include $(SHARED) > $(B)/libmor.abi
	@abidiff --headers-dir2 include tests/abi/libmor.abi $(B)/libmor.abi > $(B)/abidiff.txt; rc=$$?; \
	cat $(B)/abidiff.txt; \
	bad=$$(grep -E 'changes summary: ' $(B)/abidiff.txt | grep -vE ': 0 Removed, 0 Changed' ); \
	if [ $$((rc & 8)) -ne 0 ] || [ $$((rc & 1)) -ne 0 ] || [ -n "$$bad" ]; then \
	    echo "ABI: incompatible change (removed or changed functions/types; bump MOR_VERSION_MAJOR and make abi-baseline)"; exit 1; fi; \
	if [ $$((rc & 4)) -ne 0 ]; then echo "ABI: compatible additions"; else echo "ABI: unchanged"; fi

## abi-baseline: record the current ABI as the baseline (after a release or a major bump)
abi-baseline: $(SHARED)
	@mkdir -p tests/abi
	abidw --no-corpus-path --headers-dir include $(SHARED) > tests/abi/libmor.abi

## fuzz: build the fuzz targets (tests/fuzz/) with clang + libFuzzer + ASan + UBSan into build-fuzz/
## and run each for FUZZ_TIME seconds (default 60) on a copy of its corpus; any crash fails
FUZZ_NAMES   := $(patsubst tests/fuzz/fuzz-%.c,%,$(wildcard tests/fuzz/fuzz-*.c))
FUZZ_CC      ?= clang
FUZZ_TIME    ?= 60
FUZZ_ARGS    ?=
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_MAX_LEN_gguf := 262144
FUZZ_MAX_LEN_llama2c := 16384
fuzz:
	$(MAKE) --no-print-directory fuzz-build
	$(MAKE) --no-print-directory fuzz-run

## fuzz-run: run the targets already built in build-fuzz/ (as `make fuzz` does, without building)
fuzz-run:
	@fail=0; for t in $(FUZZ_NAMES); do \
	    c=build-fuzz/corpus/$$t; mkdir -p $$c build-fuzz/crash/$$t; \
	    for d in tests/fuzz/corpus/$$t tests/fuzz/regress/$$t; do [ -d $$d ] && cp -n $$d/* $$c/ 2>/dev/null; done; \
	    if [ $$t = gguf ]; then for f in tests/data/*.gguf; do [ $$(wc -c < $$f) -le 262144 ] && cp -n $$f $$c/; done; fi; \
	    if [ $$t = state ]; then MOR_FUZZ_STATE_SEEDS=$$c ./build-fuzz/fuzz-state >/dev/null || fail=1; fi; \
	    echo "# fuzz-$$t: $(FUZZ_TIME) s"; \
	    len=$$(case $$t in gguf) echo $(FUZZ_MAX_LEN_gguf);; llama2c) echo $(FUZZ_MAX_LEN_llama2c);; *) echo 4096;; esac); \
	    ./build-fuzz/fuzz-$$t -max_total_time=$(FUZZ_TIME) -max_len=$$len -timeout=30 -rss_limit_mb=2048 \
	        -print_final_stats=1 -artifact_prefix=build-fuzz/crash/$$t/ $(FUZZ_ARGS) $$c \
	        > build-fuzz/fuzz-$$t.log 2>&1; rc=$$?; \
	    grep -E '^stat::number_of_executed_units|^stat::new_units_added|^stat::peak_rss_mb' build-fuzz/fuzz-$$t.log | tr '\n' ' '; echo; \
	    if [ $$rc != 0 ]; then fail=1; echo "fuzz-$$t FAILED (exit $$rc): build-fuzz/fuzz-$$t.log, inputs in build-fuzz/crash/$$t/"; \
	        grep -E 'ERROR|check failed|SUMMARY|^    #[0-9] ' build-fuzz/fuzz-$$t.log | head -20; fi; \
	done; [ $$fail = 0 ] && echo "fuzz: no crash" || { echo "fuzz: FAILED"; exit 1; }

## fuzz-build: only build the libFuzzer targets (build-fuzz/fuzz-NAME)
# SIMD=0: the targets fuzz files, strings and call sequences, not the kernels (test-kernels checks
# every ISA against the scalar oracle, under the sanitizers too), and clang takes many minutes to
# instrument the unrolled AVX-512 file for coverage.
fuzz-build:
	@command -v $(FUZZ_CC) >/dev/null || { echo "fuzzing needs clang and libFuzzer (apt-get install clang libclang-rt-dev)"; exit 1; }
	$(MAKE) --no-print-directory CC=$(FUZZ_CC) B=build-fuzz L=build-fuzz/lib SIMD=0 \
	    CFLAGS="$(FUZZ_SAN) -fsanitize=fuzzer-no-link" LDFLAGS="$(FUZZ_SAN)" \
	    $(patsubst %,build-fuzz/fuzz-%,$(FUZZ_NAMES))

## fuzz-replay: replay the fuzz corpus and regression inputs with the normal build (part of `make test`)
fuzz-replay: $(patsubst %,$(B)/fuzz-%-replay,$(FUZZ_NAMES))
	@fail=0; mkdir -p $(B)/fuzz-state-seeds; \
	MOR_FUZZ_STATE_SEEDS=$(B)/fuzz-state-seeds $(TEST_WRAP) ./$(B)/fuzz-state-replay >/dev/null || fail=1; \
	for t in $(FUZZ_NAMES); do \
	    dirs=$$(for d in tests/fuzz/corpus/$$t tests/fuzz/regress/$$t; do [ -d $$d ] && echo $$d; done); \
	    [ $$t = state ] && dirs="$$dirs $(B)/fuzz-state-seeds"; \
	    $(TEST_WRAP) ./$(B)/fuzz-$$t-replay $$dirs || { fail=1; echo "fuzz-$$t: replay FAILED (rerun with -v to see the input)"; }; \
	done; exit $$fail

# Fuzz targets: with libFuzzer (build-fuzz/) or with the replay main() (any compiler and build).
$(B)/fuzz-%-replay: tests/fuzz/fuzz-%.c tests/fuzz/replay.c tests/fuzz/fuzz.h $(TLIB) $(STATIC) $(INT_HDRS)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(INT_CFLAGS) $< tests/fuzz/replay.c -o $@ $(TLIB) $(STATIC) $(LDFLAGS) $(LIBS)
$(B)/fuzz-%: tests/fuzz/fuzz-%.c tests/fuzz/fuzz.h $(TLIB) $(STATIC) $(INT_HDRS)
	@$(if $(Q),echo "  CCLD    $@")
	$(Q)$(CC) $(INT_CFLAGS) -fsanitize=fuzzer $< -o $@ $(TLIB) $(STATIC) $(LDFLAGS) $(LIBS)
.PHONY: fuzz fuzz-build fuzz-run fuzz-replay

## run: generate a continuation from the default model
DEFAULT_MODEL := $(firstword $(wildcard tests/data/models/default.gguf) tests/data/stories260K.gguf)
run: all
	./$(B)/mor-run -m $(DEFAULT_MODEL) -p "Once upon a time" -n 96

## bench: mor-bench on random-weight SmolLM-135M shapes (F32, F16, vanilla and MoR-3; 1 and 2 threads)
BENCH_ARGS ?= --shape smollm-135m --type f32,f16 --recursions 0,3 -t 1,2 -p 128 -n 64 -r 3
.PHONY: bench
bench: tools
	./$(B)/mor-bench $(BENCH_ARGS)

## test-aarch64: cross-build the kernel and model tests for AArch64 (NEON) and run them under qemu-user
test-aarch64:
	$(MAKE) --no-print-directory CC=aarch64-linux-gnu-gcc B=build-arm L=build-arm/lib LDFLAGS=-static \
	    build-arm/test-kernels build-arm/test-model build-arm/test-xref
	MOR_TEST_QUICK=1 qemu-aarch64 ./build-arm/test-kernels
	qemu-aarch64 ./build-arm/test-model
	qemu-aarch64 ./build-arm/test-xref

## fixtures: regenerate the golden fixtures with the PyTorch reference (PyTorch needed)
fixtures:
	python3 tools/make-fixtures.py --out tests/data --stories-src tests/data
	python3 tools/make-policy-fixtures.py --data tests/data

## models: train the four models of docs/MODELS.md (PyTorch and a GPU; about 8 minutes);
## CORPUS=DIR, the folder of training text, is required (docs/MODELS.md, "Reproducing")
ifneq ($(filter models,$(MAKECMDGOALS)),)
ifeq ($(strip $(CORPUS)),)
$(error make models needs CORPUS=DIR, the training corpus folder (docs/MODELS.md, "Reproducing"))
endif
endif
models: tools
	python3 tools/train.py all --corpus $(CORPUS)

## install: header, libraries and mor.pc under $(DESTDIR)$(PREFIX)
install: lib
	install -d $(DESTDIR)$(INCDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(PCDIR) $(DESTDIR)$(BINDIR)
	install -m 644 include/mor.h $(DESTDIR)$(INCDIR)/
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)/
	ln -sf libmor.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf libmor.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libmor.so
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCDIR@|$(INCDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' -e 's|@LIBS@|$(LIBS)|' pkgconfig/mor.pc.in > $(DESTDIR)$(PCDIR)/mor.pc
	@for t in $(TOOL_BIN); do [ -f $$t ] && install -m 755 $$t $(DESTDIR)$(BINDIR)/ || true; done

## uninstall: remove what install put in place
uninstall:
	rm -f $(DESTDIR)$(INCDIR)/mor.h $(DESTDIR)$(LIBDIR)/libmor.a $(DESTDIR)$(LIBDIR)/libmor.so* \
	    $(DESTDIR)$(PCDIR)/mor.pc $(addprefix $(DESTDIR)$(BINDIR)/,$(notdir $(TOOL_BIN)))

## test-install: install into a temporary prefix and build an example with pkg-config
test-install: lib
	rm -rf $(B)/stage && $(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/$(B)/stage PREFIX=/usr
	PKG_CONFIG_SYSROOT_DIR=$(CURDIR)/$(B)/stage PKG_CONFIG_LIBDIR=$(CURDIR)/$(B)/stage/usr/lib/pkgconfig \
	    sh -c '$(CC) -std=c11 examples/simple.c -o $(B)/stage/simple $$(pkg-config --cflags --libs mor)'
	LD_LIBRARY_PATH=$(B)/stage/usr/lib $(B)/stage/simple tests/data/stories260K.gguf > /dev/null && echo "install: ok"

## clean: remove build outputs
clean:
	rm -rf build build-* lib/libmor* lib/pkgconfig

## list: print the targets with their descriptions
list:
	@grep -E '^## ' Makefile | sed 's/^## /  /'

.PHONY: all lib tools examples test check-exports check-header asan ubsan sanitize tsan valgrind install uninstall \
    test-install clean list abi-check abi-baseline run test-python models test-aarch64 fixtures
.SECONDARY:
