package upstreamtest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// authorize checks the request's credentials and writes the challenge when
// they are missing or wrong. It reports whether the request may proceed.
func (u *Upstream) authorize(w http.ResponseWriter, r *http.Request) bool {
	switch u.opts.Auth {
	case Basic:
		user, pass, ok := r.BasicAuth()
		if ok && user == u.opts.Username && pass == u.opts.Password {
			return true
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="upstreamtest"`)
		writeError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
		return false
	case DockerHubStyle:
		repo, _, _, scoped := splitPath(r.URL.Path)
		token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		u.mu.Lock()
		granted, known := u.tokens[token]
		u.mu.Unlock()
		if known && (!scoped || granted == repo) {
			return true
		}
		challenge := fmt.Sprintf(`Bearer realm=%q,service=%q`, u.TokenURL+"/token", u.opts.Service)
		if scoped {
			challenge += fmt.Sprintf(`,scope="repository:%s:pull"`, repo)
		}
		w.Header().Set("WWW-Authenticate", challenge)
		writeError(w, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
		return false
	}
	return true
}

// serveToken issues a pull token for the one repository named in scope (or
// a token good only for /v2/ without one), after checking Basic credentials
// when the upstream has them.
func (u *Upstream) serveToken(w http.ResponseWriter, r *http.Request) {
	rw := u.begin(w, r, TokenListener)
	defer u.end(rw)
	if u.dropIfDown(rw) || !u.wait(r.Context()) {
		return
	}
	if u.opts.Username != "" {
		user, pass, ok := r.BasicAuth()
		if !ok || user != u.opts.Username || pass != u.opts.Password {
			writeError(rw, http.StatusUnauthorized, "UNAUTHORIZED", "bad credentials for the token endpoint")
			return
		}
	}
	q := r.URL.Query()
	if q.Get("service") != u.opts.Service {
		writeError(rw, http.StatusBadRequest, "DENIED", "unknown service "+q.Get("service"))
		return
	}
	repo := ""
	if scope := q.Get("scope"); scope != "" {
		parts := strings.Split(scope, ":")
		if len(parts) != 3 || parts[0] != "repository" || !strings.Contains(parts[2], "pull") {
			writeError(rw, http.StatusBadRequest, "DENIED", "unsupported scope "+scope)
			return
		}
		repo = parts[1]
	}
	buf := make([]byte, 16)
	_, _ = rand.Read(buf)
	token := hex.EncodeToString(buf)
	u.mu.Lock()
	u.tokens[token] = repo
	u.mu.Unlock()
	rw.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(rw).Encode(map[string]any{
		"token":        token,
		"access_token": token,
		"expires_in":   300,
		"issued_at":    time.Now().UTC().Format(time.RFC3339),
	})
}

// serveCDN serves blob bytes at /<repo>/blobs/<digest> without any
// authentication, and refuses any request that carries credentials: a real
// CDN would leak them, so a client that sends them is at fault.
func (u *Upstream) serveCDN(w http.ResponseWriter, r *http.Request) {
	rw := u.begin(w, r, CDNListener)
	defer u.end(rw)
	if u.dropIfDown(rw) || !u.wait(r.Context()) {
		return
	}
	if a := r.Header.Get("Authorization"); a != "" {
		u.violate("CDN received Authorization %q on %s %s", a, r.Method, r.URL.Path)
		writeError(rw, http.StatusBadRequest, "DENIED", "the CDN must not receive credentials")
		return
	}
	inner := r.Clone(r.Context())
	inner.URL.Path = "/v2" + r.URL.Path
	inner.RequestURI = ""
	u.serveContent(rw, inner)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"errors": []map[string]string{{"code": code, "message": msg}},
	})
}
