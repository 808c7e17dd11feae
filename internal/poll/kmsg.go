package poll

import (
	"errors"
	"os"
	"regexp"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// OpenKmsg follows the kernel log from now on: the returned function gives
// the messages logged since its previous call. A poll that sees a patch's
// "enabled" flip mid-transition cannot tell a reverse from a completion
// followed at once by a new transition; the kernel's "'<patch>': patching
// complete" line can (a reverse is logged only by pr_debug).
func OpenKmsg(path string) (func() []string, func() error, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	if _, err := unix.Seek(fd, 0, 2); err != nil { // SEEK_END: from now on
		unix.Close(fd)
		return nil, nil, &os.PathError{Op: "seek", Path: path, Err: err}
	}
	buf := make([]byte, 8192)
	var mu sync.Mutex
	read := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for fd >= 0 {
			n, err := unix.Read(fd, buf)
			if errors.Is(err, unix.EPIPE) {
				continue // overwritten before we read it: go on with the next
			}
			if err != nil || n <= 0 {
				return out
			}
			// "pri,seq,usec,flags;message\n" then continuation lines.
			rec := string(buf[:n])
			if _, msg, ok := strings.Cut(rec, ";"); ok {
				msg, _, _ = strings.Cut(msg, "\n")
				out = append(out, msg)
			}
		}
		return out
	}
	closeFn := func() error {
		mu.Lock()
		defer mu.Unlock()
		if fd < 0 {
			return nil
		}
		err := unix.Close(fd)
		fd = -1
		return err
	}
	return read, closeFn, nil
}

var completeRE = regexp.MustCompile(`^livepatch: '([^']+)': (patching|unpatching) complete$`)

// completions are the transitions the log says completed, "patch/direction".
func completions(msgs []string) map[string]bool {
	out := map[string]bool{}
	for _, m := range msgs {
		if s := completeRE.FindStringSubmatch(strings.TrimSpace(m)); s != nil {
			out[s[1]+"/"+s[2]] = true
		}
	}
	return out
}

func dirName(target int) string {
	if target == 0 {
		return "unpatching"
	}
	return "patching"
}
