# Guest (qemu) targets, included by the top-level Makefile. vm/vm.sh does the
# work; it needs root (apt-get, the cache) and caches everything outside the
# checkout, keyed by kernel ABI.
KERNEL ?= 6.1
KLPTOP_CACHE ?= /var/cache/klptop
VM_ENV = KERNEL=$(KERNEL) KLPTOP_CACHE=$(KLPTOP_CACHE)

.PHONY: vmtest demo vmshell vmselftests vmprepare vmtestdata

# e2e tests of the real klptop in a guest; ends with "N passed, N failed".
# TESTFLAGS="-test.run Stall" narrows them.
vmtest:
	$(VM_ENV) vm/vm.sh test

# klptop's live TUI in this terminal while a transition stalls and completes.
demo:
	$(VM_ENV) vm/vm.sh demo

vmshell:
	$(VM_ENV) vm/vm.sh shell

# The kernel's own livepatch selftests: a check of the guest, not of klptop.
vmselftests:
	$(VM_ENV) vm/vm.sh selftests

vmprepare:
	$(VM_ENV) vm/vm.sh prepare

# Copies the traces the last `make vmtest` recorded into testdata/, per kernel
# ABI, as real-kernel inputs for the unit tests.
vmtestdata:
	@src=$$(ls -d $(KLPTOP_CACHE)/out/$(KERNEL).*/test/traces 2>/dev/null | tail -1); \
	[ -n "$$src" ] || { echo "no traces from a $(KERNEL) guest: run make vmtest first"; exit 1; }; \
	kver=$$(basename $$(dirname $$(dirname $$src))); \
	mkdir -p testdata/traces/linux-$$kver && \
	cp $$src/*.ndjson testdata/traces/linux-$$kver/ && \
	ls -l testdata/traces/linux-$$kver
