package integration

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/airlock-registry/airlock/integration/airlocktest"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
)

// otlpCollector is an OTLP/HTTP trace receiver on loopback that keeps the
// names of the spans it is sent, decoded from the protocol's protobuf.
type otlpCollector struct {
	mu    sync.Mutex
	spans map[string]int
	attrs map[string]string
}

func (c *otlpCollector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/traces" || r.Method != http.MethodPost {
		http.NotFound(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var req coltrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(body, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	for _, rs := range req.ResourceSpans {
		for _, a := range rs.GetResource().GetAttributes() {
			c.attrs[a.Key] = a.GetValue().GetStringValue()
		}
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				c.spans[s.Name]++
			}
		}
	}
	c.mu.Unlock()
	out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func TestTracesExportedOverOTLP(t *testing.T) {
	t.Parallel()
	col := &otlpCollector{spans: map[string]int{}, attrs: map[string]string{}}
	srv := httptest.NewServer(col)
	defer srv.Close()
	up := upstreamtest.New(t, upstreamtest.Options{})
	img := up.PushImage(t, "library/app", "1", 16<<10, 1)
	a := e2eStart(t, airlocktest.Config{
		Upstreams: []airlocktest.Upstream{e2eDockerHub(up)},
		Tracing:   &airlocktest.Tracing{Endpoint: strings.TrimPrefix(srv.URL, "http://"), Insecure: true},
	})
	e2ePullHTTP(t, up, a.URL+"/v2/library/app", "1", img)
	// Spans are batched; stopping airlock flushes them.
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	for _, name := range []string{"registry manifest", "registry blob", "upstream.resolve_tag", "upstream.fetch_manifest", "fill", "verify.commit"} {
		if col.spans[name] == 0 {
			t.Errorf("collector received no %q span; got %v", name, col.spans)
		}
	}
	if col.attrs["service.name"] != "airlock" {
		t.Errorf("service.name = %q, want airlock", col.attrs["service.name"])
	}
}
