package api

import (
	"encoding/json"
	"math"
	"reflect"
	"testing"
)

func TestValueRoundTrip(t *testing.T) {
	in := map[string]Value{
		"s": {TypeString, "pw"}, "b": {TypeBytes, []byte{0, 1, 255}},
		"u": {TypeUint, uint64(math.MaxUint64)}, "i": {TypeInt, int64(math.MinInt64)}, "t": {TypeBool, true},
	}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]Value
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip:\n %v\n %v\n%s", in, out, b)
	}
	var plain map[string]Value
	json.Unmarshal([]byte(`{"a":"x","n":5,"f":false}`), &plain)
	if plain["a"] != (Value{TypeString, "x"}) || plain["n"] != (Value{TypeInt, int64(5)}) || plain["f"] != (Value{TypeBool, false}) {
		t.Fatalf("plain values: %v", plain)
	}
	for _, bad := range []string{`1.5`, `null`, `[1]`, `{"type":"uint","value":-1}`, `{"type":"bytes","value":"!!"}`, `{"type":"float","value":1}`, `{"type":"int"}`} {
		var v Value
		if err := json.Unmarshal([]byte(bad), &v); err == nil {
			t.Errorf("%s accepted as %v", bad, v)
		}
	}
}
