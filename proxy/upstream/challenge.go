package upstream

import (
	"strings"
)

// Challenge is one authentication challenge from a WWW-Authenticate header
// (RFC 9110 section 11.6.1): a scheme and its parameters.
type Challenge struct {
	// Scheme is lower-cased: "bearer", "basic".
	Scheme string
	// Params maps lower-cased parameter names to their unquoted values
	// ("realm", "service", "scope", "error"). A repeated name keeps its first
	// value. Token68 credentials (rare in challenges) are ignored.
	Params map[string]string
}

// ParseChallenges parses the values of all WWW-Authenticate headers of a
// response. One header may hold several challenges separated by commas, and
// quoted values may contain commas, spaces and backslash escapes
// (scope="repository:a:pull,push"). Malformed parts are skipped rather than
// failing the whole header: an upstream's odd challenge should cost at most
// that challenge.
func ParseChallenges(headers []string) []Challenge {
	var out []Challenge
	for _, h := range headers {
		out = append(out, parseChallengeHeader(h)...)
	}
	return out
}

// challengeParser walks one header value.
type challengeParser struct {
	s   string
	pos int
}

func parseChallengeHeader(s string) []Challenge {
	p := &challengeParser{s: s}
	var out []Challenge
	for {
		p.skipSeparators()
		if p.pos >= len(p.s) {
			return out
		}
		scheme := p.token()
		if scheme == "" {
			p.pos++ // not a token character: skip it and resynchronise
			continue
		}
		c := Challenge{Scheme: strings.ToLower(scheme), Params: map[string]string{}}
		p.params(&c)
		out = append(out, c)
	}
}

// params reads the auth-params following a scheme, stopping before the next
// challenge's scheme. Separators are accepted leniently (a missing comma
// between params is tolerated); a token68 or a valueless param is skipped.
func (p *challengeParser) params(c *Challenge) {
	for {
		p.skipSeparators()
		if p.pos >= len(p.s) {
			return
		}
		nameStart := p.pos
		name := p.token()
		if name == "" {
			p.skipToComma() // resynchronise after a stray character
			continue
		}
		p.skipSpaces()
		if p.pos >= len(p.s) || p.s[p.pos] != '=' {
			// A token not followed by '=' begins the next challenge.
			p.pos = nameStart
			return
		}
		p.pos++
		p.skipSpaces()
		if p.pos >= len(p.s) || p.s[p.pos] == ',' || p.s[p.pos] == '=' {
			// "abc=" or "abc==": a token68 or an empty value; nothing to keep.
			p.skipToComma()
			continue
		}
		var value string
		if p.s[p.pos] == '"' {
			value = p.quoted()
		} else {
			value = p.tokenValue()
		}
		if key := strings.ToLower(name); !hasKey(c.Params, key) {
			c.Params[key] = value
		}
	}
}

func (p *challengeParser) skipSpaces() {
	for p.pos < len(p.s) && (p.s[p.pos] == ' ' || p.s[p.pos] == '\t') {
		p.pos++
	}
}

func (p *challengeParser) skipSeparators() {
	for p.pos < len(p.s) && (p.s[p.pos] == ' ' || p.s[p.pos] == '\t' || p.s[p.pos] == ',') {
		p.pos++
	}
}

func (p *challengeParser) skipToComma() {
	for p.pos < len(p.s) && p.s[p.pos] != ',' {
		if p.s[p.pos] == '"' {
			p.quoted()
			continue
		}
		p.pos++
	}
}

// token reads an RFC 9110 token.
func (p *challengeParser) token() string {
	start := p.pos
	for p.pos < len(p.s) && isTokenChar(p.s[p.pos]) {
		p.pos++
	}
	return p.s[start:p.pos]
}

// tokenValue reads an unquoted parameter value. It is more lenient than a
// token: some registries send unquoted URLs (realm=https://x/token), so
// everything up to a comma or whitespace is taken.
func (p *challengeParser) tokenValue() string {
	start := p.pos
	for p.pos < len(p.s) && p.s[p.pos] != ',' && p.s[p.pos] != ' ' && p.s[p.pos] != '\t' && p.s[p.pos] != '"' {
		p.pos++
	}
	return p.s[start:p.pos]
}

// quoted reads a quoted-string starting at the opening quote, resolving
// backslash escapes. An unterminated string runs to the end of the header.
func (p *challengeParser) quoted() string {
	p.pos++ // opening quote
	var b strings.Builder
	for p.pos < len(p.s) {
		ch := p.s[p.pos]
		switch {
		case ch == '\\' && p.pos+1 < len(p.s):
			b.WriteByte(p.s[p.pos+1])
			p.pos += 2
		case ch == '"':
			p.pos++
			return b.String()
		default:
			b.WriteByte(ch)
			p.pos++
		}
	}
	return b.String()
}

func isTokenChar(c byte) bool {
	if c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' {
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func hasKey(m map[string]string, k string) bool {
	_, ok := m[k]
	return ok
}
