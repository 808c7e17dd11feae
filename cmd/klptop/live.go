package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/klptop/klptop/internal/event"
	"github.com/klptop/klptop/internal/poll"
	"github.com/klptop/klptop/internal/trace"
	"github.com/klptop/klptop/internal/ui"
)

func runLive(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("klptop", flag.ContinueOnError)
	fs.SetOutput(stderr)
	backend := fs.String("backend", "auto", backendHelp)
	interval := fs.Duration("poll-interval", poll.DefaultInterval, "with the poll backend, how often to read sysfs and /proc")
	out := fs.String("o", "", "also record everything shown to `FILE`")
	var ring ringSize
	fs.Var(&ring, "ring-size", ringHelp)
	quiet(fs, args)
	if err := fs.Parse(args); err != nil {
		return fail(2, "%v", err)
	}
	if fs.NArg() > 0 {
		return fail(2, "unknown command %q (see 'klptop help')", fs.Arg(0))
	}
	sess, err := openSource(*backend, *interval, ring, nil)
	if err != nil {
		return err
	}
	defer sess.Close()
	info := sess.Info()
	startNotes, degraded := sourceNotes(sess)

	var w *trace.Writer
	if *out != "" {
		f, err := os.Create(*out)
		if err != nil {
			return err
		}
		defer f.Close()
		if w, err = trace.NewWriter(f, sourceHeader(sess, nil)); err != nil {
			return err
		}
		defer w.Flush()
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan event.Event, 4096)
	emit := func(e event.Event) {
		if w != nil {
			w.Write(e)
		}
		select {
		case events <- e:
		case <-ctx.Done():
		}
	}
	if w != nil {
		flushWhenDrained(ctx, sess, w)
	}
	go func() {
		defer close(events)
		snap, err := sess.Snapshot()
		if err != nil {
			fmt.Fprintln(stderr, "klptop: snapshot:", oneLine(err.Error()))
		}
		for _, e := range snap {
			emit(e)
		}
		sess.Read(ctx, emit)
	}()

	if err := needTerminal(); err != nil {
		return fail(2, "the live view needs a terminal (%v); 'klptop record -o FILE' records without one", err)
	}
	title := "live"
	if h, err := os.Hostname(); err == nil {
		title += ": " + h
	}
	return ui.Run(ctx, events, ui.Options{Title: title + " " + header(info, nil).Kernel, Notes: startNotes, Degraded: degraded})
}
