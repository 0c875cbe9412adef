package s3test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func driver(t *testing.T, params map[string]any) storagedriver.StorageDriver {
	t.Helper()
	d, err := factory.Create(t.Context(), "s3", params)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestParamsGiveFreshBuckets: two calls name two buckets, each empty and
// each taking what the s3-aws driver writes to it.
func TestParamsGiveFreshBuckets(t *testing.T) {
	a, b := Params(t), Params(t)
	if a["bucket"] == b["bucket"] {
		t.Fatalf("two calls gave one bucket: %v", a["bucket"])
	}
	if ep := a["regionendpoint"].(string); !strings.HasPrefix(ep, "http://127.0.0.1:") {
		t.Errorf("the server is at %s, not on loopback", ep)
	}
	da, db := driver(t, a), driver(t, b)
	if err := da.PutContent(t.Context(), "/only/in/a", []byte("a")); err != nil {
		t.Fatal(err)
	}
	if got, err := da.GetContent(t.Context(), "/only/in/a"); err != nil || string(got) != "a" {
		t.Fatalf("read back %q, %v", got, err)
	}
	if _, err := db.Stat(t.Context(), "/only/in/a"); !errors.As(err, new(storagedriver.PathNotFoundError)) {
		t.Errorf("an object written to one bucket shows in the other: %v", err)
	}
}

// TestRestartKeepsData: a private server stopped refuses connections, and
// once restarted on the same address serves what it held.
func TestRestartKeepsData(t *testing.T) {
	s := Start(t)
	d := driver(t, s.Params(t))
	content := bytes.Repeat([]byte("x"), 1000)
	if err := d.PutContent(t.Context(), "/kept", content); err != nil {
		t.Fatal(err)
	}
	s.Stop(t)
	if _, err := d.Stat(t.Context(), "/kept"); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("a stopped server answered Stat: %v", err)
	}
	s.Restart(t)
	r, err := d.Reader(t.Context(), "/kept", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("after a restart read %d bytes (%v), want %d", len(got), err, len(content))
	}
}

// TestBinaryLookup: VERSITYGW wins when set and must name a file; without
// it the binary is looked for on PATH, then in GOBIN and GOPATH's bin;
// found nowhere, the error says how to install it.
func TestBinaryLookup(t *testing.T) {
	empty := t.TempDir()
	gobin := t.TempDir()
	gopath := t.TempDir()
	fake, inGopath := gobin+"/versitygw", gopath+"/bin/versitygw"
	if err := os.Mkdir(gopath+"/bin", 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{fake, inGopath} {
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name          string
		env           map[string]string
		want, wantErr string
	}{
		{"VERSITYGW names a file", map[string]string{"VERSITYGW": fake}, fake, ""},
		{"VERSITYGW names nothing", map[string]string{"VERSITYGW": empty + "/nothing"}, "", "VERSITYGW=" + empty + "/nothing"},
		{"in GOBIN", map[string]string{"GOBIN": gobin}, fake, ""},
		{"in the bin of a GOPATH entry", map[string]string{"GOPATH": empty + ":" + gopath}, inGopath, ""},
		{"nowhere", nil, "", "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, k := range []string{"VERSITYGW", "GOBIN", "GOPATH"} {
				t.Setenv(k, c.env[k])
			}
			t.Setenv("PATH", empty)
			t.Setenv("HOME", empty)
			got, err := Binary()
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("Binary() = %q, %v; want an error naming %q", got, err, c.wantErr)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("Binary() = %q, %v; want %s", got, err, c.want)
			}
		})
	}
}
