package upstream

import (
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParseChallenges(t *testing.T) {
	t.Parallel()
	type p = map[string]string
	tests := []struct {
		name    string
		headers []string
		want    []Challenge
	}{
		{
			name:    "docker hub",
			headers: []string{`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"`},
			want:    []Challenge{{"bearer", p{"realm": "https://auth.docker.io/token", "service": "registry.docker.io", "scope": "repository:library/alpine:pull"}}},
		},
		{
			name:    "quoted commas and multiple scopes",
			headers: []string{`Bearer realm="https://r.example/token",scope="repository:a/b:pull,push repository:c:pull",error="insufficient_scope"`},
			want:    []Challenge{{"bearer", p{"realm": "https://r.example/token", "scope": "repository:a/b:pull,push repository:c:pull", "error": "insufficient_scope"}}},
		},
		{
			name:    "case, spaces and escapes",
			headers: []string{`BEARER  Realm = "https://r.example/t" ,  Service="say \"hi\"\\"`},
			want:    []Challenge{{"bearer", p{"realm": "https://r.example/t", "service": `say "hi"\`}}},
		},
		{
			name:    "two challenges in one header",
			headers: []string{`Basic realm="vendor", Bearer realm="https://r.example/token",service=reg`},
			want:    []Challenge{{"basic", p{"realm": "vendor"}}, {"bearer", p{"realm": "https://r.example/token", "service": "reg"}}},
		},
		{
			name:    "two headers",
			headers: []string{`Basic realm="a"`, `Bearer realm="b"`},
			want:    []Challenge{{"basic", p{"realm": "a"}}, {"bearer", p{"realm": "b"}}},
		},
		{
			name:    "unquoted URL realm",
			headers: []string{`Bearer realm=https://r.example/token?x=1,service=reg`},
			want:    []Challenge{{"bearer", p{"realm": "https://r.example/token?x=1", "service": "reg"}}},
		},
		{
			name:    "scheme without params, then token68",
			headers: []string{`Negotiate, NTLM abc123==, Basic realm="x"`},
			want:    []Challenge{{"negotiate", p{}}, {"ntlm", p{}}, {"basic", p{"realm": "x"}}},
		},
		{
			name:    "repeated param keeps the first",
			headers: []string{`Bearer realm="a", realm="b"`},
			want:    []Challenge{{"bearer", p{"realm": "a"}}},
		},
		{
			name:    "unterminated quote",
			headers: []string{`Bearer realm="https://r.example/token`},
			want:    []Challenge{{"bearer", p{"realm": "https://r.example/token"}}},
		},
		{name: "empty", headers: []string{"", " , "}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := ParseChallenges(tt.headers)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseChallenges(%q)\n got %#v\nwant %#v", tt.headers, got, tt.want)
			}
		})
	}
}

// formatChallenges writes challenges back as one canonical header value.
func formatChallenges(cs []Challenge) string {
	var parts []string
	for _, c := range cs {
		var b strings.Builder
		b.WriteString(c.Scheme)
		for i, k := range slices.Sorted(maps.Keys(c.Params)) {
			if i == 0 {
				b.WriteByte(' ')
			} else {
				b.WriteString(", ")
			}
			v := strings.ReplaceAll(c.Params[k], `\`, `\\`)
			b.WriteString(k + `="` + strings.ReplaceAll(v, `"`, `\"`) + `"`)
		}
		parts = append(parts, b.String())
	}
	return strings.Join(parts, ", ")
}

// FuzzParseChallenge: the parser never panics, only produces well-formed
// challenges, and is stable: formatting what it parsed and parsing again
// yields the same challenges.
func FuzzParseChallenge(f *testing.F) {
	for _, s := range []string{
		`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"`,
		`Basic realm="vendor", Bearer realm="https://r.example/token",service=reg`,
		`Bearer realm="a\"b", scope="x y,z"`,
		`NTLM abc==, Negotiate`,
		`Bearer realm="unterminated`,
		`,,=,"",\`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		got := ParseChallenges([]string{header})
		for _, c := range got {
			if c.Scheme == "" || strings.ToLower(c.Scheme) != c.Scheme || c.Params == nil {
				t.Fatalf("malformed challenge %#v from %q", c, header)
			}
			for k := range c.Params {
				if k == "" || strings.ToLower(k) != k || strings.IndexFunc(k, func(r rune) bool { return r > 127 || !isTokenChar(byte(r)) }) >= 0 {
					t.Fatalf("malformed param name %q from %q", k, header)
				}
			}
		}
		again := ParseChallenges([]string{formatChallenges(got)})
		if len(got) == 0 && len(again) == 0 {
			return
		}
		if !reflect.DeepEqual(got, again) {
			t.Fatalf("unstable parse of %q:\n first %#v\nsecond %#v", header, got, again)
		}
	})
}
