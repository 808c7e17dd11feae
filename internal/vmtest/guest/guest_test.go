//go:build guest

package guest

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The guest's layout (vm/vm.sh, vm/guest/init).
const (
	klptopBin  = "/opt/klptop"
	outDir     = "/tmp/out" // handed back to the host after the run
	sysLP      = "/sys/kernel/livepatch"
	busyParam  = "/sys/module/test_klp_callbacks_busy/parameters/block_transition"
	sampleName = "livepatch_sample"
	demoName   = "test_klp_callbacks_demo"
)

func kernelRelease(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func readAttr(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func writeAttr(t *testing.T, path, val string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(val), 0); err != nil {
		t.Fatalf("write %s to %s: %v", val, path, err)
	}
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// unloadPatch disables a livepatch (if still enabled), waits for it to leave
// sysfs and removes its module and any others given: tests leave the kernel
// as they found it, whatever happened.
func unloadPatch(t *testing.T, patch string, mods ...string) {
	t.Helper()
	if _, err := os.Stat(busyParam); err == nil {
		_ = os.WriteFile(busyParam, []byte("0"), 0)
	}
	dir := sysLP + "/" + patch
	if readAttr(dir+"/enabled") == "1" {
		// A disable during a transition reverses it; a write can fail with
		// EBUSY while another transition runs, so retry.
		deadline := time.Now().Add(60 * time.Second)
		for readAttr(dir+"/enabled") == "1" && time.Now().Before(deadline) {
			if readAttr(dir+"/transition") == "0" {
				_ = os.WriteFile(dir+"/enabled", []byte("0"), 0)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(dir); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("cleanup: %s still in sysfs after 60s", dir)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, m := range mods {
		if _, err := os.Stat("/sys/module/" + m); err == nil {
			// The core lets go of a patch's module after it left sysfs.
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				if r := readAttr("/sys/module/" + m + "/refcnt"); r == "0" || r == "" {
					break
				}
			}
			if out, err := exec.Command("rmmod", m).CombinedOutput(); err != nil {
				t.Errorf("cleanup: rmmod %s: %v %s", m, err, bytes.TrimSpace(out))
			}
		}
	}
}

func TestGuestKernel(t *testing.T) {
	rel := kernelRelease(t)
	t.Logf("kernel %s", rel)
	if _, err := os.Stat(sysLP); err != nil {
		t.Fatalf("no livepatch in this kernel: %v", err)
	}
	if _, err := os.Stat("/sys/kernel/tracing/available_filter_functions"); err != nil {
		t.Errorf("no tracefs: %v", err)
	}
	mods, err := os.ReadDir("/lib/modules/" + rel + "/extra")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.Name())
	}
	t.Logf("%d modules: %s", len(names), strings.Join(names, " "))
	for _, want := range []string{"livepatch-sample.ko", "test_klp_callbacks_busy.ko", "test_klp_callbacks_demo.ko"} {
		if !strings.Contains(" "+strings.Join(names, " ")+" ", " "+want+" ") {
			t.Errorf("module %s missing", want)
		}
	}
}

// TestSampleLoads checks the guest itself: the kernel's sample livepatch
// loads, patches /proc/cmdline, and unloads.
func TestSampleLoads(t *testing.T) {
	t.Cleanup(func() { unloadPatch(t, sampleName, "livepatch_sample") })
	run(t, "modprobe", "livepatch-sample")
	dir := sysLP + "/" + sampleName
	waitFor(t, 60*time.Second, "the patching transition", func() bool { return readAttr(dir+"/transition") == "0" })
	if got := readAttr("/proc/cmdline"); !strings.Contains(got, "this has been live patched") {
		t.Errorf("/proc/cmdline = %q, want the sample's text", got)
	}
	writeAttr(t, dir+"/enabled", "0")
	waitFor(t, 60*time.Second, "the patch to go away", func() bool {
		_, err := os.Stat(dir)
		return os.IsNotExist(err)
	})
	run(t, "rmmod", "livepatch_sample")
}
