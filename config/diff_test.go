package config

import (
	"slices"
	"testing"
)

func TestDiff(t *testing.T) {
	t.Parallel()
	const base = `
listen: 127.0.0.1:5000
storage: {path: /data}
upstreams:
  - {name: hub, url: https://hub.example, default: true}
  - {name: quay, url: https://quay.io}
policies: [{name: signed, match: [hub/x], pins: /p}]
`
	parse := func(t *testing.T, doc string) *Config {
		t.Helper()
		c, err := Parse("diff.yaml", []byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range []struct {
		name, doc string
		want      []string
	}{
		{"same", base, nil},
		// Positions are not content: moving lines changes nothing.
		{"reordered and commented", "# moved\npolicies: [{name: signed, match: [hub/x], pins: /p}]\n" + base[:len(base)-len("policies: [{name: signed, match: [hub/x], pins: /p}]\n")], nil},
		{"listen and log level", base + "log: {level: debug}\n", []string{"log.level"}},
		{"nested key", `
listen: 127.0.0.1:6000
storage: {path: /data, parameters: {rootdirectory: /blobs}}
upstreams:
  - {name: hub, url: https://hub.example, default: true, repositories: [library/*]}
  - {name: quay, url: https://quay.io}
policies: [{name: signed, match: [hub/x], pins: /p}]
`, []string{"listen", "storage.parameters", "upstreams[0].repositories"}},
		{"list length", `
listen: 127.0.0.1:5000
storage: {path: /data}
upstreams:
  - {name: hub, url: https://hub.example, default: true}
policies: [{name: unsigned, match: [hub/x], pins: /p}]
`, []string{"upstreams", "policies[0].name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := Diff(parse(t, base), parse(t, tc.doc)); !slices.Equal(got, tc.want) {
				t.Errorf("Diff = %q, want %q", got, tc.want)
			}
		})
	}
}
