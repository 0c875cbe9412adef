package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlock-registry/airlock/config"
)

func TestConfigCheck(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	valid := write("valid.yaml", `
listen: "127.0.0.1:5000"
storage: {path: /var/lib/airlock}
upstreams:
  - {name: dockerhub, url: "https://registry-1.docker.io", aliases: [docker.io], default: true}
`)
	tests := []struct {
		name    string
		args    []string
		wantOut string
		wantErr []string // substrings of the error; nil means success
	}{
		{"embedded default", []string{"config", "check"}, "embedded default: valid (3 upstreams)", nil},
		{"valid file", []string{"config", "check", "--config", valid}, "valid.yaml: valid (1 upstreams)", nil},
		{"example file", []string{"config", "check", "--static", "--config", "../../configs/airlock.example.yaml"}, "valid", nil},
		// Without --static the Secrets the example names must be mounted,
		// and every missing one is listed at once.
		{"example file on this machine", []string{"config", "check", "--config", "../../configs/airlock.example.yaml"}, "",
			[]string{"admin.tokenFile: /etc/airlock/admin-token does not exist", "auth.htpasswd: /etc/airlock/htpasswd: no such file or directory", "upstreams[0].auth.usernameFile:", "upstreams[0].auth.passwordFile:"}},
		{"unknown key", []string{"config", "check", "--config", write("typo.yaml", "listen: ':5000'\nupstream: []\n")},
			"", []string{"typo.yaml:2", `unknown key "upstream"`}},
		{"bad url", []string{"config", "check", "--config", write("url.yaml", "upstreams:\n  - {name: a, url: 'ftp://x'}\n")},
			"", []string{"upstreams[0].url"}},
		{"missing file", []string{"config", "check", "--config", filepath.Join(dir, "absent.yaml")}, "", []string{"absent.yaml"}},
		{"pin file that does not parse", []string{"config", "check", "--config", write("pins.yaml",
			"upstreams: [{name: hcl, url: 'https://hcl.example'}]\npolicies: [{name: p, match: ['hcl/*'], pins: "+
				write("pins.txt", "# ok\nsha256:123\n")+"}]\n")}, "", []string{"policies[0] (p)", "pins.txt:2", "not a digest"}},
		{"pin file missing", []string{"config", "check", "--config", write("nopins.yaml",
			"upstreams: [{name: hcl, url: 'https://hcl.example'}]\npolicies: [{name: p, match: ['hcl/*'], pins: "+
				filepath.Join(dir, "absent.txt")+"}]\n")}, "", []string{"policies[0].pins", "absent.txt"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := newRootCommand()
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			cmd.SetArgs(tc.args)
			err := cmd.ExecuteContext(t.Context())
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if !strings.Contains(out.String(), tc.wantOut) {
					t.Fatalf("output %q does not contain %q", out.String(), tc.wantOut)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted an invalid configuration; output %q", out.String())
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %q", err, want)
				}
			}
		})
	}
}

func TestServeRefusesBadConfig(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(p, []byte("upstreams:\n  - {name: a, url: 'https://a.example', default: true}\n  - {name: b, url: 'https://b.example', default: true}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := newRootCommand()
	cmd.SetArgs([]string{"serve", "--config", p})
	err := cmd.ExecuteContext(t.Context())
	if err == nil || !strings.Contains(err.Error(), "default") {
		t.Fatalf("serve with two default upstreams: %v", err)
	}
}

// TestCheckAndServeRefuseTheSame runs files that the document alone does
// not show to be broken through `config check` and `serve`: both must
// refuse each, naming the key, because both use one validation path.
func TestCheckAndServeRefuseTheSame(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	certFile, keyFile := selfSigned(t, dir)
	otherKey := filepath.Join(dir, "other.key")
	{
		_, k := selfSigned(t, t.TempDir())
		data, err := os.ReadFile(k)
		if err != nil {
			t.Fatal(err)
		}
		write("other.key", string(data))
	}
	user, pass := write("user", "robot\n"), write("pass", "s3cret\n")
	empty := write("empty", "\n")
	absent := filepath.Join(dir, "absent")
	aFile := write("a-file", "x")
	env := "AIRLOCK_TEST_UNSET_" + strings.ToUpper(strings.ReplaceAll(t.Name(), "/", "_"))

	// Each file would be valid but for the one key under test.
	file := func(top, upstream string) string {
		return "listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\n" +
			"storage: {path: " + filepath.Join(dir, "data") + "}\n" + top +
			"upstreams:\n  - name: hub\n    url: https://hub.example\n" + upstream
	}
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"missing caFile", file("", "    caFile: "+absent+"\n"),
			[]string{"upstreams[0].caFile: " + absent + " does not exist"}},
		{"caFile without a certificate", file("", "    caFile: "+user+"\n"),
			[]string{"upstreams[0].caFile: " + user + " holds no PEM certificate"}},
		{"missing TLS certificate", file("tls: {certFile: "+absent+", keyFile: "+keyFile+"}\n", ""),
			[]string{"tls.certFile: " + absent + " does not exist"}},
		{"missing TLS key", file("tls: {certFile: "+certFile+", keyFile: "+absent+"}\n", ""),
			[]string{"tls.keyFile: " + absent + " does not exist"}},
		{"TLS key of another certificate", file("tls: {certFile: "+certFile+", keyFile: "+otherKey+"}\n", ""),
			[]string{"tls: certFile and keyFile are not a usable key pair"}},
		{"missing credentials file", file("", "    auth: {usernameFile: "+user+", passwordFile: "+absent+"}\n"),
			[]string{"upstreams[0].auth.passwordFile: " + absent + " does not exist"}},
		{"empty credentials file", file("", "    auth: {usernameFile: "+empty+", passwordFile: "+pass+"}\n"),
			[]string{"upstreams[0].auth.usernameFile: " + empty + " is empty"}},
		{"credentials variable unset", file("", "    auth: {usernameEnv: "+env+"_U, passwordEnv: "+env+"_P}\n"),
			[]string{"upstreams[0].auth.usernameEnv: environment variable " + env + "_U is not set", "upstreams[0].auth.passwordEnv:"}},
		{"missing admin token", strings.Replace(file("", ""), "{listen: 127.0.0.1:0}", "{listen: 127.0.0.1:0, tokenFile: "+absent+"}", 1),
			[]string{"admin.tokenFile: " + absent + " does not exist"}},
		// A file where a directory must be created stops even root.
		{"storage path under a file", strings.Replace(file("", ""), filepath.Join(dir, "data"), filepath.Join(aFile, "data"), 1),
			[]string{"storage.path: cannot create " + filepath.Join(aFile, "data") + ": " + aFile + " is a file"}},
		{"storage path is a file", strings.Replace(file("", ""), filepath.Join(dir, "data"), aFile, 1),
			[]string{"storage.path: " + aFile + " is not a directory"}},
		// 192.0.2.0/24 is TEST-NET-1, never an address of this machine.
		{"listen on another machine's address", strings.Replace(file("", ""), "listen: 127.0.0.1:0", "listen: 192.0.2.1:5000", 1),
			[]string{"listen: cannot listen on 192.0.2.1 on this machine"}},
		{"admin listen on another machine's address", strings.Replace(file("", ""), "{listen: 127.0.0.1:0}", "{listen: \"192.0.2.1:5001\"}", 1),
			[]string{"admin.listen: cannot listen on 192.0.2.1 on this machine"}},
		{"two upstreams on one host", file("", "  - name: hub2\n    url: https://HUB.example\n"),
			[]string{`upstreams[1].url: host "hub.example" is already the host of upstreams[0]`}},
		// Faults of the document that only serve's upstream client and
		// storage driver used to notice.
		{"upstream URL with a path (document)", strings.Replace(file("", ""), "url: https://hub.example", "url: https://hub.example/mirror", 1),
			[]string{`upstreams[0].url: "https://hub.example/mirror" has a path`}},
		{"filesystem maxthreads not a number (document)", strings.Replace(file("", ""), "/data}", "/data, parameters: {maxthreads: lots}}", 1),
			[]string{"storage.parameters.maxthreads:"}},
		{"every problem at once", file("tls: {certFile: "+absent+", keyFile: "+keyFile+"}\nlog: {level: loud}\n",
			"    caFile: "+absent+"\n    maxBlobTransfers: lots\n"),
			[]string{"tls.certFile:", "log.level:", "upstreams[0].caFile:", `upstreams[0].maxBlobTransfers: want an integer, got "lots"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := write(strings.ReplaceAll(tc.name, " ", "-")+".yaml", tc.yaml)
			for _, args := range [][]string{{"config", "check", "--config", path}, {"serve", "--config", path}} {
				// serve must refuse before it serves; if it does not, the
				// timeout stops it and the nil error fails the test.
				ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
				cmd := newRootCommand()
				cmd.SetOut(io.Discard)
				cmd.SetArgs(args)
				err := cmd.ExecuteContext(ctx)
				cancel()
				if err == nil {
					t.Fatalf("%s accepted:\n%s", args[0], tc.yaml)
				}
				for _, want := range tc.want {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("%s error:\n%v\nwant it to contain %q", args[0], err, want)
					}
				}
			}
			// The document alone is fine, except where the document is at fault.
			if _, err := config.Open(path, config.ScopeDocument); err != nil && !strings.Contains(tc.name, "host") && !strings.Contains(tc.name, "every") && !strings.Contains(tc.name, "(document)") {
				t.Errorf("static check refused a file whose only fault is on this machine: %v", err)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !os.IsNotExist(err) {
		t.Errorf("a refused serve created storage.path (%v)", err)
	}
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", keyDER)
	return certFile, keyFile
}
