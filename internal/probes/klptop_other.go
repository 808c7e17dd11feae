//go:build !386 && !amd64

package probes

import (
	"fmt"
	"runtime"

	"github.com/cilium/ebpf"
)

// The BPF object reads x86-64 registers (struct pt_regs) and errnos; other
// architectures build klptop but cannot probe.
func loadKlptop() (*ebpf.CollectionSpec, error) {
	return nil, fmt.Errorf("%w: no BPF object for %s", ErrNoBPF, runtime.GOARCH)
}
