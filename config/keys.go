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
// ("upstreams[1].auth.usernameFile") it contains. It is how errors found on
// the decoded struct are reported at the line a user has to edit.
type keyIndex struct {
	lines map[string]int
}

func newKeyIndex() *keyIndex { return &keyIndex{lines: map[string]int{}} }

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
	if t == nodeType || reflect.PointerTo(t).Implements(unmarshalerType) {
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
	fields := yamlFields(t)
	var errs []error
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		if key.Value == "<<" && key.ShortTag() == "!!merge" {
			errs = append(errs, k.walkMerge(val, t, path)...)
			continue
		}
		ft, ok := fields[key.Value]
		if !ok {
			errs = append(errs, &fieldError{line: key.Line, msg: unknownKey(key.Value, path, fields)})
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
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		fields[name] = f.Type
	}
	return fields
}

// unknownKey words the error for key found where fields are expected:
// the closest known key if one is near, otherwise the list of known keys.
func unknownKey(key, path string, fields map[string]reflect.Type) string {
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
		return fmt.Sprintf("unknown key %q%s (did you mean %q?)", key, where, best)
	}
	return fmt.Sprintf("unknown key %q%s; known keys are %s", key, where, strings.Join(known, ", "))
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
