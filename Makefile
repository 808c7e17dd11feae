# klptop: `make test` and `make demo` do all set-up on a fresh Debian machine
# (as root): Debian packages, Debian's kernels, the kernel's own livepatch
# modules, a qemu guest. Downloads and builds are cached in $(KLPTOP_CACHE).

GO            ?= go
KLPTOP_CACHE  ?= /var/cache/klptop
export KLPTOP_CACHE
VERSION       ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS       := -X main.version=$(VERSION)
# Host packages the build and the tests need; the VM harness adds its own.
HOST_PKGS     := clang llvm libbpf-dev tmux

.PHONY: all build generate check-generated deps lint unit test bench fuzz clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o bin/klptop ./cmd/klptop

# Regenerates the BPF objects and their Go bindings (needs clang).
generate:
	$(GO) generate ./internal/probes/...

# The committed BPF objects must be what bpf/ compiles to.
check-generated: deps
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	cp internal/probes/*_bpfel.* $$tmp/; \
	$(GO) generate ./internal/probes/... >/dev/null; \
	for f in $$tmp/*; do \
		cmp -s $$f internal/probes/$$(basename $$f) || { \
			echo "stale: internal/probes/$$(basename $$f) differs from what bpf/ compiles to; run 'make generate' and commit"; exit 1; }; \
	done; echo "BPF objects up to date"

deps: $(KLPTOP_CACHE)/.host-deps
$(KLPTOP_CACHE)/.host-deps:
	mkdir -p $(KLPTOP_CACHE)
	@if ! dpkg -s $(HOST_PKGS) >/dev/null 2>&1; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(HOST_PKGS); fi
	touch $@

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt: $$out"; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags guest ./...

unit: deps
	$(GO) test ./...

# Unit tests, then the end-to-end tests against real kernels in qemu guests;
# at the end, where the time went. The first phase to fail stops it.
TEST_PHASES := lint check-generated unit vmtest
test:
	@t0=$$(date +%s); times=; rc=0; \
	for p in $(TEST_PHASES); do \
		s=$$(date +%s); $(MAKE) --no-print-directory $$p || rc=$$?; \
		times="$$times $$p $$(($$(date +%s) - s))s"; [ $$rc = 0 ] || { times="$$times (failed)"; break; }; \
	done; \
	echo "make test:$$times; total $$(($$(date +%s) - t0))s"; exit $$rc

# Every fuzz target for FUZZTIME each. The recordings among the seeds are
# tens of kB: minimizing one such input for the default 60 s stalls the
# fuzzer, so minimization is kept short.
FUZZTIME ?= 60s
fuzz:
	@for t in FuzzDecode:./internal/trace FuzzReader:./internal/trace FuzzApply:./internal/state \
		FuzzRun:./internal/report FuzzPerfetto:./internal/export; do \
		echo "== $${t%%:*}"; \
		$(GO) test -run '^$$' -fuzz "^$${t%%:*}$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 2s -parallel 1 $${t#*:} || exit 1; \
	done

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf bin

include vm/vm.mk
