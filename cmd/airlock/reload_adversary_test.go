package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/airlock-registry/airlock/integration/upstreamtest"
)

// A SIGHUP whose signature key file cannot be parsed (an admin pasted a
// private key, or a trusted root was cut short while copied) is refused
// whole: nothing of it applies, not even the parts read before the key
// file, such as who may pull.
func TestReloadWithABrokenKeyFileChangesNothing(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	up.PushImage(t, "vendor/app", "1", 256, 1)
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htpasswd, []byte("bob:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "team.pub")
	if err := os.WriteFile(key, []byte("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "airlock.yaml")
	doc := func(extra string) []byte {
		return []byte(`
listen: "127.0.0.1:0"
admin: {listen: "127.0.0.1:0"}
storage: {path: "` + filepath.Join(dir, "data") + `"}
upstreams:
  - {name: hcl, url: "` + up.URL + `"}
` + extra)
	}
	g, logs := gatewayFromFile(t, path, doc(""))
	srv := httptest.NewServer(g.registryHandler())
	defer srv.Close()
	pull := func() int { t.Helper(); return pullStatus(t, srv, "/v2/hcl/vendor/app/manifests/1") }
	if got := pull(); got != http.StatusOK {
		t.Fatalf("pull before the reload = %d, want 200", got)
	}

	if err := os.WriteFile(path, doc(`auth: {htpasswd: "`+htpasswd+`"}
policies:
  - name: signed
    match: ["hcl/*"]
    signature: {keys: ["`+key+`"]}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	g.reload(path)
	if !strings.Contains(logs.String(), "configuration reload refused") || !strings.Contains(logs.String(), "team.pub") {
		t.Fatalf("a broken key file was not refused:\n%s", logs.String())
	}
	if got := pull(); got != http.StatusOK {
		t.Errorf("anonymous pull after a refused reload = %d, want 200: the refused file's auth section was applied", got)
	}
}
