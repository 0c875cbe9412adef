package proxy

import (
	"net/http"
	"slices"
	"strings"
)

// maxAcceptTypes bounds how many media types one request's Accept headers
// may name; registries know a handful, and clients send at most a dozen.
const maxAcceptTypes = 64

// parseAccept collects the media types of all Accept headers, without
// parameters, in order and without repeats. It is linear in the header's
// length and keeps at most maxAcceptTypes types: the header is untrusted
// and arrives before any authentication.
func parseAccept(h http.Header) []string {
	var out []string
	seen := map[string]struct{}{}
	for _, v := range h.Values("Accept") {
		for part := range strings.SplitSeq(v, ",") {
			if len(out) == maxAcceptTypes {
				return out
			}
			mt, _, _ := strings.Cut(part, ";")
			mt = strings.ToLower(strings.TrimSpace(mt))
			if !validMediaType(mt) {
				continue
			}
			if _, dup := seen[mt]; dup {
				continue
			}
			seen[mt] = struct{}{}
			out = append(out, mt)
		}
	}
	return out
}

// validMediaType reports whether mt is a "type/subtype" of token
// characters, the only shape an Accept entry can usefully have here.
func validMediaType(mt string) bool {
	typ, sub, ok := strings.Cut(mt, "/")
	return ok && isToken(typ) && isToken(sub)
}

func isToken(s string) bool {
	if s == "" || len(s) > 127 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("()<>@,;:\\\"/[]?={}", c) >= 0 {
			return false
		}
	}
	return true
}

// acceptable reports whether a client with this Accept list takes mediaType.
// No Accept at all means the client takes whatever the registry has.
func acceptable(mediaType string, accept []string) bool {
	if len(accept) == 0 || mediaType == "" {
		return true
	}
	return slices.Contains(accept, mediaType) || slices.Contains(accept, "*/*")
}

// acceptKey names an Accept list whatever its order.
func acceptKey(accept []string) string {
	sorted := slices.Clone(accept)
	slices.Sort(sorted)
	return strings.Join(sorted, ",")
}

// everyClientGets reports whether an upstream's answer of mediaType to a
// client with this Accept list is what any client would get for the tag, so
// it may be recorded as the tag's. An index is the tag's whatever the
// client took. An image manifest is, only if the client would have taken
// either kind of index: a client that takes no OCI index (or no Docker
// list) may have been handed one platform's manifest of a multi-platform
// tag.
func everyClientGets(mediaType string, accept []string) bool {
	switch mediaType {
	case mediaOCIIndex, mediaDockerList:
		return true
	}
	return acceptable(mediaOCIIndex, accept) && acceptable(mediaDockerList, accept)
}
