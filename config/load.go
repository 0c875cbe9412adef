package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
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
	data, err := readLimited(path, maxConfigBytes)
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	return Parse(path, data)
}

// Parse is Load for YAML already in memory; name is used in error messages
// in place of a file name.
func Parse(name string, data []byte) (*Config, error) {
	d, err := parseDocument(name, data)
	if err != nil {
		return nil, err
	}
	if len(d.problems) > 0 {
		return nil, locate(d.name, d.keys, d.problems)
	}
	return &d.cfg, nil
}

// document is one configuration file read as far as it could be, with
// every problem found in it. Reading goes on past an unknown key or a value
// of the wrong type, so that one run of `airlock config check` lists every
// mistake instead of one per run.
type document struct {
	name     string
	keys     *keyIndex
	cfg      Config
	problems []error
	// undecodable are the key paths whose values the decoder refused. They
	// hold zero values, so validating them again would only repeat the
	// complaint in a more confusing form ("required" for a mistyped URL).
	// It is a set, looked up for every problem with the key and each of
	// its ancestors: a file of forty thousand misspelt keys has as many.
	undecodable map[string]bool
}

// parseDocument decodes data strictly, fills defaults and validates. Its
// error is for a document that cannot be read at all (YAML syntax); every
// other problem is collected in the document.
func parseDocument(name string, data []byte) (*document, error) {
	if name == "" {
		name = "config"
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, syntaxError(name, err)
	}
	d := &document{name: name, keys: newKeyIndex(), undecodable: map[string]bool{}}
	d.problems = d.keys.walk(&root, configType, "")
	if d.keys.expanded {
		return nil, &locatedError{name: name, err: &fieldError{msg: fmt.Sprintf(
			"the document holds more than %d values, counting each use of an anchor through an alias or merge key as a copy; no configuration needs so many, so check for aliases that expand in a loop", maxWalk)}}
	}
	// A misspelt key leaves the key it meant absent; "upstreams: required"
	// next to "unknown key upstream (did you mean upstreams?)" says the
	// same thing twice.
	for _, meant := range d.keys.misspelt {
		if _, written := d.keys.lines[meant]; !written {
			d.undecodable[meant] = true
		}
	}

	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&d.cfg); err != nil && err != io.EOF {
		te, ok := errors.AsType[*yaml.TypeError](err)
		if !ok {
			return nil, syntaxError(name, err)
		}
		d.addDecodeErrors(te)
	}
	// The decoder reads one document; a second one would be ignored
	// silently, which hides edits made to it.
	var extra yaml.Node
	if err := dec.Decode(&extra); err != io.EOF {
		d.problems = append(d.problems, &fieldError{line: extra.Line,
			msg: "a second YAML document (after ---) is not allowed; merge it into the first"})
	}

	d.cfg.ApplyDefaults()
	for _, err := range d.cfg.problems() {
		if fe, ok := errors.AsType[*fieldError](err); ok && d.isUndecodable(fe.key) {
			continue
		}
		d.problems = append(d.problems, err)
	}
	return d, nil
}

// isUndecodable reports whether key is, or lies under, a key whose value
// the decoder refused.
func (d *document) isUndecodable(key string) bool {
	for {
		if d.undecodable[key] {
			return true
		}
		if key == "" {
			return false
		}
		// The parent of "a.b[1].c" is "a.b[1]", of "a.b[1]" "a.b", of
		// "a" the document "".
		i := strings.LastIndexAny(key, ".[")
		key = key[:max(i, 0)]
	}
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
	// In file order, so the list reads top to bottom like the file; keys
	// left out, which have no line, come last.
	slices.SortStableFunc(out, func(a, b *locatedError) int {
		if (a.line == 0) != (b.line == 0) {
			return cmp.Compare(b.line, a.line)
		}
		return cmp.Compare(a.line, b.line)
	})
	joined := make([]error, len(out))
	for i, e := range out {
		joined[i] = e
	}
	return errors.Join(joined...)
}

var (
	yamlLineRE  = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	notFoundRE  = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
	duplicateRE = regexp.MustCompile(`^mapping key "(.*)" already defined at line \d+$`)
	// mistypedRE is the decoder's message for a value of the wrong kind:
	// "cannot unmarshal !!str `lots` into int", the value cut at ten bytes.
	mistypedRE = regexp.MustCompile("^cannot unmarshal (!!\\w+)(?: `(.*)`)? into .+$")
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

// maxDecodeErrors bounds the decoder's problems reported for one document.
const maxDecodeErrors = 100

// addDecodeErrors turns the decoder's collected "line N: msg" problems into
// "key.path: msg" problems at line N. Unknown keys were already reported,
// with better advice, by the key walk.
func (d *document) addDecodeErrors(te *yaml.TypeError) {
	unknownAt := map[int]bool{}
	for _, err := range d.problems {
		if fe, ok := errors.AsType[*fieldError](err); ok {
			unknownAt[fe.line] = true
		}
	}
	msgs := te.Errors
	if len(msgs) > maxDecodeErrors {
		// Locating each costs a look at every key of the document, so
		// thirty thousand took minutes; a user fixes the first ones first.
		d.problems = append(d.problems, &fieldError{msg: fmt.Sprintf(
			"%d more values of the wrong type or form after these; fix these first and check again", len(msgs)-maxDecodeErrors)})
		msgs = msgs[:maxDecodeErrors]
	}
	for _, msg := range msgs {
		m := yamlLineRE.FindStringSubmatch(msg)
		if m == nil {
			d.problems = append(d.problems, &fieldError{msg: msg})
			continue
		}
		line, _ := strconv.Atoi(m[1])
		text := m[2]
		if nf := notFoundRE.FindStringSubmatch(text); nf != nil {
			if !unknownAt[line] {
				d.problems = append(d.problems, &fieldError{line: line,
					msg: fmt.Sprintf("unknown key %q; remove it or check its spelling", nf[1])})
			}
			continue
		}
		if key, want, got, ok := d.keys.mistyped(line, text); ok {
			d.undecodable[key] = true
			if key == "" {
				d.problems = append(d.problems, &fieldError{line: line,
					msg: fmt.Sprintf("the configuration must be a mapping of keys such as listen and upstreams, got %s", got)})
				continue
			}
			d.problems = append(d.problems, &fieldError{key: key, line: line, msg: fmt.Sprintf("want %s, got %s", want, got)})
			continue
		}
		if dup := duplicateRE.FindStringSubmatch(text); dup != nil {
			// The decoder leaves a mapping with a duplicate key undecoded.
			if mapping, ok := d.keys.mappingWithKey(dup[1], line); ok {
				d.undecodable[mapping] = true
			}
		}
		key := d.keys.unmarshalerAt(line, text)
		if key == "" {
			key = d.keys.keyAt(line)
		}
		if key != "" {
			// An error from a value's own decoder (a duration, a size).
			d.undecodable[key] = true
			text = key + ": " + text
		}
		d.problems = append(d.problems, &fieldError{line: line, msg: text})
	}
}
