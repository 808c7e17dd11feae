package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/klptop/klptop/internal/report"
)

const reportUsage = "usage: klptop report [--json] [--max-blockers N] FILE (- for stdin)"

// runReport prints what happened in a recording. It exits 1 when the trace
// holds a transition that never finished, so that scripts and CI can act.
func runReport(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, reportUsage); fs.PrintDefaults() }
	var opts report.Options
	fs.BoolVar(&opts.JSON, "json", false, "write JSON instead of text")
	fs.IntVar(&opts.MaxBlockers, "max-blockers", 10, "blocking tasks listed per stall in text (JSON lists all)")
	quiet(fs, args)
	files, err := parseFlagsAnyOrder(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil || len(files) != 1 {
		return usageError(err, reportUsage)
	}
	in, name, closeIn, err := openTraceArg(files[0])
	if err != nil {
		return fail(1, "report: %v", err)
	}
	defer closeIn()
	sum, err := report.Run(in, stdout, opts)
	for _, w := range sum.Warnings() {
		fmt.Fprintf(stderr, "klptop: %s: warning: %s\n", name, w)
	}
	if err != nil {
		return fail(1, "report %s: %v", name, err)
	}
	if sum.Unfinished > 0 {
		return fail(1, "%s: %d transition(s) never finished", name, sum.Unfinished)
	}
	return nil
}

// parseFlagsAnyOrder lets flags come after the file too ("report t.jsonl
// --json"), as people type them.
func parseFlagsAnyOrder(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func openTraceArg(path string) (io.Reader, string, func(), error) {
	if path == "-" {
		return os.Stdin, "stdin", func() {}, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, path, nil, err
	}
	return f, path, func() { f.Close() }, nil
}
