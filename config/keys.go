package config

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

var (
	configType      = reflect.TypeFor[Config]()
	nodeType        = reflect.TypeFor[yaml.Node]()
	unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
)

// keyIndex knows, for one YAML document, the line of every key path
// ("upstreams[1].auth.usernameFile") it contains, and the value written
// there with the Go type it decodes into. It is how errors found on the
// decoded struct, or by the decoder, are reported at the key and the line a
// user has to edit.
type keyIndex struct {
	lines  map[string]int
	values map[string]keyValue
	// misspelt are the key paths that unknown keys were probably meant to
	// be ("upstreams" for "upstream").
	misspelt []string
	// budget is how many more nodes walk may visit. Aliases make a
	// document a graph: a few hundred bytes of nested merge keys ("billion
	// laughs") expand to billions of visits, which would hang check, serve
	// and SIGHUP alike. When it runs out, walk stops and expanded is set.
	budget   int
	expanded bool
	// fields caches yamlFields per struct type: a walk through aliases
	// visits the same types many times.
	fields map[reflect.Type]map[string]reflect.Type
}

// maxWalk bounds the nodes one document may expand to. A large real
// configuration (hundreds of upstreams with long allow-lists) is a few
// thousand; the YAML decoder refuses excessive aliasing on its own terms,
// but only after walk has run.
const maxWalk = 1 << 17

// keyValue is the node written at a key path and the type it decodes into.
type keyValue struct {
	node *yaml.Node
	typ  reflect.Type
}

func newKeyIndex() *keyIndex {
	return &keyIndex{lines: map[string]int{}, values: map[string]keyValue{}, budget: maxWalk,
		fields: map[reflect.Type]map[string]reflect.Type{}}
}

// lineOf returns the line of key, or of its nearest enclosing key when key
// itself is absent (a required key that was left out), or 0.
func (k *keyIndex) lineOf(key string) int {
	for key != "" {
		if line, ok := k.lines[key]; ok {
			return line
		}
		i := strings.LastIndexAny(key, ".[")
		if i < 0 {
			break
		}
		key = key[:i]
	}
	return 0
}

// keyAt returns the key path written at line when exactly one innermost key
// is there, or "" (a flow mapping can put several keys on one line, and
// then naming one of them would mislead).
func (k *keyIndex) keyAt(line int) string {
	var at []string
	for key, l := range k.lines {
		if l == line {
			at = append(at, key)
		}
	}
	var leaves []string
	for _, a := range at {
		inner := false
		for _, b := range at {
			if b != a && (strings.HasPrefix(b, a+".") || strings.HasPrefix(b, a+"[")) {
				inner = true
				break
			}
		}
		if !inner {
			leaves = append(leaves, a)
		}
	}
	if len(leaves) != 1 {
		return ""
	}
	return leaves[0]
}

// walk records the line of every key under n, which is to be decoded into
// t, and returns an error for each mapping key that t has no field for.
// Finding unknown keys here, rather than relying on the decoder alone, lets
// the message give the key path and a likely intended spelling.
func (k *keyIndex) walk(n *yaml.Node, t reflect.Type, path string) []error {
	if k.budget--; k.budget < 0 {
		k.expanded = true
		return nil
	}
	for depth := 0; n.Kind == yaml.AliasNode && n.Alias != nil && depth < 64; depth++ {
		n = n.Alias
	}
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		return k.walk(n.Content[0], t, path)
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	k.values[path] = keyValue{node: n, typ: t}
	if isUnmarshaler(t) {
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		return k.walkStruct(n, t, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return nil
		}
		var errs []error
		for i, item := range n.Content {
			p := path + "[" + strconv.Itoa(i) + "]"
			k.lines[p] = item.Line
			errs = append(errs, k.walk(item, t.Elem(), p)...)
		}
		return errs
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return nil
		}
		var errs []error
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := join(path, n.Content[i].Value)
			k.lines[p] = n.Content[i].Line
			errs = append(errs, k.walk(n.Content[i+1], t.Elem(), p)...)
		}
		return errs
	}
	return nil
}

func (k *keyIndex) walkStruct(n *yaml.Node, t reflect.Type, path string) []error {
	if n.Kind != yaml.MappingNode {
		return nil // the decoder reports the type mismatch
	}
	fields, ok := k.fields[t]
	if !ok {
		fields = yamlFields(t)
		k.fields[t] = fields
	}
	var errs []error
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		if key.Value == "<<" && key.ShortTag() == "!!merge" {
			errs = append(errs, k.walkMerge(val, t, path)...)
			continue
		}
		ft, ok := fields[key.Value]
		if !ok {
			msg, meant := unknownKey(key.Value, path, fields)
			if meant != "" {
				k.misspelt = append(k.misspelt, join(path, meant))
			}
			errs = append(errs, &fieldError{line: key.Line, msg: msg})
			continue
		}
		p := join(path, key.Value)
		k.lines[p] = key.Line
		errs = append(errs, k.walk(val, ft, p)...)
	}
	return errs
}

// walkMerge checks the mapping(s) of a "<<" merge key as if written in place.
func (k *keyIndex) walkMerge(n *yaml.Node, t reflect.Type, path string) []error {
	if n.Kind == yaml.SequenceNode {
		var errs []error
		for _, item := range n.Content {
			errs = append(errs, k.walk(item, t, path)...)
		}
		return errs
	}
	return k.walk(n, t, path)
}

// yamlFields maps each YAML key of struct type t to its field type.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	fields := make(map[string]reflect.Type, t.NumField())
	for f := range t.Fields() {
		if name := yamlName(f); name != "" {
			fields[name] = f.Type
		}
	}
	return fields
}

// yamlName is the key field f is written as, or "" when it is not read
// from YAML.
func yamlName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	switch name {
	case "-":
		return ""
	case "":
		return strings.ToLower(f.Name)
	}
	return name
}

// unknownKey words the error for key found where fields are expected:
// the closest known key if one is near, otherwise the list of known keys.
// meant is that closest key, or "".
func unknownKey(key, path string, fields map[string]reflect.Type) (msg, meant string) {
	where := ""
	if path != "" {
		where = " in " + path
	}
	known := make([]string, 0, len(fields))
	for f := range fields {
		known = append(known, f)
	}
	slices.Sort(known)
	best, bestDist := "", 3 // suggest only spellings within two edits
	for _, f := range known {
		d := editDistance(strings.ToLower(key), strings.ToLower(f))
		if d < bestDist {
			best, bestDist = f, d
		}
	}
	if best != "" {
		return fmt.Sprintf("unknown key %q%s (did you mean %q?)", key, where, best), best
	}
	return fmt.Sprintf("unknown key %q%s; known keys are %s", key, where, strings.Join(known, ", ")), ""
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// mistyped finds the key whose value the decoder refused with msg ("cannot
// unmarshal !!str `lots` into int" at line) and words the problem as the
// type the key wants and the value it got. ok is false when msg is another
// kind of error or no single key at line fits it.
func (k *keyIndex) mistyped(line int, msg string) (key, want, got string, ok bool) {
	m := mistypedRE.FindStringSubmatch(msg)
	if m == nil {
		return "", "", "", false
	}
	tag, value := m[1], m[2]
	// The decoder cuts long values to seven bytes and "...".
	prefix, cut := strings.CutSuffix(value, "...")
	found := 0
	for path, v := range k.values {
		n := v.node
		if n.Line != line || n.ShortTag() != tag || fits(n, v.typ) {
			continue
		}
		if n.Kind == yaml.ScalarNode && n.Value != value && !(cut && strings.HasPrefix(n.Value, prefix)) {
			continue
		}
		key, want, got = path, describeType(v.typ), describeNode(n)
		found++
	}
	return key, want, got, found == 1
}

// mappingWithKey returns the path of the mapping in which key is written
// at line.
func (k *keyIndex) mappingWithKey(key string, line int) (string, bool) {
	for path, v := range k.values {
		if v.node.Kind != yaml.MappingNode {
			continue
		}
		for i := 0; i+1 < len(v.node.Content); i += 2 {
			if kn := v.node.Content[i]; kn.Value == key && kn.Line == line {
				return path, true
			}
		}
	}
	return "", false
}

// fits reports whether the decoder accepts n for t whatever its content:
// a mapping for a struct or map, a list for a slice, or anything for a type
// with its own decoder, which words its own errors (see unmarshalerAt).
func fits(n *yaml.Node, t reflect.Type) bool {
	if isUnmarshaler(t) {
		return true
	}
	switch n.Kind {
	case yaml.MappingNode:
		return t.Kind() == reflect.Struct || t.Kind() == reflect.Map
	case yaml.SequenceNode:
		return t.Kind() == reflect.Slice
	}
	return false
}

func isUnmarshaler(t reflect.Type) bool {
	return t == nodeType || reflect.PointerTo(t).Implements(unmarshalerType)
}

// unmarshalerAt finds the key at line whose own decoder (a [Duration], a
// [Size]) refused its value with msg: a collection, or a scalar that msg
// quotes. It returns "" unless exactly one key fits.
func (k *keyIndex) unmarshalerAt(line int, msg string) string {
	key, found := "", 0
	for path, v := range k.values {
		n := v.node
		if n.Line != line || v.typ == nodeType || !isUnmarshaler(v.typ) {
			continue
		}
		if n.Kind == yaml.ScalarNode && !strings.Contains(msg, strconv.Quote(n.Value)) {
			continue
		}
		key = path
		found++
	}
	if found != 1 {
		return ""
	}
	return key
}

// describeType says in YAML terms what a value of type t is written as.
func describeType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a mapping of keys to values"
	}
	return t.String()
}

// describeNode names what was written: a quoted string, a plain scalar as
// written, or the kind of collection.
func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	v := n.Value
	if len(v) > 40 {
		v = v[:37] + "..."
	}
	if n.ShortTag() == "!!str" {
		return strconv.Quote(v)
	}
	return v
}
