package report

import (
	"io"
	"strconv"
)

// genTrace is an io.Reader of a synthetic trace of about limit bytes, made
// on the fly so that a gigabyte never touches disk or memory. The mix is
// what a busy machine records: hundreds of tasks, most switching on their
// way to user space, the rest switched by the first sweep, and a few
// kworkers that block for a number of sweeps, with stacks on change.
type genTrace struct {
	limit, n int64
	buf      []byte
	off      int
	events   int64

	tasks  int
	churn  int // short-lived forks per transition, each a new pid
	pid    int // the last pid forked
	t      uint64
	seq    int
	target int
	ps     int // patch_state of the next line
	state  int // 0 header, 1 snapshot, 2 transitions
}

const genTasks = 300

func newGenTrace(limit int64) *genTrace {
	return &genTrace{limit: limit, tasks: genTasks, t: 5_000_000_000, target: 1}
}

var genStack = []string{
	"msleep+0x2d/0x40",
	"busymod_work_func+0x1c/0x30 [test_klp_callbacks_busy]",
	"process_one_work+0x1c7/0x380",
	"worker_thread+0x4d/0x380",
	"kthread+0xe9/0x110",
	"ret_from_fork+0x22/0x30",
}

func (g *genTrace) Read(p []byte) (int, error) {
	for g.off == len(g.buf) {
		if g.n >= g.limit {
			return 0, io.EOF
		}
		g.buf, g.off = g.buf[:0], 0
		g.fill()
		g.n += int64(len(g.buf))
	}
	n := copy(p, g.buf[g.off:])
	g.off += n
	return n, nil
}

func (g *genTrace) line(typ string, f func(b []byte) []byte) {
	b := g.buf
	b = append(b, `{"t":`...)
	b = strconv.AppendUint(b, g.t, 10)
	b = append(b, `,"type":"`...)
	b = append(b, typ...)
	b = append(b, '"')
	if f != nil {
		b = f(b)
	}
	b = append(b, `,"target":`...)
	b = strconv.AppendInt(b, int64(g.target), 10)
	b = append(b, `,"patch_state":`...)
	b = strconv.AppendInt(b, int64(g.ps), 10)
	b = append(b, "}\n"...)
	g.buf = b
	g.events++
	g.t += 7_000 + uint64(g.events%13)*1_000
}

func task(pid int, comm string) func(b []byte) []byte {
	return func(b []byte) []byte {
		b = append(b, `,"cpu":1,"pid":`...)
		b = strconv.AppendInt(b, int64(pid), 10)
		b = append(b, `,"tgid":`...)
		b = strconv.AppendInt(b, int64(pid), 10)
		b = append(b, `,"comm":"`...)
		b = append(b, comm...)
		return append(b, '"')
	}
}

func comm(pid int) string {
	switch {
	case pid%50 == 7:
		return "kworker/" + strconv.Itoa(pid%4) + ":" + strconv.Itoa(pid%7)
	case pid%3 == 0:
		return "bash"
	}
	return "systemd-journal"
}

// fill appends the next chunk: the header, the snapshot, or one transition.
func (g *genTrace) fill() {
	switch g.state {
	case 0:
		g.buf = append(g.buf, `{"format":"klptop-trace","version":"1.0","klptop":"bench","kernel":"6.1.0-56-amd64","hostname":"bench","boot_id":"b","clock":"CLOCK_MONOTONIC","start_wall":"2025-03-04T03:12:00Z","start_mono_ns":5000000000,"backend":"kprobe-multi","attached":[],"missing":[{"symbol":"klp_send_signals","why":"inlined"}]}`+"\n"...)
		g.state++
		return
	case 1:
		for pid := 1; pid <= g.tasks; pid++ {
			g.ps = -1
			g.line("task", task(pid, comm(pid)))
			g.ps = 0
		}
		g.line("snapshot_end", nil)
		g.state++
		return
	}
	g.seq++
	patch := func(b []byte) []byte { return append(b, `,"patch":"livepatch_busy"`...) }
	if g.target == 1 {
		g.line("patch_enable", patch)
	}
	g.line("transition_init", patch)
	g.line("transition_start", nil)
	// Forks that exit before the next sweep, of pending and switched parents.
	for i := range g.churn {
		if g.pid < g.tasks {
			g.pid = g.tasks
		}
		g.pid++
		ps := g.ps
		g.ps = g.target
		if i%2 == 0 {
			g.ps = 1 - g.target
		}
		g.line("task_switch", func(b []byte) []byte {
			return append(task(g.pid, "short")(b), `,"path":"fork"`...)
		})
		// Most are reaped within the transition (release_task); the
		// others, unseen, leave at the completing sweep.
		if i%4 != 3 {
			g.line("task_exit", task(g.pid, "short"))
		}
		g.ps = ps
	}
	// Most tasks switch on their own, on the way back to user space.
	for pid := 1; pid <= g.tasks; pid++ {
		if pid%5 < 3 && pid%50 != 7 {
			g.line("task_switch", func(b []byte) []byte {
				return append(task(pid, comm(pid))(b), `,"path":"user"`...)
			})
		}
	}
	blockers := func(pid int) bool { return pid%50 == 7 && (pid/50+g.seq)%3 == 0 }
	sweeps := 1 + g.seq%12
	for sw := 1; sw <= sweeps; sw++ {
		g.line("sweep_start", nil)
		pending := 0
		for pid := 1; pid <= g.tasks; pid++ {
			first := sw == 1 && (pid%5 >= 3 || pid%50 == 7)
			block := blockers(pid) && sw < sweeps
			if !first && !(blockers(pid) && sw > 1) {
				continue
			}
			tk := task(pid, comm(pid))
			if !block {
				g.line("task_check", func(b []byte) []byte { return append(tk(b), `,"reason":"switched"`...) })
				continue
			}
			pending++
			g.line("task_check", func(b []byte) []byte {
				b = append(tk(b), `,"ret":-98,"reason":"sleeping_on_func","func":"busymod_work_func"`...)
				if sw == 1 {
					b = append(b, `,"stack":[`...)
					for i, f := range genStack {
						if i > 0 {
							b = append(b, ',')
						}
						b = append(b, '"')
						b = append(b, f...)
						b = append(b, '"')
					}
					b = append(b, ']')
				}
				return b
			})
		}
		g.line("sweep_end", func(b []byte) []byte {
			b = append(b, `,"duration_ns":41000,"checked":`...)
			b = strconv.AppendInt(b, int64(g.tasks), 10)
			b = append(b, `,"pending":`...)
			return strconv.AppendInt(b, int64(pending), 10)
		})
		g.t += 1_000_000_000
	}
	g.line("transition_complete", nil)
	g.target = 1 - g.target
	g.t += 10_000_000_000
}
