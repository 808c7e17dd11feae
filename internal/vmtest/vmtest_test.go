package vmtest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func tgz(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

// channel frames b as the guest's init does, with base64 wrapped at 76
// columns and CRLF line ends as a serial line may deliver them.
func channel(b []byte, size int) string {
	enc := base64.StdEncoding.EncodeToString(b)
	var s strings.Builder
	fmt.Fprintf(&s, "noise before\r\n@@KLPTOP-DATA-BEGIN %d %x@@\r\n", size, sha256.Sum256(b))
	for len(enc) > 76 {
		s.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	s.WriteString(enc + "\r\n@@KLPTOP-DATA-END@@\r\n")
	return s.String()
}

func TestDecodeExtract(t *testing.T) {
	want := map[string]string{"./guest.log": "--- PASS: TestX (0.00s)\n", "./traces/a.ndjson": strings.Repeat("{}\n", 1000)}
	b := tgz(t, want)
	got, err := Decode(strings.NewReader(channel(b, len(b))))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files, err := Extract(got, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 || files[0] != "guest.log" || files[1] != "traces/a.ndjson" {
		t.Fatalf("files = %q", files)
	}
	body, _ := os.ReadFile(filepath.Join(dir, "traces/a.ndjson"))
	if string(body) != want["./traces/a.ndjson"] {
		t.Errorf("content differs")
	}
}

func TestDecodeRejectsDamage(t *testing.T) {
	b := tgz(t, map[string]string{"x": "y"})
	if _, err := Decode(strings.NewReader(channel(b, len(b)+1))); err == nil {
		t.Error("wrong size accepted")
	}
	s := channel(b, len(b))
	cut := s[:strings.Index(s, "@@KLPTOP-DATA-END")]
	if _, err := Decode(strings.NewReader(cut)); err != ErrNoData {
		t.Errorf("cut channel: err = %v, want ErrNoData", err)
	}
	// A character changed on the line must not pass the checksum.
	lines := strings.Split(s, "\r\n")
	c := byte('A')
	if lines[2][0] == c {
		c = 'B'
	}
	lines[2] = string(c) + lines[2][1:]
	if _, err := Decode(strings.NewReader(strings.Join(lines, "\r\n"))); err == nil {
		t.Error("damaged data accepted")
	}
}

func TestExtractStaysInDir(t *testing.T) {
	b := tgz(t, map[string]string{"../evil": "x", "ok": "y"})
	dir := t.TempDir()
	files, err := Extract(b, filepath.Join(dir, "out"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 || files[0] != "ok" {
		t.Errorf("files = %q", files)
	}
	if _, err := os.Stat(filepath.Join(dir, "evil")); err == nil {
		t.Error("wrote outside the directory")
	}
}

func TestGuestRC(t *testing.T) {
	for in, want := range map[string]int{
		"x\r\n@@KLPTOP-GUEST-RC=0@@ uptime 5s\r\n": 0,
		"@@KLPTOP-GUEST-RC=3@@":                    3,
	} {
		rc, ok := GuestRC([]byte(in))
		if !ok || rc != want {
			t.Errorf("GuestRC(%q) = %d, %v", in, rc, ok)
		}
	}
	if _, ok := GuestRC([]byte("[ 2.2] Kernel panic")); ok {
		t.Error("found a status in a panic")
	}
}

func TestParseGoTest(t *testing.T) {
	out := `=== RUN   TestA
--- PASS: TestA (0.01s)
=== RUN   TestB
=== RUN   TestB/one
=== RUN   TestB/two
    --- PASS: TestB/one (0.00s)
    --- FAIL: TestB/two (0.00s)
--- FAIL: TestB (0.00s)
=== RUN   TestC
--- SKIP: TestC (0.00s)
=== RUN   TestD
panic: test timed out after 1m0s
`
	s := ParseGoTest(strings.NewReader(out))
	if s.Passed != 2 || s.Failed != 2 || s.Skipped != 1 {
		t.Errorf("got %d passed %d failed %d skipped: %+v", s.Passed, s.Failed, s.Skipped, s.Results)
	}
	if r := s.Results[len(s.Results)-1]; r.Name != "TestD" || r.Status != "NORESULT" {
		t.Errorf("last result %+v, want TestD NORESULT", r)
	}
}

// With -test.count, every run counts: a failure in one is not hidden by a
// pass in the next, and each failure keeps its own output.
func TestParseGoTestCount(t *testing.T) {
	out := `=== RUN   TestS
    f_test.go:10: pid 348 sleeping
--- PASS: TestS (1.00s)
=== RUN   TestS
    f_test.go:10: pid 348 running
    f_test.go:12: want sleeping
--- FAIL: TestS (1.00s)
=== RUN   TestS
=== RUN   TestS/sub
=== NAME  TestS
    f_test.go:20: parent line
    --- PASS: TestS/sub (0.00s)
--- PASS: TestS (1.00s)
=== RUN   TestK
    k_test.go:3: no module foo
--- SKIP: TestK (0.00s)
`
	s := ParseGoTest(strings.NewReader(out))
	if s.Passed != 2 || s.Failed != 1 || s.Skipped != 1 || len(s.Results) != 4 {
		t.Fatalf("got %d passed %d failed %d skipped: %+v", s.Passed, s.Failed, s.Skipped, s.Results)
	}
	f := s.Results[1]
	if f.Name != "TestS" || f.Status != "FAIL" || len(f.Output) != 4 || f.Output[2] != "    f_test.go:12: want sleeping" {
		t.Errorf("failed run %+v", f)
	}
	if r := s.Results[2]; r.Name != "TestS/sub" || r.Status != "PASS" {
		t.Errorf("third result %+v", r)
	}
	k := s.Results[3]
	if got := SkipMessage(k); got != "k_test.go:3: no module foo" {
		t.Errorf("skip message %q", got)
	}
	DeclaredSkips["test-kernel"] = map[string]string{"TestK": "no module foo here"}
	defer delete(DeclaredSkips, "test-kernel")
	if d, u := Skips("test-kernel", s); len(u) != 0 || d["TestK"] != "no module foo here" {
		t.Errorf("declared %v undeclared %v", d, u)
	}
	if d, u := Skips("6.12", s); len(d) != 0 || len(u) != 1 || u[0].Name != "TestK" {
		t.Errorf("6.12: declared %v undeclared %v", d, u)
	}
}
