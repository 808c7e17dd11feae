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

// Result of one test, as `go test -v` reports it.
type Result struct {
	Name   string
	Status string // PASS, FAIL, SKIP, or NORESULT: started, never finished
}

// Summary counts leaf tests only: a parent fails when a subtest does, and
// counting both would count one failure twice.
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
	var order []string
	status := map[string]string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if m := runRE.FindStringSubmatch(line); m != nil {
			if _, seen := status[m[1]]; !seen {
				order = append(order, m[1])
				status[m[1]] = "NORESULT"
			}
		} else if m := resultRE.FindStringSubmatch(line); m != nil {
			if _, seen := status[m[2]]; !seen {
				order = append(order, m[2])
			}
			status[m[2]] = m[1]
		}
	}
	var s Summary
	for _, name := range order {
		parent := false
		for _, other := range order {
			if strings.HasPrefix(other, name+"/") {
				parent = true
				break
			}
		}
		if parent {
			continue
		}
		st := status[name]
		s.Results = append(s.Results, Result{Name: name, Status: st})
		switch st {
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
