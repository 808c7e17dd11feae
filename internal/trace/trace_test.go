package trace

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/klptop/klptop/internal/event"
)

// handMadeEvents are typed here for unit tests of the format only; recordings
// of real kernels live in testdata/.
var handMadeEvents = []event.Event{
	{Time: 10, Type: event.TransitionInit, Patch: "livepatch_sample", Target: 1},
	{Time: 20, Type: event.TaskCheck, PID: 42, Comm: "kworker/0:1", Ret: -98,
		Reason: event.ReasonSleeping, Func: "busymod_work_func",
		Stack: []string{"busymod_work_func+0x20/0x40 [test_klp_callbacks_busy]"}},
	{Time: 30, Type: event.TransitionComplete, Target: 1},
}

func write(t *testing.T, evs []event.Event) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	h := NewHeader()
	h.Kernel = "6.1.0-test"
	w, err := NewWriter(&buf, h)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if err := w.Write(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

func readAll(t *testing.T, r io.Reader) (*Reader, []event.Event, error) {
	t.Helper()
	tr, err := NewReader(r)
	if err != nil {
		return nil, nil, err
	}
	var out []event.Event
	for {
		e, err := tr.Next()
		if err == io.EOF {
			return tr, out, nil
		}
		if err != nil {
			return tr, out, err
		}
		out = append(out, e)
	}
}

func TestRoundTrip(t *testing.T) {
	buf := write(t, handMadeEvents)
	tr, got, err := readAll(t, buf)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Header.Kernel != "6.1.0-test" || tr.Header.Version != "1.11" {
		t.Errorf("header = %+v", tr.Header)
	}
	if len(got) != len(handMadeEvents) {
		t.Fatalf("got %d events, want %d", len(got), len(handMadeEvents))
	}
	if got[1].Func != "busymod_work_func" || got[1].Stack[0] != handMadeEvents[1].Stack[0] || got[1].Ret != -98 {
		t.Errorf("event 2 = %+v", got[1])
	}
	if got[2].Target != 1 {
		t.Errorf("target lost: %+v", got[2])
	}
}

func TestTruncatedLastLine(t *testing.T) {
	buf := write(t, handMadeEvents)
	b := buf.Bytes()
	b = b[:len(b)-15] // a recorder killed mid-line
	tr, got, err := readAll(t, bytes.NewReader(b))
	if err != nil {
		t.Fatalf("truncated trace: %v", err)
	}
	if !tr.Truncated {
		t.Error("Truncated not set")
	}
	if len(got) != 2 {
		t.Errorf("got %d events, want the 2 whole ones", len(got))
	}
}

func TestCorruptLineNamesLineAndOffset(t *testing.T) {
	buf := write(t, handMadeEvents[:1])
	off := buf.Len()
	buf.WriteString("{not json\n")
	buf.WriteString(`{"t":40,"type":"transition_start"}` + "\n")
	_, got, err := readAll(t, buf)
	if err == nil {
		t.Fatal("no error for a corrupt line")
	}
	if want := "line 3 (byte " + strconv.Itoa(off) + ")"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name %q", err, want)
	}
	if len(got) != 1 {
		t.Errorf("events before the corruption: got %d, want 1", len(got))
	}
}

func TestUnknownTypesAndFieldsSkipped(t *testing.T) {
	buf := write(t, nil)
	buf.WriteString(`{"t":1,"type":"from_the_future","x":1}` + "\n")
	buf.WriteString(`{"t":2,"type":"transition_start","new_field":[1,2]}` + "\n")
	tr, got, err := readAll(t, buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Type != event.TransitionStart {
		t.Errorf("got %+v", got)
	}
	if tr.Unknown["from_the_future"] != 1 {
		t.Errorf("unknown not counted: %v", tr.Unknown)
	}
}

func TestHeaderChecks(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		newer    bool
	}{
		{"empty", "", false},
		{"not json", "hello\n", false},
		{"other json", `{"format":"something-else","version":"1.0"}` + "\n", false},
		{"newer major", `{"format":"klptop-trace","version":"2.0"}` + "\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewReader(strings.NewReader(tc.in))
			if err == nil {
				t.Fatal("accepted")
			}
			if errors.Is(err, ErrNewerVersion) != tc.newer {
				t.Errorf("err = %v", err)
			}
		})
	}
	// An older or same major with a newer minor is read.
	if _, err := NewReader(strings.NewReader(`{"format":"klptop-trace","version":"1.7"}` + "\n")); err != nil {
		t.Errorf("1.7 refused: %v", err)
	}
}

// FuzzReader: no input makes the reader panic or loop; errors are errors.
func FuzzReader(f *testing.F) {
	f.Add(write(&testing.T{}, handMadeEvents).Bytes())
	f.Add([]byte(`{"format":"klptop-trace","version":"1.0"}` + "\n{\"t\":1,\"type\":\"task_check\",\"stack\":[\"a\"]}\n{"))
	f.Add([]byte(`{"format":"klptop-trace","version":"1"}` + "\n\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := NewReader(bytes.NewReader(b))
		if err != nil {
			return
		}
		for i := 0; i <= len(b); i++ {
			if _, err := tr.Next(); err != nil {
				return
			}
		}
		t.Fatal("reader returned more events than the input has bytes")
	})
}

func BenchmarkReadEvents(b *testing.B) {
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, NewHeader())
	for i := 0; i < 10000; i++ {
		e := handMadeEvents[i%len(handMadeEvents)]
		e.Time = uint64(i)
		w.Write(e)
	}
	w.Flush()
	data := buf.Bytes()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tr, err := NewReader(bytes.NewReader(data))
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for {
			if _, err := tr.Next(); err != nil {
				break
			}
			n++
		}
		if n != 10000 {
			b.Fatal(n)
		}
	}
	b.ReportMetric(float64(10000*b.N)/b.Elapsed().Seconds(), "events/s")
}
