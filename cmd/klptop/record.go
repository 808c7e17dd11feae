package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/poll"
	"github.com/klptop/klptop/internal/trace"
)

// flushEvery bounds what a killed recorder loses.
const flushEvery = 100 * time.Millisecond

// drainAfter: events of the last moments of COMMAND may still sit in the ring
// buffer when it exits.
const drainAfter = 300 * time.Millisecond

func runRecord(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("record", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "", "write the trace to `FILE` (required)")
	backend := fs.String("backend", "auto", backendHelp)
	interval := fs.Duration("poll-interval", poll.DefaultInterval, "with the poll backend, how often to read sysfs and /proc")
	var ring ringSize
	fs.Var(&ring, "ring-size", ringHelp)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: klptop record -o FILE [--backend B] [--poll-interval D] [--ring-size N] [-- COMMAND ARGS]")
		fs.PrintDefaults()
	}
	quiet(fs, args)
	if err := fs.Parse(args); err != nil {
		return fail(2, "record: %v", err)
	}
	if *out == "" {
		return fail(2, "record: -o FILE is required")
	}
	command := fs.Args()

	sess, err := openSource(*backend, *interval, ring, func(w string) { fmt.Fprintln(os.Stderr, "klptop: "+w) })
	if err != nil {
		return err
	}
	defer sess.Close()
	startNotes, degraded := sourceNotes(sess)
	if degraded != "" {
		startNotes = append([]string{degraded}, startNotes...)
	}
	for _, n := range startNotes {
		fmt.Fprintln(stderr, "klptop:", n)
	}

	f, err := os.Create(*out)
	if err != nil {
		return fmt.Errorf("record: %w", err)
	}
	defer f.Close()
	w, err := trace.NewWriter(f, sourceHeader(sess, command))
	if err != nil {
		return fmt.Errorf("record: %w", err)
	}

	snap, err := sess.Snapshot()
	if err != nil {
		fmt.Fprintln(stderr, "klptop: snapshot:", oneLine(err.Error()))
	}
	for _, e := range snap {
		w.Write(e)
	}
	w.Flush()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	readErr := make(chan error, 1)
	flushWhenDrained(ctx, sess, w)
	go func() { readErr <- sess.Read(ctx, func(e event.Event) { w.Write(e) }) }()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	status := 0
	if len(command) > 0 {
		c := exec.Command(command[0], command[1:]...)
		c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, stderr
		if err := c.Start(); err != nil {
			cancel()
			finish(w, sess, readErr, stderr, *out)
			return fail(127, "record: %v", err)
		}
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		var werr error
	wait:
		for {
			select {
			case werr = <-done:
				break wait
			case s := <-sigs:
				// The terminal's Ctrl-C reaches COMMAND too; forward SIGTERM.
				if s == syscall.SIGTERM {
					c.Process.Signal(s)
				}
			case err := <-readErr:
				readErr <- err
				c.Process.Signal(syscall.SIGTERM)
			}
		}
		status = exitStatus(werr)
		time.Sleep(drainAfter)
	} else {
		select {
		case <-sigs:
		case err := <-readErr:
			readErr <- err
		}
	}
	cancel()
	if err := finish(w, sess, readErr, stderr, *out); err != nil {
		return err
	}
	if status != 0 {
		return fail(status, "")
	}
	return nil
}

// flushWhenDrained flushes w each time the BPF reader has read the ring
// empty, on its goroutine: a timer of klptop's could fire during a sweep.
// The poller, which wakes on a timer anyway, flushes every flushEvery.
func flushWhenDrained(ctx context.Context, sess source, w *trace.Writer) {
	if d, ok := sess.(interface{ OnDrained(func()) }); ok {
		d.OnDrained(func() { w.Flush() })
		return
	}
	go func() {
		t := time.NewTicker(flushEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				w.Flush()
			}
		}
	}()
}

// readerStopWait is how long the reader may take to stop: to drain the ring
// buffer and finish a function stack read under way (probes.stopWait).
const readerStopWait = 20 * time.Second

// finish stops the reader and flushes everything it delivered.
func finish(w *trace.Writer, sess interface{ Close() error }, readErr chan error, stderr io.Writer, out string) error {
	// The context is cancelled: the reader drains the ring buffer and
	// returns. Closing the session first would cut the drain short.
	var rerr error
	select {
	case rerr = <-readErr:
	case <-time.After(readerStopWait):
		rerr = errors.New("probe reader did not stop")
		// A bug of klptop's: where every goroutine was, for the report.
		_ = pprof.Lookup("goroutine").WriteTo(stderr, 1)
	}
	sess.Close()
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "klptop: recorded %d events to %s\n", w.Count(), out)
	if rerr != nil && !errors.Is(rerr, context.Canceled) {
		return fmt.Errorf("record: %w", rerr)
	}
	return nil
}

func exitStatus(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return 1
}
