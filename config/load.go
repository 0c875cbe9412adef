package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ErrInvalid is wrapped by every error that Load, Parse and Validate return
// for a configuration that cannot be used as written.
var ErrInvalid = errors.New("invalid configuration")

// Load reads the YAML file at path and returns it as a Config: strictly
// decoded (an unknown key is an error), with defaults filled in, validated.
// Errors name the file, the line and the key, e.g.
//
//	/etc/airlock/airlock.yaml:7: unknown key "upstream" (did you mean "upstreams"?)
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	return Parse(path, data)
}

// Parse is Load for YAML already in memory; name is used in error messages
// in place of a file name.
func Parse(name string, data []byte) (*Config, error) {
	if name == "" {
		name = "config"
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, syntaxError(name, err)
	}
	keys := newKeyIndex()
	if errs := keys.walk(&root, configType, ""); len(errs) > 0 {
		return nil, locate(name, keys, errs)
	}

	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && err != io.EOF {
		return nil, decodeError(name, keys, err)
	}
	// The decoder reads one document; a second one would be ignored
	// silently, which hides edits made to it.
	var extra yaml.Node
	if err := dec.Decode(&extra); err != io.EOF {
		return nil, &locatedError{name: name, line: extra.Line,
			err: &fieldError{msg: "a second YAML document (after ---) is not allowed; merge it into the first"}}
	}

	c.ApplyDefaults()
	if errs := c.problems(); len(errs) > 0 {
		return nil, locate(name, keys, errs)
	}
	return &c, nil
}

// locatedError is a problem found at a line of a named file.
type locatedError struct {
	name string
	line int
	err  error
}

func (e *locatedError) Error() string {
	if e.line <= 0 {
		return fmt.Sprintf("%s: %v", e.name, e.err)
	}
	return fmt.Sprintf("%s:%d: %v", e.name, e.line, e.err)
}

func (e *locatedError) Unwrap() error { return e.err }

// locate prefixes each key-path error with the file and the line where the
// key (or, for a missing key, its nearest enclosing key) is written.
func locate(name string, keys *keyIndex, errs []error) error {
	out := make([]*locatedError, len(errs))
	for i, err := range errs {
		line := 0
		var fe *fieldError
		if errors.As(err, &fe) {
			line = fe.line
			if line == 0 {
				line = keys.lineOf(fe.key)
			}
		}
		out[i] = &locatedError{name: name, line: line, err: err}
	}
	// In file order, so the list reads top to bottom like the file.
	slices.SortStableFunc(out, func(a, b *locatedError) int { return cmp.Compare(a.line, b.line) })
	joined := make([]error, len(out))
	for i, e := range out {
		joined[i] = e
	}
	return errors.Join(joined...)
}

var (
	yamlLineRE = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	notFoundRE = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
)

// syntaxError rewrites the YAML parser's "yaml: line N: msg" as "name:N: msg".
func syntaxError(name string, err error) error {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &locatedError{name: name, line: line, err: &fieldError{msg: m[2] + "; fix the YAML syntax"}}
	}
	return &locatedError{name: name, err: &fieldError{msg: strings.TrimPrefix(msg, "yaml: ")}}
}

// decodeError rewrites the decoder's collected "line N: msg" problems as
// "name:N: key.path: msg", one error per problem.
func decodeError(name string, keys *keyIndex, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return syntaxError(name, err)
	}
	out := make([]error, 0, len(te.Errors))
	for _, msg := range te.Errors {
		m := yamlLineRE.FindStringSubmatch(msg)
		if m == nil {
			out = append(out, &locatedError{name: name, err: &fieldError{msg: msg}})
			continue
		}
		line, _ := strconv.Atoi(m[1])
		text := m[2]
		if nf := notFoundRE.FindStringSubmatch(text); nf != nil {
			text = fmt.Sprintf("unknown key %q; remove it or check its spelling", nf[1])
		} else if key := keys.keyAt(line); key != "" {
			text = key + ": " + text
		}
		out = append(out, &locatedError{name: name, line: line, err: &fieldError{msg: text}})
	}
	if len(out) == 0 {
		return &locatedError{name: name, err: &fieldError{msg: err.Error()}}
	}
	return errors.Join(out...)
}
