package proxy

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// TestPullIsTraced checks that a cold pull yields one trace covering the
// request, the manifest resolution, the fill and its verification.
func TestPullIsTraced(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(4096, 1)
	o.push(t, "library/app:1", img)
	ld, want := layerOf(t, img, 0)
	e := newEnv(t, o)

	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	e.proxy.tracer = tp.Tracer("test")
	srv := httptest.NewServer(e.proxy)
	defer srv.Close()

	for _, path := range []string{"/v2/app/manifests/1", "/v2/app/blobs/" + ld.String()} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d", path, resp.StatusCode)
		}
		if path != "/v2/app/manifests/1" && !bytes.Equal(buf.Bytes(), want) {
			t.Fatal("wrong blob bytes")
		}
	}
	// The fill's span ends after the client's response; wait for it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		names := map[string]int{}
		for _, s := range rec.Ended() {
			names[s.Name()]++
		}
		if names["fill"] == 1 && names["registry blob"] == 1 {
			for _, n := range []string{"registry manifest", "registry blob", "upstream.resolve_tag", "upstream.fetch_manifest", "cache.manifest", "verify.commit"} {
				if names[n] == 0 {
					t.Fatalf("no %q span; spans: %v", n, names)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no fill span; spans: %v", names)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var blobSpan, fillSpan sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		switch s.Name() {
		case "registry blob":
			blobSpan = s
		case "fill":
			fillSpan = s
		}
	}
	if fillSpan.SpanContext().TraceID() != blobSpan.SpanContext().TraceID() {
		t.Fatal("the fill is not in the trace of the request that started it")
	}
}
