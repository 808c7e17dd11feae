package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/klptop/klptop/internal/export"
)

const exportUsage = "usage: klptop export --format perfetto FILE [-o OUT.json] (- for stdin/stdout)"

// runExport converts a recording for other tools; Perfetto opens the
// result (ui.perfetto.dev, "Open trace file").
func runExport(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("export", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, exportUsage); fs.PrintDefaults() }
	format := fs.String("format", "perfetto", "output format: perfetto (Chrome trace-event JSON)")
	out := fs.String("o", "-", "output file")
	quiet(fs, args)
	files, err := parseFlagsAnyOrder(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil || len(files) != 1 {
		return usageError(err, exportUsage)
	}
	if *format != "perfetto" {
		return fail(2, "export: unknown format %q (known: perfetto)", *format)
	}
	in, name, closeIn, err := openTraceArg(files[0])
	if err != nil {
		return fail(1, "export: %v", err)
	}
	defer closeIn()

	w, commit, err := createExportOutput(*out, stdout)
	if err != nil {
		return fail(1, "export: %v", err)
	}
	st, runErr := export.Perfetto(in, w)
	if st.Truncated {
		fmt.Fprintf(stderr, "klptop: %s: warning: trace ends in a partial line (recorder killed?): exported up to it\n", name)
	}
	if st.Lost > 0 {
		fmt.Fprintf(stderr, "klptop: %s: warning: the kernel dropped %d events while recording\n", name, st.Lost)
	}
	for _, t := range slices.Sorted(maps.Keys(st.Unknown)) {
		fmt.Fprintf(stderr, "klptop: %s: warning: skipped %d events of type %q unknown to this klptop\n", name, st.Unknown[t], t)
	}
	// Output of a corrupt trace is still valid JSON up to the bad line:
	// kept, but the exit status says it is partial.
	if err := commit(); err != nil && runErr == nil {
		runErr = err
	}
	if runErr != nil {
		return fail(1, "export %s: %v", name, runErr)
	}
	return nil
}

// createExportOutput writes to a temporary file renamed into place at commit, so
// that a failed export never leaves a half-written OUT.json behind.
func createExportOutput(path string, stdout io.Writer) (io.Writer, func() error, error) {
	if path == "-" {
		return stdout, func() error { return nil }, nil
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return nil, nil, err
	}
	return f, func() error {
		err := f.Close()
		if err == nil {
			err = os.Rename(f.Name(), path)
		}
		if err != nil {
			os.Remove(f.Name())
		}
		return err
	}, nil
}
