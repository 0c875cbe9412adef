package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// TestBlobStoreForScenario14 starts the S3 server as scenario 14 does and
// checks that the storage lines it returns are YAML that names a bucket
// on it, with the driver's parameters as the tests give them.
func TestBlobStoreForScenario14(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cb := &clusterBench{bench: &bench{}}
	storage, cluster, err := cb.blobStore(ctx, t.TempDir())
	defer cb.stopS3()
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Storage map[string]any `yaml:"storage"`
		Cluster map[string]any `yaml:"cluster"`
	}
	src := "storage:\n  path: /data\n" + storage + "\ncluster:\n  listen: :5002\n" + cluster + "\n"
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		t.Fatalf("the storage lines are not YAML: %v\n%s", err, src)
	}
	if cb.store == "blobs in a shared directory" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("versitygw is not installed (CI=true forbids the shared directory)")
		}
		if doc.Cluster["sharedFilesystem"] != true {
			t.Errorf("a shared directory without cluster.sharedFilesystem:\n%s", src)
		}
		t.Skip("versitygw is not installed; the scenario shares a directory")
	}
	params, _ := doc.Storage["parameters"].(map[string]any)
	if doc.Storage["driver"] != "s3" || params["bucket"] == nil || params["forcepathstyle"] != true ||
		!strings.HasPrefix(fmt.Sprint(params["regionendpoint"]), "http://127.0.0.1:") || doc.Cluster["sharedFilesystem"] != nil {
		t.Errorf("storage for S3:\n%s", src)
	}
}

// TestUpstreamBytesReadsOnlyTheOrigin checks the leader's test of
// scenario 14: the blob bytes each replica fetched from the origin, not
// those it read from a peer or its store, nor another upstream's, with
// the labels in either order.
func TestUpstreamBytesReadsOnlyTheOrigin(t *testing.T) {
	t.Parallel()
	pages := []string{
		`airlock_bytes_total{source="upstream",upstream="origin"} 3.3554432e+07
airlock_bytes_total{source="peer",upstream="origin"} 99
airlock_bytes_total{source="upstream",upstream="pinned"} 7
`,
		`# HELP airlock_bytes_total Blob bytes by upstream and source.
airlock_bytes_total{upstream="origin",source="cache"} 5
airlock_bytes_total{upstream="origin",source="upstream"} 12
`,
		"airlock_fills_in_flight 0\n",
	}
	cb := &clusterBench{bench: &bench{client: newClient()}}
	for _, page := range pages {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/metrics" {
				http.NotFound(w, r)
				return
			}
			fmt.Fprint(w, page)
		}))
		t.Cleanup(srv.Close)
		cb.replicas = append(cb.replicas, replica{adminURL: srv.URL})
	}
	got, err := cb.upstreamBytes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if want := []float64{32 << 20, 12, 0}; !slices.Equal(got, want) {
		t.Errorf("upstreamBytes = %v, want %v", got, want)
	}
}
