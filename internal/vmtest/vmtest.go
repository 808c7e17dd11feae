// Package vmtest is the host side of klptop's guest tests: it reads what came
// back from the qemu guest that vm/vm.sh boots. The guest has two serial
// ports: ttyS0 is the console (kernel messages and the guest's output mixed
// together, CRLF line ends), ttyS1 carries only the files the guest hands back,
// as one base64 tar.gz between markers.
package vmtest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Markers the guest's init prints (vm/guest/init).
const (
	dataBegin = "@@KLPTOP-DATA-BEGIN "
	dataEnd   = "@@KLPTOP-DATA-END@@"
	rcMarker  = "@@KLPTOP-GUEST-RC="
)

// GuestRC finds the exit status the guest reported on its console. ok is
// false when there is none: the guest crashed, hung or was killed.
func GuestRC(console []byte) (rc int, ok bool) {
	i := bytes.LastIndex(console, []byte(rcMarker))
	if i < 0 {
		return 0, false
	}
	rest := console[i+len(rcMarker):]
	j := bytes.Index(rest, []byte("@@"))
	if j < 0 {
		return 0, false
	}
	rc, err := strconv.Atoi(string(rest[:j]))
	return rc, err == nil
}

// ErrNoData means the data channel holds no complete copy: the guest died
// before handing its files back, or never tried.
var ErrNoData = errors.New("no files from the guest")

// Decode returns the tar.gz the guest sent on its data channel, checked
// against the size and sha256 the guest announced.
func Decode(r io.Reader) ([]byte, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var (
		in      bool
		size    int
		sum     string
		encoded strings.Builder
		found   []byte
	)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		switch {
		case strings.HasPrefix(line, dataBegin):
			f := strings.Fields(strings.TrimSuffix(strings.TrimPrefix(line, dataBegin), "@@"))
			if len(f) != 2 {
				return nil, fmt.Errorf("bad data header %q", line)
			}
			n, err := strconv.Atoi(f[0])
			if err != nil {
				return nil, fmt.Errorf("bad data header %q", line)
			}
			in, size, sum = true, n, f[1]
			encoded.Reset()
		case line == dataEnd && in:
			in = false
			b, err := base64.StdEncoding.DecodeString(encoded.String())
			if err != nil {
				return nil, fmt.Errorf("data channel: %v", err)
			}
			h := sha256.Sum256(b)
			if len(b) != size || hex.EncodeToString(h[:]) != sum {
				return nil, fmt.Errorf("data channel: got %d bytes sha256 %x, guest sent %d bytes sha256 %s", len(b), h[:8], size, sum)
			}
			// A later copy wins: a guest may hand files back more than once.
			found = b
		case in:
			encoded.WriteString(line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if found == nil {
		return nil, ErrNoData
	}
	return found, nil
}

// Extract unpacks the guest's tar.gz into dir and returns the files' paths
// relative to dir.
func Extract(tgz []byte, dir string) ([]string, error) {
	zr, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		return nil, err
	}
	tr := tar.NewReader(zr)
	var files []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return files, err
		}
		name := filepath.Clean(h.Name)
		if name == "." || filepath.IsAbs(name) || strings.HasPrefix(name, "..") {
			continue
		}
		p := filepath.Join(dir, name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return files, err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return files, err
			}
			f, err := os.Create(p)
			if err != nil {
				return files, err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return files, err
			}
			files = append(files, name)
		}
	}
	sort.Strings(files)
	return files, nil
}

// Result of one run of a test, as `go test -v` reports it.
type Result struct {
	Name   string
	Status string // PASS, FAIL, SKIP, or NORESULT: started, never finished
	// Output is what the run printed, its subtests' lines included, from
	// its "=== RUN" line to its result line.
	Output []string
}

// Summary counts leaf tests only: a parent fails when a subtest does, and
// counting both would count one failure twice. Each run of a test counts
// (-test.count=N runs it N times).
type Summary struct {
	Results                 []Result
	Passed, Failed, Skipped int
}

var (
	runRE    = regexp.MustCompile(`^=== RUN\s+(\S+)`)
	resultRE = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): (\S+)`)
)

// ParseGoTest reads `go test -v` output (or anything printing the same
// "=== RUN" / "--- PASS:" lines, as vm/guest/selftests.sh does).
func ParseGoTest(r io.Reader) Summary {
	var (
		runs []*Result
		open = map[string]*Result{} // the run of each name not yet ended
		all  []string
	)
	start := map[*Result]int{}
	parent := map[*Result]bool{} // runs in which a subtest ran
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		all = append(all, line)
		if m := runRE.FindStringSubmatch(line); m != nil {
			if open[m[1]] == nil {
				res := &Result{Name: m[1], Status: "NORESULT"}
				runs, open[m[1]] = append(runs, res), res
				start[res] = len(all) - 1
				if i := strings.LastIndexByte(m[1], '/'); i > 0 && open[m[1][:i]] != nil {
					parent[open[m[1][:i]]] = true
				}
			}
		} else if m := resultRE.FindStringSubmatch(line); m != nil {
			res := open[m[2]]
			if res == nil {
				res = &Result{Name: m[2]}
				runs = append(runs, res)
				start[res] = len(all) - 1
			}
			res.Status = m[1]
			res.Output = all[start[res]:len(all):len(all)]
			delete(open, m[2])
		}
	}
	for _, res := range open {
		res.Output = all[start[res]:len(all):len(all)]
	}
	var s Summary
	for _, res := range runs {
		if parent[res] {
			continue
		}
		s.Results = append(s.Results, *res)
		switch res.Status {
		case "PASS":
			s.Passed++
		case "SKIP":
			s.Skipped++
		default:
			s.Failed++
		}
	}
	return s
}
