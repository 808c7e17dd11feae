// Command klptop is top for Linux kernel livepatch: it watches patches and
// their transitions live, records them, and reads recordings back.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/charmbracelet/x/term"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

// exitError carries an exit status and a one-line message to main.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func fail(code int, format string, a ...any) error {
	return &exitError{code: code, msg: fmt.Sprintf(format, a...)}
}

const usage = `klptop: top for Linux kernel livepatch

usage:
  klptop [flags]                         live view (needs root and a livepatch kernel)
  klptop record -o FILE [-- CMD ARGS]    record events until Ctrl-C or until CMD exits
  klptop status [--json]                 patches, transition, pending tasks, function stacks, once
  klptop replay [--speed 1|10|max] FILE  the live view over a recording
  klptop report [--json] FILE            summarize a recording; exit 1 if a transition never completed
  klptop export --format perfetto FILE -o OUT.json
  klptop version

Run 'klptop COMMAND -h' for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd, rest := "live", args
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, rest = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "live":
		err = runLive(rest, stderr)
	case "record":
		err = runRecord(rest, stderr)
	case "status":
		err = runStatus(rest, stdout, stderr)
	case "replay":
		err = runReplay(rest, stdout, stderr)
	case "report":
		err = runReport(rest, stdout, stderr)
	case "export":
		err = runExport(rest, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "klptop", version)
	case "help":
		fmt.Fprint(stdout, usage)
	default:
		err = fail(2, "unknown command %q (see 'klptop help')", cmd)
	}
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintln(stderr, "klptop:", ee.msg)
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "klptop:", oneLine(err.Error()))
	return 1
}

// oneLine keeps a wrapped error chain (which may quote a verifier log) to one line.
func oneLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// quiet makes a bad flag cost one line: the flag package prints the error
// and the whole usage to the flag set's output on any parse error; here
// only -h prints the usage, and the error goes back to the caller.
func quiet(fs *flag.FlagSet, args []string) {
	out := fs.Output()
	usage := fs.Usage
	if usage == nil {
		usage = func() { fmt.Fprintf(out, "Usage of %s:\n", fs.Name()); fs.PrintDefaults() }
	}
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		if !slices.ContainsFunc(args, func(a string) bool {
			return a == "-h" || a == "--h" || a == "-help" || a == "--help"
		}) {
			return
		}
		fs.SetOutput(out)
		usage()
		fs.SetOutput(io.Discard)
	}
}

// usageError is a command line klptop cannot take: what was wrong, if the
// flag package said, and the usage line.
func usageError(err error, usage string) error {
	if err != nil {
		return fail(2, "%v; %s", err, usage)
	}
	return fail(2, "%s", usage)
}

// needTerminal fails as the TUI would, before it starts: bubbletea reads
// keys from stdin when it is a terminal (a serial console without a
// controlling terminal, say), else from /dev/tty.
func needTerminal() error {
	if term.IsTerminal(os.Stdin.Fd()) {
		return nil
	}
	f, err := os.Open("/dev/tty")
	if err != nil {
		return errors.Unwrap(err)
	}
	return f.Close()
}
