package admin

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/verify"
)

// Reference names one image the way the CLI and the API paths write it:
// "<upstream>/<repository>@<digest>" or "<upstream>/<repository>:<tag>".
type Reference struct {
	// Repository is "<upstream>/<repository>", as images are listed.
	Repository string
	// Exactly one of Digest and Tag is set.
	Digest digest.Digest
	Tag    string
}

func (r Reference) String() string {
	if r.Digest != "" {
		return r.Repository + "@" + string(r.Digest)
	}
	return r.Repository + ":" + r.Tag
}

// component is one path component of a repository name, as the
// distribution spec defines it.
var component = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$`)

// upstreamRE is an upstream name, as config accepts it.
var upstreamRE = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?$`)

// tagRE is the distribution spec's tag grammar.
var tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)

// maxRepository bounds a repository name, the upstream prefix included.
const maxRepository = 255 + 64

// ParseReference parses "<upstream>/<repository>@<digest>" or
// "<upstream>/<repository>:<tag>". The repository must name its upstream
// (the first path component), as `airlock images list` shows it.
func ParseReference(s string) (Reference, error) {
	if repo, d, ok := strings.Cut(s, "@"); ok {
		if err := checkRepository(repo); err != nil {
			return Reference{}, err
		}
		if err := verify.Check(digest.Digest(d)); err != nil {
			return Reference{}, fmt.Errorf("invalid digest in %q: %v", s, err)
		}
		return Reference{Repository: repo, Digest: digest.Digest(d)}, nil
	}
	slash, colon := strings.LastIndex(s, "/"), strings.LastIndex(s, ":")
	if colon > slash {
		repo, tag := s[:colon], s[colon+1:]
		if err := checkRepository(repo); err != nil {
			return Reference{}, err
		}
		if !tagRE.MatchString(tag) {
			return Reference{}, fmt.Errorf("invalid tag %q in %q: tags are 1-128 characters of [A-Za-z0-9_.-], not starting with . or -", tag, s)
		}
		return Reference{Repository: repo, Tag: tag}, nil
	}
	if err := checkRepository(s); err != nil {
		return Reference{}, err
	}
	return Reference{}, fmt.Errorf("%q names a repository but no image: add @<digest> or :<tag>", s)
}

// ParseDigestReference parses "<upstream>/<repository>@<digest>": what a
// change (release, block, rescan, delete) needs, since a tag can move.
func ParseDigestReference(s string) (Reference, error) {
	ref, err := ParseReference(s)
	if err != nil {
		return Reference{}, err
	}
	if ref.Digest == "" {
		return Reference{}, fmt.Errorf("%q names a tag, which can move to another image: name the image by digest, "+
			"<repository>@sha256:<hex> (`airlock images show %s` prints it)", s, s)
	}
	return ref, nil
}

// checkRepository checks "<upstream>/<repository>".
func checkRepository(repo string) error {
	if repo == "" {
		return fmt.Errorf("empty repository: want <upstream>/<repository>, e.g. dockerhub/library/nginx")
	}
	if len(repo) > maxRepository {
		return fmt.Errorf("repository name is %d characters; at most %d are allowed", len(repo), maxRepository)
	}
	parts := strings.Split(repo, "/")
	if len(parts) < 2 {
		return fmt.Errorf("repository %q does not name its upstream: want <upstream>/<repository>, e.g. dockerhub/library/nginx", repo)
	}
	if err := checkUpstream(parts[0]); err != nil {
		return fmt.Errorf("invalid repository %q: %v", repo, err)
	}
	for _, p := range parts[1:] {
		if !component.MatchString(p) {
			return fmt.Errorf("invalid repository %q: path component %q is not lowercase letters and digits joined by '.', '_', '__' or '-'", repo, p)
		}
	}
	return nil
}

// checkUpstream checks an upstream name (one path component).
func checkUpstream(name string) error {
	if !upstreamRE.MatchString(name) {
		return fmt.Errorf("invalid upstream name %q: want one path component such as dockerhub", name)
	}
	return nil
}

// CheckRepository checks a repository name as the API's filters take it,
// "<upstream>/<repository>"; its error says what is wrong.
func CheckRepository(repo string) error { return checkRepository(repo) }

// CheckUpstream checks an upstream name, one path component.
func CheckUpstream(name string) error { return checkUpstream(name) }
