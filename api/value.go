package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
)

// Value is a typed tube parameter, as Telepathy's a{sv}: Type is one of
// string, bytes, uint, int, bool. In JSON:
//
//	{"type":"string","value":"s3cret"}  {"type":"bytes","value":"AAEC"} (base64)
//	{"type":"uint","value":5900}        {"type":"int","value":-1}   {"type":"bool","value":true}
//
// A plain JSON string, boolean or integer is accepted on input too.
type Value struct {
	Type  string `json:"type"`
	Value any    `json:"value"` // string, []byte, uint64, int64 or bool
}

// Parameter types.
const (
	TypeString = "string"
	TypeBytes  = "bytes"
	TypeUint   = "uint"
	TypeInt    = "int"
	TypeBool   = "bool"
)

// MarshalJSON encodes the typed form.
func (v Value) MarshalJSON() ([]byte, error) {
	var raw any
	switch x := v.Value.(type) {
	case string:
		raw = x
	case []byte:
		raw = base64.StdEncoding.EncodeToString(x)
	case uint64:
		raw = json.Number(strconv.FormatUint(x, 10))
	case int64:
		raw = json.Number(strconv.FormatInt(x, 10))
	case bool:
		raw = x
	default:
		return nil, fmt.Errorf("api: parameter value of type %T", v.Value)
	}
	return json.Marshal(struct {
		Type  string `json:"type"`
		Value any    `json:"value"`
	}{v.Type, raw})
}

// UnmarshalJSON decodes the typed form or a plain string, boolean or
// integer.
func (v *Value) UnmarshalJSON(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var raw any
	if err := dec.Decode(&raw); err != nil {
		return err
	}
	switch x := raw.(type) {
	case string:
		*v = Value{TypeString, x}
		return nil
	case bool:
		*v = Value{TypeBool, x}
		return nil
	case json.Number:
		if i, err := strconv.ParseInt(string(x), 10, 64); err == nil {
			*v = Value{TypeInt, i}
			return nil
		}
		if u, err := strconv.ParseUint(string(x), 10, 64); err == nil {
			*v = Value{TypeUint, u}
			return nil
		}
		return fmt.Errorf("parameter %s is not an integer", x)
	case map[string]any:
		typ, _ := x["type"].(string)
		val, ok := x["value"]
		if !ok || len(x) != 2 {
			return fmt.Errorf("a typed parameter is {\"type\":…,\"value\":…}")
		}
		return v.set(typ, val)
	}
	return fmt.Errorf("a parameter is a string, boolean, integer or {\"type\",\"value\"}, not %s", b)
}

func (v *Value) set(typ string, val any) error {
	bad := fmt.Errorf("parameter value %v is not a %s", val, typ)
	switch typ {
	case TypeString:
		s, ok := val.(string)
		if !ok {
			return bad
		}
		*v = Value{typ, s}
	case TypeBytes:
		s, ok := val.(string)
		if !ok {
			return bad
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return fmt.Errorf("bytes parameter is not base64: %v", err)
		}
		*v = Value{typ, b}
	case TypeUint:
		n, ok := val.(json.Number)
		if !ok {
			return bad
		}
		u, err := strconv.ParseUint(string(n), 10, 64)
		if err != nil {
			return bad
		}
		*v = Value{typ, u}
	case TypeInt:
		n, ok := val.(json.Number)
		if !ok {
			return bad
		}
		i, err := strconv.ParseInt(string(n), 10, 64)
		if err != nil {
			return bad
		}
		*v = Value{typ, i}
	case TypeBool:
		b, ok := val.(bool)
		if !ok {
			return bad
		}
		*v = Value{typ, b}
	default:
		return fmt.Errorf("parameter type %q is not one of string, bytes, uint, int, bool", typ)
	}
	return nil
}

// ParseValue parses the command-line form TYPE:TEXT (or TEXT, a string).
func ParseValue(typ, text string) (Value, error) {
	switch typ {
	case "", TypeString:
		return Value{TypeString, text}, nil
	case TypeBytes:
		b, err := base64.StdEncoding.DecodeString(text)
		if err != nil {
			return Value{}, fmt.Errorf("bytes parameter %q is not base64", text)
		}
		return Value{TypeBytes, b}, nil
	case TypeUint:
		u, err := strconv.ParseUint(text, 10, 64)
		if err != nil {
			return Value{}, fmt.Errorf("uint parameter %q is not an unsigned integer", text)
		}
		return Value{TypeUint, u}, nil
	case TypeInt:
		i, err := strconv.ParseInt(text, 10, 64)
		if err != nil {
			return Value{}, fmt.Errorf("int parameter %q is not an integer", text)
		}
		return Value{TypeInt, i}, nil
	case TypeBool:
		b, err := strconv.ParseBool(text)
		if err != nil {
			return Value{}, fmt.Errorf("bool parameter %q is not true or false", text)
		}
		return Value{TypeBool, b}, nil
	}
	return Value{}, fmt.Errorf("parameter type %q is not one of string, bytes, uint, int, bool", typ)
}

// String renders the value for people.
func (v Value) String() string {
	if b, ok := v.Value.([]byte); ok {
		return base64.StdEncoding.EncodeToString(b)
	}
	return fmt.Sprint(v.Value)
}

// Check reports whether Type names the Go type Value holds, as the
// decoders produce.
func (v Value) Check() error {
	ok := false
	switch v.Value.(type) {
	case string:
		ok = v.Type == TypeString
	case []byte:
		ok = v.Type == TypeBytes
	case uint64:
		ok = v.Type == TypeUint
	case int64:
		ok = v.Type == TypeInt
	case bool:
		ok = v.Type == TypeBool
	}
	if !ok {
		return fmt.Errorf("a %q parameter cannot hold %T", v.Type, v.Value)
	}
	return nil
}
