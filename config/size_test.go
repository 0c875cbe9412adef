package config

import (
	"errors"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestSizeYAML(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want int64
		err  string
	}{
		{in: `0`, want: 0},
		{in: `1073741824`, want: 1 << 30},
		{in: `"500GiB"`, want: 500 << 30},
		{in: `800MB`, want: 800_000_000},
		{in: `1TiB`, want: 1 << 40},
		{in: `1.5TiB`, want: 3 << 39},
		{in: `"512 MiB"`, want: 512 << 20},
		{in: `64kib`, want: 64 << 10},
		{in: `2kB`, want: 2000},
		{in: `10B`, want: 10},
		{in: `8191PiB`, err: `unknown unit "PiB"`},
		{in: `5XB`, err: `unknown unit "XB"`},
		{in: `GiB`, err: "has no number"},
		{in: `-1`, err: "is negative"},
		{in: `-5GiB`, err: "is negative"},
		{in: `1.2.3GB`, err: "is not a size"},
		{in: `9223372036854775807GiB`, err: "is not a size"},
		{in: `99999999999TiB`, err: "is not a size"},
		{in: `[1GiB]`, err: "want a size"},
	} {
		var v struct {
			S Size `yaml:"s"`
		}
		err := yaml.Unmarshal([]byte("s: "+tc.in), &v)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want one containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || v.S.Bytes() != tc.want {
			t.Errorf("%s: got %d, %v; want %d", tc.in, v.S, err, tc.want)
		}
		out, err := yaml.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var back struct {
			S Size `yaml:"s"`
		}
		if err := yaml.Unmarshal(out, &back); err != nil || back.S != v.S {
			t.Errorf("%s: round trip through %q gave %d, %v", tc.in, out, back.S, err)
		}
	}
}

func TestSizeString(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   Size
		want string
	}{
		{0, "0"}, {1, "1"}, {1023, "1023"}, {1 << 10, "1KiB"}, {500 << 30, "500GiB"},
		{800_000_000, "800MB"}, {3 << 39, "1536GiB"}, {1 << 40, "1TiB"}, {1500, "1500"},
	} {
		if got := tc.in.String(); got != tc.want {
			t.Errorf("Size(%d).String() = %q, want %q", int64(tc.in), got, tc.want)
		}
	}
}

// TestCacheEvictionKeys checks the keys a bounded cache is configured
// with: defaults, values, and errors that name the key and its line.
func TestCacheEvictionKeys(t *testing.T) {
	t.Parallel()
	const up = "upstreams:\n  - name: hub\n    url: https://hub.example\n"
	c, err := Parse("min.yaml", []byte(up))
	if err != nil {
		t.Fatal(err)
	}
	if c.Cache.MaxSize != 0 || c.Cache.EvictInterval.Std().String() != "5m0s" {
		t.Errorf("defaults: maxSize %v, evictInterval %v; want 0 (unlimited) and 5m", c.Cache.MaxSize, c.Cache.EvictInterval)
	}
	c, err = Parse("set.yaml", []byte("cache:\n  maxSize: 500GiB\n  evictInterval: 1m\n"+up))
	if err != nil {
		t.Fatal(err)
	}
	if c.Cache.MaxSize.Bytes() != 500<<30 || c.Cache.EvictInterval.Std().String() != "1m0s" {
		t.Errorf("set: maxSize %v, evictInterval %v", c.Cache.MaxSize, c.Cache.EvictInterval)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"cache:\n  maxSize: 500GB_\n", `airlock.yaml:2: cache.maxSize: "500GB_" has unknown unit`},
		{"cache:\n  tagTTL: 1m\n  maxSize: -3GiB\n", `airlock.yaml:3: cache.maxSize: "-3GiB" is negative`},
		{"cache: {maxSize: 10 parsecs}\n", `airlock.yaml:1: cache.maxSize: "10 parsecs" has unknown unit "parsecs"`},
		{"cache:\n  evictInterval: -1m\n", "airlock.yaml:2: cache.evictInterval: -1m0s is negative"},
		{"cache:\n  evictInterval: 5\n", `airlock.yaml:2: cache.evictInterval: "5" is not a duration`},
	} {
		_, err := Parse("airlock.yaml", []byte(tc.yaml+up))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error\n%v\nwant one containing\n%s", tc.yaml, err, tc.want)
		}
	}
	c = Default()
	c.Cache.MaxSize = -1
	if err := c.Validate(); err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "cache.maxSize: -1 is negative") {
		t.Errorf("Validate of a negative maxSize set in code = %v", err)
	}
}
