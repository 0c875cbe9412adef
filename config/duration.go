package config

import (
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration written in YAML as a Go duration string such
// as "30s", "5m" or "1h30m". A bare number is refused (except 0), because
// "30" is as likely to mean seconds as nanoseconds.
type Duration time.Duration

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// String formats d like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML parses a duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return typeError(n, "want a duration such as \"30s\" or \"5m\", got "+describeNode(n))
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return typeError(n, fmt.Sprintf("%q is not a duration; write a number with a unit, such as \"30s\", \"5m\" or \"1h\"", n.Value))
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes d as a duration string, so a Config marshals back into
// YAML that Parse accepts.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// typeError reports a problem with one node in the form the YAML decoder
// collects, so it is listed with the decoder's own errors instead of
// aborting the decode.
func typeError(n *yaml.Node, msg string) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %s", n.Line, msg)}}
}
