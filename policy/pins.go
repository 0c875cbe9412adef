package policy

import (
	"bufio"
	"bytes"
	"fmt"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Pins is a parsed pin file: the digests a policy lets through, some of
// them for one tag only.
type Pins struct {
	// any are digests pinned on a line of their own: allowed in every
	// repository the policy matches.
	any map[digest.Digest]bool
	// repo are digests pinned for one repository through one of its tags.
	repo map[string]map[digest.Digest]bool
	// tag are the digests "<repository>:<tag>" may resolve to.
	tag map[string][]digest.Digest
}

// maxPinLine bounds one line of a pin file; a digest line is ~80 bytes.
const maxPinLine = 4096

// ParsePins reads a pin file: lines "<digest>" or
// "<upstream>/<repository>:<tag> <digest>"; blank lines and lines starting
// with "#" are skipped. name is the file's name for errors, which give the
// line and what is wrong with it.
func ParsePins(name string, data []byte) (*Pins, error) {
	p := &Pins{any: map[digest.Digest]bool{}, repo: map[string]map[digest.Digest]bool{}, tag: map[string][]digest.Digest{}}
	// Editors on Windows start a UTF-8 file with a byte order mark; it is
	// no part of the first line.
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 256), maxPinLine)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		switch len(fields) {
		case 1:
			d, err := parseDigest(fields[0])
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %w", name, n, err)
			}
			p.any[d] = true
		case 2:
			repo, tag, ok := splitTag(fields[0])
			if !ok {
				return nil, fmt.Errorf("%s:%d: %q is not <upstream>/<repository>:<tag>", name, n, fields[0])
			}
			d, err := parseDigest(fields[1])
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %w", name, n, err)
			}
			if p.repo[repo] == nil {
				p.repo[repo] = map[digest.Digest]bool{}
			}
			p.repo[repo][d] = true
			p.tag[repo+":"+tag] = append(p.tag[repo+":"+tag], d)
		default:
			return nil, fmt.Errorf("%s:%d: want \"<digest>\" or \"<upstream>/<repository>:<tag> <digest>\", got %d fields", name, n, len(fields))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w (lines are at most %d bytes)", name, err, maxPinLine)
	}
	return p, nil
}

func parseDigest(s string) (digest.Digest, error) {
	d, err := digest.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%q is not a digest such as sha256:<64 hex digits>: %v", s, err)
	}
	return d, nil
}

// splitTag splits "<upstream>/<repository>:<tag>" at the tag's colon.
func splitTag(ref string) (repo, tag string, ok bool) {
	i := strings.LastIndexByte(ref, ':')
	if i <= 0 || i == len(ref)-1 || strings.Contains(ref[i:], "/") || !strings.Contains(ref[:i], "/") {
		return "", "", false
	}
	return ref[:i], ref[i+1:], true
}

// check returns why d in repo, known under tags, is not let through, or
// "" when it is.
func (p *Pins) check(repo string, d digest.Digest, tags []string) (msg, tag string) {
	for _, t := range tags {
		want := p.tag[repo+":"+t]
		if len(want) == 0 {
			continue
		}
		ok := false
		for _, w := range want {
			ok = ok || w == d
		}
		if !ok {
			return fmt.Sprintf("tag %s resolved to %s, but the pins allow it only %s", t, short(d), shortList(want)), t
		}
	}
	if p.any[d] || p.repo[repo][d] {
		return "", ""
	}
	if len(tags) > 0 {
		return fmt.Sprintf("tag %s resolved to %s, which is not pinned", tags[0], short(d)), tags[0]
	}
	return fmt.Sprintf("%s is not pinned", short(d)), ""
}

// moved reports whether the pins name tag in repo, and not for d.
func (p *Pins) moved(repo string, d digest.Digest, tag string) bool {
	want := p.tag[repo+":"+tag]
	return len(want) > 0 && !slices.Contains(want, d)
}

// short abbreviates a digest for a sentence: algorithm and 12 hex digits.
func short(d digest.Digest) string {
	s := d.String()
	if i := strings.IndexByte(s, ':'); i >= 0 && len(s) > i+13 {
		return s[:i+13]
	}
	return s
}

func shortList(ds []digest.Digest) string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = short(d)
	}
	return strings.Join(out, " or ")
}
