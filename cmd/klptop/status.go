package main

import (
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/klptop/klptop/internal/event"

	"github.com/klptop/klptop/internal/probes"
	"github.com/klptop/klptop/internal/state"
	"github.com/klptop/klptop/internal/status"
)

// runStatus prints the picture once. It loads only the BPF iterators and
// attaches no probe: quick, and nothing to perturb; pending tasks' reasons
// therefore come from their stacks (see internal/status), read again for a
// task caught running or without a stack.
func runStatus(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: klptop status [--json]")
		fs.PrintDefaults()
	}
	quiet(fs, args)
	if err := fs.Parse(args); err != nil {
		return fail(2, "status: %v", err)
	}
	if fs.NArg() > 0 {
		return fail(2, "status: unexpected argument %q", fs.Arg(0))
	}
	sess, err := probes.OpenIterators()
	if err != nil {
		return openError(err)
	}
	defer sess.Close()
	snap, err := sess.Snapshot()
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	st := state.New()
	for _, e := range snap {
		st.Apply(e)
	}
	s := status.Build(st, sess.Info().Kernel, sess.FuncStacksWhy())
	if s.Transition != nil {
		target := s.Transition.Target
		err := s.Settle(func() ([]event.Event, error) { return sess.TaskSnapshots(target) },
			10*time.Millisecond, 50*time.Millisecond, 200*time.Millisecond)
		if err != nil {
			return fmt.Errorf("status: %w", err)
		}
	}
	if *asJSON {
		return s.JSON(stdout)
	}
	return s.Text(stdout)
}
