package vmtest

import "strings"

// DeclaredSkips are the only guest tests allowed to skip, per kernel
// (KERNEL of vm/vm.sh: 6.1, 6.12, 7.x), each with the reason. Any other skip
// fails the run: a missing module, BTF or kernel feature is a broken guest
// or a klptop bug until it is declared here.
var DeclaredSkips = map[string]map[string]string{
	"6.1":  {},
	"6.12": {},
	"7.x":  {},
}

// Skips sorts a run's skipped tests into those declared for kernel, with
// their reasons, and the rest.
func Skips(kernel string, s Summary) (declared map[string]string, undeclared []Result) {
	declared = map[string]string{}
	for _, r := range s.Results {
		if r.Status != "SKIP" {
			continue
		}
		if why, ok := DeclaredSkips[kernel][r.Name]; ok {
			declared[r.Name] = why
		} else {
			undeclared = append(undeclared, r)
		}
	}
	return declared, undeclared
}

// SkipMessage is what a skipped test said last: its t.Skip reason.
func SkipMessage(r Result) string {
	for i := len(r.Output) - 1; i >= 0; i-- {
		l := strings.TrimSpace(r.Output[i])
		if l != "" && !strings.HasPrefix(l, "--- ") && !strings.HasPrefix(l, "=== ") {
			return l
		}
	}
	return ""
}
