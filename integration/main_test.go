package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/airlock-registry/airlock/integration/airlocktest"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/internal/s3test"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// e2eBinary is the airlock binary every test in this package runs, built
// once in TestMain; e2eBuildErr says why there is none.
var (
	e2eBinary   *airlocktest.Binary
	e2eBuildErr error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "airlock-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	e2eBinary, e2eBuildErr = airlocktest.Build(ctx, dir)
	cancel()
	code := m.Run()
	// The PostgreSQL the scanning tests started, if any.
	if err := pgtest.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
		code = 1
	}
	// The S3 server the cluster tests started, if any.
	if err := s3test.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "s3test:", err)
		code = 1
	}
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// e2eStart starts an airlock with cfg, failing the test when the binary
// could not be built.
func e2eStart(t *testing.T, cfg airlocktest.Config) *airlocktest.Airlock {
	t.Helper()
	if e2eBuildErr != nil {
		t.Fatalf("no airlock binary: %v", e2eBuildErr)
	}
	return e2eBinary.Start(t, cfg)
}

// e2eDockerHub is the usual upstream entry: the default upstream, named
// dockerhub, standing for docker.io.
func e2eDockerHub(up *upstreamtest.Upstream) airlocktest.Upstream {
	return airlocktest.Upstream{
		Name: "dockerhub", URL: up.URL, Aliases: []string{"docker.io"}, Default: true,
		Retry: airlocktest.FastRetry(),
	}
}

// e2eResponse is a fully read HTTP response.
type e2eResponse struct {
	Status int
	Header http.Header
	Body   []byte
}

// e2eGet GETs url with the given header pairs and reads the whole body.
func e2eGet(ctx context.Context, url string, header ...string) (e2eResponse, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return e2eResponse{}, err
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return e2eResponse{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return e2eResponse{Status: resp.StatusCode, Header: resp.Header, Body: body}, err
}

// e2eMustGet is e2eGet that requires status want.
func e2eMustGet(t *testing.T, want int, url string, header ...string) e2eResponse {
	t.Helper()
	r, err := e2eGet(t.Context(), url, header...)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if r.Status != want {
		t.Fatalf("GET %s: status %d, want %d; body: %.300s", url, r.Status, want, r.Body)
	}
	return r
}

// manifestAccept asks for every manifest type the seeded images use.
const manifestAccept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"

// e2ePullHTTP fetches img's manifest (by ref) and every blob through base
// (e.g. airlock.URL + "/v2/dockerhub/library/app") and checks every byte
// against what the upstream holds.
func e2ePullHTTP(t *testing.T, up *upstreamtest.Upstream, base, ref string, img upstreamtest.Image) {
	t.Helper()
	m := e2eMustGet(t, http.StatusOK, base+"/manifests/"+ref, "Accept", manifestAccept)
	if !bytes.Equal(m.Body, img.Manifest) {
		t.Fatalf("manifest %s through airlock differs from upstream's", ref)
	}
	for _, d := range img.Blobs() {
		b := e2eMustGet(t, http.StatusOK, base+"/blobs/"+d.String())
		if got := sha256Of(b.Body); got != d {
			t.Fatalf("blob %s through airlock has digest %s", d, got)
		}
	}
}

func sha256Of(b []byte) v1.Hash {
	h, _, _ := v1.SHA256(bytes.NewReader(b))
	return h
}

// ociError is the error body of the distribution API.
type ociError struct {
	Errors []struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

func e2eErrorCodes(body []byte) []string {
	var e ociError
	_ = json.Unmarshal(body, &e)
	var codes []string
	for _, x := range e.Errors {
		codes = append(codes, x.Code)
	}
	return codes
}

// e2eCredentialFiles writes user and pass as a Kubernetes Secret would mount
// them and returns the auth entry naming the files.
func e2eCredentialFiles(t *testing.T, user, pass string) *airlocktest.Auth {
	t.Helper()
	dir := t.TempDir()
	a := &airlocktest.Auth{UsernameFile: filepath.Join(dir, "username"), PasswordFile: filepath.Join(dir, "password")}
	for f, v := range map[string]string{a.UsernameFile: user, a.PasswordFile: pass} {
		if err := os.WriteFile(f, []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return a
}
