package metadata

import (
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/verify"
)

// sep joins a repository and a tag or digest in a key. Neither can contain
// it, so a prefix scan over "repo\x00" finds exactly that repository.
const sep = "\x00"

func checkRepo(repo string) error {
	if repo == "" || strings.Contains(repo, sep) {
		return fmt.Errorf("metadata: invalid repository name %q: want <upstream>/<repository>", repo)
	}
	return nil
}

func tagKey(repo, tag string) ([]byte, error) {
	if err := checkRepo(repo); err != nil {
		return nil, err
	}
	if tag == "" || strings.Contains(tag, sep) {
		return nil, fmt.Errorf("metadata: invalid tag %q in %s", tag, repo)
	}
	return []byte(repo + sep + tag), nil
}

func refKey(repo string, d digest.Digest) ([]byte, error) {
	if err := checkRepo(repo); err != nil {
		return nil, err
	}
	if err := verify.Check(d); err != nil {
		return nil, fmt.Errorf("metadata: %s: %w", repo, err)
	}
	return []byte(repo + sep + string(d)), nil
}

func repoPrefix(repo string) []byte { return []byte(repo + sep) }

// cutKey splits a "repo\x00digest" key.
func cutKey(k []byte) (repo string, d digest.Digest, ok bool) {
	r, rest, ok := strings.Cut(string(k), sep)
	return r, digest.Digest(rest), ok
}
