package trace

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/klptop/klptop/internal/event"
)

var decodeSeeds = []string{
	`{"t":5123460000,"type":"task_check","cpu":1,"pid":57,"comm":"kworker/1:2","target":0,"ret":-98,"reason":"sleeping_on_func","func":"busymod_work_func","patch_state":0,"stack":["busymod_work_func+0x1c/0x30 [m]","kthread+0xe9/0x110"]}`,
	`{"t":1,"type":"patch","patch":"p","enabled":true,"transition":false,"replace":true,"seq":2,"target":1,"patch_state":0}`,
	`{"t":2,"type":"sweep_end","duration_ns":18446744073709551615,"pending":-1,"checked":3,"target":0,"patch_state":0}`,
	`{"t":3,"type":"lost","count":7,"target":0,"patch_state":-2,"stack":[]}`,
	` { "t" : 4 , "type" : "task" , "comm" : "caf\u00e9" } `,
	`{"t":5,"type":"task","comm":"caf` + "\xc3\xa9" + `","pid":-9223372036854775808}`,
	`{"t":6,"type":"task","comm":"bad` + "\xff" + `"}`,
	`{"T":7,"TYPE":"task"}`,
	`{"t":8,"type":"task","pid":null}`,
	`{"t":9,"ret":2147483648}`,
	`{"t":9,"ret":-2147483648}`,
	`{"t":-1}`,
	`{"t":1.0}`,
	`{"t":01}`,
	`{"t":1e3}`,
	`{"t":1,"stack":["a"],"stack":["b","c"]}`,
	`{"t":1,"new_field":{"x":[1,2]}}`,
	`{"t":1}x`,
	`{"t":1,}`,
	`{}`,
	`[]`,
	`{"t":18446744073709551616}`,
}

func TestDecodeMatchesEncodingJSON(t *testing.T) {
	for _, s := range decodeSeeds {
		compareDecoders(t, []byte(s))
	}
}

func compareDecoders(t *testing.T, b []byte) {
	t.Helper()
	var want event.Event
	werr := json.Unmarshal(b, &want)
	var d decoder
	var got event.Event
	gerr := d.decode(b, &got)
	if (werr == nil) != (gerr == nil) {
		t.Fatalf("%q: encoding/json err %v, decoder err %v", b, werr, gerr)
	}
	if werr == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("%q:\n got %#v\nwant %#v", b, got, want)
	}
}

// FuzzDecode: on every input the fast decoder agrees with encoding/json:
// the same event when it parses, an error when it does not.
func FuzzDecode(f *testing.F) {
	for _, s := range decodeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) { compareDecoders(t, b) })
}

func BenchmarkDecode(b *testing.B) {
	line := []byte(decodeSeeds[0])
	b.Run("fast", func(b *testing.B) {
		var d decoder
		var e event.Event
		for b.Loop() {
			if err := d.decode(line, &e); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			var e event.Event
			if err := json.Unmarshal(line, &e); err != nil {
				b.Fatal(err)
			}
		}
	})
}
