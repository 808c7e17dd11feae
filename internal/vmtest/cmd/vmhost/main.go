// Command vmhost reports a guest run of vm/vm.sh: it unpacks the files the
// guest handed back, counts the guest's test results and exits non-zero when
// anything failed, including a guest that never reported back.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/klptop/klptop/internal/vmtest"
)

func main() {
	console := flag.String("console", "", "console log (CR already stripped or not)")
	data := flag.String("data", "", "raw output of the guest's data serial port")
	out := flag.String("out", "", "directory for the guest's files (emptied first)")
	mode := flag.String("mode", "test", "test or selftests")
	kernel := flag.String("kernel", "", "the guest kernel (KERNEL of vm/vm.sh): its declared skips apply")
	summary := flag.String("summary", "", `file for one line "tests passed failed skipped" (declared skips)`)
	flag.Parse()
	os.Exit(run(*console, *data, *out, *mode, *kernel, *summary))
}

// maxOutput bounds each failing test's output printed: the end of it says
// what went wrong; the whole log stays in the guest's files.
const maxOutput = 150

func run(consolePath, dataPath, out, mode, kernel, summary string) int {
	con, err := os.ReadFile(consolePath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmhost:", err)
		return 2
	}
	bad := false
	rc, rcOK := vmtest.GuestRC(con)
	if !rcOK {
		fmt.Println("guest gave no exit status: it crashed, hung or timed out (see the console log above)")
		bad = true
	}

	// The clean copy of the test output comes over the data channel; the
	// console's copy, with kernel messages mixed in, is the fallback.
	testLog := con
	if err := os.RemoveAll(out); err != nil {
		fmt.Fprintln(os.Stderr, "vmhost:", err)
		return 2
	}
	f, err := os.Open(dataPath)
	if err == nil {
		tgz, derr := vmtest.Decode(f)
		f.Close()
		err = derr
		if err == nil {
			var files []string
			files, err = vmtest.Extract(tgz, out)
			if err == nil {
				fmt.Printf("guest files (%d) in %s\n", len(files), out)
				if b, rerr := os.ReadFile(filepath.Join(out, "guest.log")); rerr == nil {
					testLog = b
				}
			}
		}
	}
	if err != nil {
		fmt.Printf("files from the guest: %v\n", err)
		bad = true
	}

	s := vmtest.ParseGoTest(bytes.NewReader(testLog))
	for _, r := range s.Results {
		if r.Status == "PASS" || r.Status == "SKIP" {
			continue
		}
		o := r.Output
		fmt.Printf("\n---- output of %s (%s", r.Name, r.Status)
		if len(o) > maxOutput {
			fmt.Printf(", last %d of %d lines", maxOutput, len(o))
			o = o[len(o)-maxOutput:]
		}
		fmt.Println(")")
		for _, l := range o {
			fmt.Println(l)
		}
	}
	declared, undeclared := vmtest.Skips(kernel, s)
	for _, name := range slices.Sorted(maps.Keys(declared)) {
		fmt.Printf("  declared skip on %s: %s: %s\n", kernel, name, declared[name])
	}
	for _, r := range undeclared {
		fmt.Printf("  UNDECLARED SKIP %s: %s (declare it in internal/vmtest/skips.go for %s, or mend it)\n",
			r.Name, vmtest.SkipMessage(r), kernel)
		bad = true
	}
	fmt.Println()
	for _, r := range s.Results {
		if r.Status != "PASS" && r.Status != "SKIP" {
			fmt.Printf("  %-8s %s\n", r.Status, r.Name)
		}
	}
	fmt.Printf("%d passed, %d failed, %d skipped (%d declared)\n", s.Passed, s.Failed, s.Skipped, len(declared))
	if summary != "" {
		line := fmt.Sprintf("%d %d %d %d\n", len(s.Results), s.Passed, s.Failed, s.Skipped)
		if err := os.WriteFile(summary, []byte(line), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "vmhost:", err)
			bad = true
		}
	}
	if rcOK && rc != 0 {
		fmt.Printf("guest %s exited %d\n", mode, rc)
		bad = true
	}
	if s.Passed+s.Failed == 0 {
		fmt.Println("no test results from the guest")
		bad = true
	}
	if bad || s.Failed > 0 {
		return 1
	}
	return 0
}
