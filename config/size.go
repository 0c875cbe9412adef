package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Size is a number of bytes written in YAML as a count with an optional
// unit: "500GiB", "800MB", "1.5TiB", "512 MiB" or a plain 1073741824.
// KiB, MiB, GiB and TiB are powers of 1024; kB (or KB), MB, GB and TB are
// powers of 1000, as disk vendors and Kubernetes quantities use them. Unit
// letters are case-insensitive except that the i must be there for the
// binary units; a missing unit, or "B", means bytes.
type Size int64

// sizeUnits maps each accepted unit, lower-cased, to its multiplier.
var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}

// ParseSize parses s as described on [Size].
func ParseSize(s string) (Size, error) {
	s = strings.TrimSpace(s)
	end := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' && r != '-' && r != '+' })
	if end < 0 {
		end = len(s)
	}
	num, unit := s[:end], strings.ToLower(strings.TrimSpace(s[end:]))
	mult, ok := sizeUnits[unit]
	if !ok {
		return 0, fmt.Errorf("%q has unknown unit %q; use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB", s, strings.TrimSpace(s[end:]))
	}
	if num == "" {
		return 0, fmt.Errorf("%q has no number; write a size such as \"500GiB\"", s)
	}
	if strings.HasPrefix(num, "-") {
		return 0, fmt.Errorf("%q is negative; sizes must be zero or more", s)
	}
	if !strings.Contains(num, ".") {
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil || n > math.MaxInt64/mult {
			return 0, fmt.Errorf("%q is not a size up to 8 EiB; write a size such as \"500GiB\"", s)
		}
		return Size(n * mult), nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f*float64(mult) >= math.MaxInt64 {
		return 0, fmt.Errorf("%q is not a size up to 8 EiB; write a size such as \"1.5TiB\"", s)
	}
	return Size(math.Round(f * float64(mult))), nil
}

// Bytes returns s as a byte count.
func (s Size) Bytes() int64 { return int64(s) }

// String writes s in the largest unit that represents it exactly, so that
// ParseSize(s.String()) == s.
func (s Size) String() string {
	for _, u := range []struct {
		name string
		mult int64
	}{{"TiB", 1 << 40}, {"TB", 1e12}, {"GiB", 1 << 30}, {"GB", 1e9}, {"MiB", 1 << 20}, {"MB", 1e6}, {"KiB", 1 << 10}, {"kB", 1e3}} {
		if s != 0 && int64(s)%u.mult == 0 {
			return strconv.FormatInt(int64(s)/u.mult, 10) + u.name
		}
	}
	return strconv.FormatInt(int64(s), 10)
}

// UnmarshalYAML parses a size.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return typeError(n, "want a size such as \"500GiB\" or a byte count, got "+describeNode(n))
	}
	v, err := ParseSize(n.Value)
	if err != nil {
		return typeError(n, err.Error())
	}
	*s = v
	return nil
}

// MarshalYAML writes s as ParseSize reads it.
func (s Size) MarshalYAML() (any, error) { return s.String(), nil }
