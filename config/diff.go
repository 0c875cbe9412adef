package config

import (
	"reflect"
	"strconv"

	"go.yaml.in/yaml/v3"
)

// Diff returns the key paths whose values differ between a and b, in the
// order of the Config's fields: "listen", "upstreams[1].repositories",
// "cache.tagTTL". Lists of different lengths differ as a whole
// ("upstreams"); maps, such as storage.parameters, too. A reload uses it to
// say which of the changes it applied and which need a restart.
func Diff(a, b *Config) []string {
	var out []string
	diffValue(reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem(), "", &out)
	return out
}

func diffValue(a, b reflect.Value, path string, out *[]string) {
	switch {
	case a.Type() == nodeType:
		if !nodeEqual(a.Addr().Interface().(*yaml.Node), b.Addr().Interface().(*yaml.Node)) {
			*out = append(*out, path)
		}
	case a.Kind() == reflect.Struct:
		t := a.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name := yamlName(f)
			if name == "" {
				continue
			}
			diffValue(a.Field(i), b.Field(i), join(path, name), out)
		}
	case a.Kind() == reflect.Slice && a.Len() == b.Len():
		for i := range a.Len() {
			diffValue(a.Index(i), b.Index(i), path+"["+strconv.Itoa(i)+"]", out)
		}
	default:
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*out = append(*out, path)
		}
	}
}

// nodeEqual compares two YAML nodes by what they say, not where: moving a
// policy down the file is no change.
func nodeEqual(a, b *yaml.Node) bool {
	for a.Kind == yaml.AliasNode && a.Alias != nil {
		a = a.Alias
	}
	for b.Kind == yaml.AliasNode && b.Alias != nil {
		b = b.Alias
	}
	if a.Kind != b.Kind || a.ShortTag() != b.ShortTag() || a.Value != b.Value || len(a.Content) != len(b.Content) {
		return false
	}
	for i := range a.Content {
		if !nodeEqual(a.Content[i], b.Content[i]) {
			return false
		}
	}
	return true
}
