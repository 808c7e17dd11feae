# Guest (qemu) targets, included by the top-level Makefile. vm/vm.sh does the
# work; it needs root (apt-get, the cache) and caches everything outside the
# checkout, keyed by kernel ABI.
#
# KERNEL (6.1, 6.12 or 7.x) picks the guest kernel of demo, vmshell,
# vmselftests and vmprepare; vmtest runs on each of KERNELS, which is KERNEL
# when that is given, else all three.
ifneq ($(origin KERNEL),undefined)
KERNELS ?= $(KERNEL)
endif
KERNEL ?= 6.1
KERNELS ?= 6.1 6.12 7.x
KLPTOP_CACHE ?= /var/cache/klptop
VM_ENV = KERNEL=$(KERNEL) KLPTOP_CACHE=$(KLPTOP_CACHE)

.PHONY: vmtest bench-vm demo vmshell vmselftests vmprepare testdata

# e2e tests of the real klptop in a guest, one guest per kernel in KERNELS,
# one guest at a time (vm/vmtest.sh says why); it ends with a table per kernel.
# TESTFLAGS="-test.run Stall" narrows the tests, KERNELS="6.12" the kernels.
VMTEST_JOBS ?= 1
vmtest:
	@KERNELS="$(KERNELS)" VMTEST_JOBS=$(VMTEST_JOBS) KLPTOP_CACHE=$(KLPTOP_CACHE) vm/vmtest.sh

# Scale runs in a guest per kernel in KERNELS: TestScale with BENCH_THREADS
# extra threads (a stalled patching, its unblocking and the unpatching,
# checked against /proc and the kernel's log); the figures (tasks, events,
# lost, ring size, time) are in each guest's report.
BENCH_THREADS ?= 50000
bench-vm:
	@KERNELS="$(KERNELS)" VMTEST_JOBS=1 KLPTOP_CACHE=$(KLPTOP_CACHE) RUN_NAME=bench MEM=4096 \
		TESTFLAGS="-test.run ^TestScale -klptop.threads=$(BENCH_THREADS)" TEST_TIMEOUT=40m TIMEOUT=3000 vm/vmtest.sh

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

# Real recordings for the unit tests: the guest's scenarios
# (internal/vmtest/guest/scenarios_test.go) record the kernel's own livepatch
# modules with klptop, check each recording against the kernel's log and
# sysfs, and hand them back; they replace testdata/linux-$(KERNEL)/*.jsonl only
# when every scenario passed. Then `go test ./internal/report -update` and a
# review of the golden reports.
TESTDATA_OUT = $(KLPTOP_CACHE)/out/testdata-linux-$(KERNEL)
testdata:
	$(VM_ENV) RUN_NAME=testdata OUT=$(TESTDATA_OUT) TESTFLAGS='-test.run ^TestScenario' vm/vm.sh test
	rm -rf testdata/linux-$(KERNEL) && mkdir -p testdata/linux-$(KERNEL)
	cp $(TESTDATA_OUT)/testdata/*.jsonl testdata/linux-$(KERNEL)/
	@ls -l testdata/linux-$(KERNEL)
