package report

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klptop/klptop/internal/state"
	"github.com/klptop/klptop/internal/trace"
)

func genBytes(tb testing.TB, size int64) ([]byte, int64) {
	g := newGenTrace(size)
	data, err := io.ReadAll(g)
	if err != nil {
		tb.Fatal(err)
	}
	return data, g.events
}

func TestGenTraceIsReadable(t *testing.T) {
	data, n := genBytes(t, 2<<20)
	var out bytes.Buffer
	sum, err := Run(bytes.NewReader(data), &out, Options{})
	if err != nil || ExitStatus(sum, err) != 0 {
		t.Fatalf("err %v summary %+v", err, sum)
	}
	if int64(sum.Events) != n || sum.Transitions < 10 || sum.Stalls == 0 || sum.Outcomes["complete"] != sum.Transitions {
		t.Fatalf("summary %+v, generated %d events", sum, n)
	}
}

// BenchmarkReadFold: read and fold into the state, the path every
// consumer of a trace (replay, report, export) takes.
func BenchmarkReadFold(b *testing.B) {
	data, n := genBytes(b, 32<<20)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		tr, err := trace.NewReader(bytes.NewReader(data))
		if err != nil {
			b.Fatal(err)
		}
		s := state.New()
		for {
			e, err := tr.Next()
			if err != nil {
				break
			}
			s.Apply(e)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkReport: the whole report, blockers and text output included.
func BenchmarkReport(b *testing.B) {
	data, n := genBytes(b, 32<<20)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Run(bytes.NewReader(data), io.Discard, Options{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// heapWatch samples the heap while a report runs: the peak of HeapInuse is
// what streaming must keep flat.
func heapWatch() (stop func() uint64) {
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return func() uint64 { close(done); wg.Wait(); return peak.Load() }
}

// vmHWM is the process's peak resident set, from /proc/self/status.
func vmHWM() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

const maxHeap = 64 << 20

func TestReportHeapFlat(t *testing.T) {
	size := int64(128 << 20)
	if testing.Short() {
		size = 16 << 20
	}
	// 1,000 new pids per transition: a state that kept every task it saw
	// would hold hundreds of thousands by the end.
	g := newGenTrace(size)
	g.churn = 1000
	stop := heapWatch()
	sum, err := Run(g, io.Discard, Options{JSON: true})
	peak := stop()
	if err != nil {
		t.Fatal(err)
	}
	if sum.Transitions < 100 || g.pid-g.tasks < 100*g.churn {
		t.Fatalf("%d transitions, %d pids forked: too few to show growth", sum.Transitions, g.pid-g.tasks)
	}
	t.Logf("%d events, %d transitions, %d pids forked, peak heap in use %.1f MiB",
		sum.Events, sum.Transitions, g.pid-g.tasks, float64(peak)/(1<<20))
	if peak > maxHeap {
		t.Fatalf("peak heap %d MiB streaming %d MiB of trace", peak>>20, size>>20)
	}
}

// resetHWM returns what earlier benchmarks left to the OS and resets the
// process's peak RSS ("5" to clear_refs, Linux 4.0+), so that VmHWM
// measures what follows alone.
func resetHWM() {
	runtime.GC()
	debug.FreeOSMemory()
	os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// BenchmarkReport1GB streams a 1 GiB trace, made on the fly, through the
// report; it reports the peak heap and the process's peak RSS (VmHWM).
func BenchmarkReport1GB(b *testing.B) {
	for b.Loop() {
		resetHWM()
		g := newGenTrace(1 << 30)
		stop := heapWatch()
		start := time.Now()
		sum, err := Run(g, io.Discard, Options{})
		peak := stop()
		if err != nil {
			b.Fatal(err)
		}
		rss := vmHWM()
		b.ReportMetric(float64(peak)/(1<<20), "MiB-heap-peak")
		b.ReportMetric(float64(rss)/(1<<20), "MiB-RSS-peak")
		b.ReportMetric(float64(sum.Events)/time.Since(start).Seconds(), "events/s")
		if peak > maxHeap {
			b.Fatalf("peak heap %d MiB", peak>>20)
		}
		// The goal is about the process: RSS, not only the Go heap.
		if rss > maxHeap {
			b.Fatalf("peak RSS %d MiB", rss>>20)
		}
	}
}

// patchEnables is a hand-made trace of n patch_enable lines, each a new
// patch: a stack that only grows, as on a host that loaded a patch per
// release and never removed one.
func patchEnables(n int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"format":"klptop-trace","version":"1.7","klptop":"bench","kernel":"6.1.0-56-amd64","clock":"CLOCK_MONOTONIC","start_mono_ns":1}` + "\n")
	for i := range n {
		fmt.Fprintf(&b, `{"t":%d,"type":"patch_enable","patch":"livepatch_%d"}`+"\n", 2+i, i)
	}
	return b.Bytes()
}

// BenchmarkReportPatchEnables: the report's time per line stays the same
// from 10,000 to 40,000 patches (patches are found by name, not by a
// walk of the stack).
func BenchmarkReportPatchEnables(b *testing.B) {
	for _, n := range []int{10_000, 40_000} {
		data := patchEnables(n)
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			for b.Loop() {
				if _, err := Run(bytes.NewReader(data), io.Discard, Options{JSON: true}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/line")
		})
	}
}
