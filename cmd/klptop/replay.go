package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/klptop/klptop/internal/ui"
)

const replayUsage = "usage: klptop replay [--speed 1|10|max] [--paused] FILE"

// runReplay shows a recording in the live view, with playback keys. A
// corrupt trace is a one-line error and exit status 1, whether found before
// the screen opens or while playing (then once the user quits).
func runReplay(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, replayUsage)
		fs.PrintDefaults()
		fmt.Fprintln(stderr, "\nkeys: space play/pause, n or . step one event, ] [ next/previous transition,\n"+
			"s next stall, + - or 1 2 3 speed, ? help, q quit")
	}
	speedFlag := fs.String("speed", "1", "playback speed: 1 (as recorded), 10, or max (as fast as it reads)")
	paused := fs.Bool("paused", false, "start paused at the beginning; step with n")
	quiet(fs, args)
	files, err := parseFlagsAnyOrder(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil || len(files) != 1 {
		return usageError(err, replayUsage)
	}
	speed, err := ui.ParseSpeed(*speedFlag)
	if err != nil {
		return fail(2, "replay: %v", err)
	}
	path := files[0]
	if path == "-" {
		// Seeking back re-reads the file from the start.
		return fail(2, "replay: needs a file, not stdin: seeking back re-reads it")
	}
	r, err := ui.OpenReplay(path, ui.ReplayOptions{Speed: speed, Paused: *paused})
	if err != nil {
		return fail(1, "replay %v", err)
	}
	defer r.Close()

	h := r.Header()
	title := "replay: " + filepath.Base(path)
	if h.Host != "" || h.Kernel != "" {
		title += "  " + strings.TrimSpace(h.Host+" "+h.Kernel)
	}
	var opts ui.Options
	opts.Title = title
	if h.StartWall != "" {
		opts.Notes = append(opts.Notes, "recorded "+h.StartWall+" by klptop "+h.Klptop)
	}
	opts.Degraded = replayDegraded(h)
	if opts.Degraded != "" {
		opts.Notes = append(opts.Notes, pollNote(time.Duration(h.PollIntervalNs)))
	} else if len(h.Missing) > 0 {
		var m []string
		for _, x := range h.Missing {
			m = append(m, x.Symbol+" ("+x.Why+")")
		}
		opts.Notes = append(opts.Notes, "not observable in this recording: "+strings.Join(m, ", "))
	}

	if err := needTerminal(); err != nil {
		return fail(2, "replay needs a terminal (%v); 'klptop report %s' summarizes a recording without one", err, path)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	if err := ui.RunReplay(ctx, r, opts, stdout); err != nil {
		return fail(1, "replay %v", oneLine(err.Error()))
	}
	return nil
}
