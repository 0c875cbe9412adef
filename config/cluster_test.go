package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// clusterBase is a replica's configuration: PostgreSQL metadata and S3
// blobs. Each case below adds a cluster section or breaks one rule.
const clusterBase = `listen: ":5000"
admin: {listen: ":5001"}
storage: {driver: s3, parameters: {bucket: airlock, region: us-east-1}}
metadata: {driver: postgres, dsn: "postgres://db/airlock"}
upstreams: [{name: hub, url: "https://hub.example"}]
`

func TestClusterAccepted(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, yaml string
		want       Cluster
	}{
		{"s3", clusterBase + "cluster: {advertise: \"http://10.0.0.12:5002\", listen: \":5002\"}\n",
			Cluster{Advertise: "http://10.0.0.12:5002", Listen: ":5002"}},
		{"advertise from the environment", clusterBase + "cluster: {listen: \":5002\"}\n", Cluster{Listen: ":5002"}},
		{"https and a name", clusterBase + "cluster: {advertise: \"https://airlock-0.airlock-peers:5002/\", listen: \"0.0.0.0:5002\"}\n",
			Cluster{Advertise: "https://airlock-0.airlock-peers:5002/", Listen: "0.0.0.0:5002"}},
		{"shared filesystem", strings.Replace(clusterBase, "{driver: s3, parameters: {bucket: airlock, region: us-east-1}}", "{path: /nfs/airlock}", 1) +
			"cluster: {advertise: \"http://127.0.0.1:5102\", listen: \"127.0.0.1:5102\", sharedFilesystem: true}\n",
			Cluster{Advertise: "http://127.0.0.1:5102", Listen: "127.0.0.1:5102", SharedFilesystem: true}},
		{"off", clusterBase, Cluster{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := Parse("c.yaml", []byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if c.Cluster != tc.want || c.Cluster.Enabled() != (tc.want != Cluster{}) {
				t.Errorf("cluster = %+v (enabled %v), want %+v", c.Cluster, c.Cluster.Enabled(), tc.want)
			}
		})
	}
}

func TestClusterValidation(t *testing.T) {
	t.Parallel()
	bbolt := strings.Replace(clusterBase, "metadata: {driver: postgres, dsn: \"postgres://db/airlock\"}\n", "", 1)
	filesystem := strings.Replace(clusterBase, "storage: {driver: s3, parameters: {bucket: airlock, region: us-east-1}}\n", "", 1)
	for _, tc := range []struct {
		name, yaml string
		want       string // the whole located problem, file:line: key: message
	}{
		{"listen missing", clusterBase + "cluster: {advertise: \"http://10.0.0.12:5002\"}\n",
			"c.yaml:6: cluster.listen: required to run as one replica of several; set the host:port of the peer listener, such as :5002"},
		{"listen not host:port", clusterBase + "cluster: {listen: \"5002\"}\n",
			`c.yaml:6: cluster.listen: "5002" is not host:port (missing port in address)`},
		{"listen is the registry's", clusterBase + "cluster: {listen: \"127.0.0.1:5000\"}\n",
			`c.yaml:6: cluster.listen: "127.0.0.1:5000" is also the registry listen address; give the peer listener its own port`},
		{"listen is the admin API's", clusterBase + "cluster: {listen: \":5001\"}\n",
			`c.yaml:6: cluster.listen: ":5001" is also admin.listen; give the peer listener its own port`},
		{"advertise relative", clusterBase + "cluster: {listen: \":5002\", advertise: \"10.0.0.12:5002\"}\n",
			`c.yaml:6: cluster.advertise: "10.0.0.12:5002": not an absolute http or https URL`},
		{"advertise scheme", clusterBase + "cluster: {listen: \":5002\", advertise: \"grpc://10.0.0.12:5002\"}\n",
			`c.yaml:6: cluster.advertise: "grpc://10.0.0.12:5002": not an absolute http or https URL`},
		{"advertise path", clusterBase + "cluster: {listen: \":5002\", advertise: \"http://10.0.0.12:5002/peer\"}\n",
			`c.yaml:6: cluster.advertise: "http://10.0.0.12:5002/peer": give only the scheme, host and port`},
		{"advertise every interface", clusterBase + "cluster: {listen: \":5002\", advertise: \"http://0.0.0.0:5002\"}\n",
			`c.yaml:6: cluster.advertise: "http://0.0.0.0:5002": 0.0.0.0 is every interface, not an address peers can reach`},
		{"advertise port", clusterBase + "cluster: {listen: \":5002\", advertise: \"http://10.0.0.12:99999\"}\n",
			`c.yaml:6: cluster.advertise: "http://10.0.0.12:99999": port "99999" is not a number from 1 to 65535`},
		{"bbolt", bbolt + "cluster: {listen: \":5002\"}\n",
			"c.yaml:5: cluster: needs metadata.driver postgres: replicas share image states, tags and fill leases through PostgreSQL, and bbolt is one process's file"},
		{"local filesystem", filesystem + "cluster: {listen: \":5002\"}\n",
			"c.yaml:5: cluster: storage.driver filesystem keeps blobs on this replica's disk, which the others cannot read; use s3, gcs or azure, or set cluster.sharedFilesystem: true"},
		{"shared flag with s3", clusterBase + "cluster: {listen: \":5002\", sharedFilesystem: true}\n",
			"c.yaml:6: cluster.sharedFilesystem: applies to storage.driver filesystem only; storage.driver s3 is shared by every replica already"},
		{"shared flag alone", filesystem + "cluster: {sharedFilesystem: true}\n",
			"c.yaml:5: cluster.listen: required to run as one replica of several"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("c.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("Parse accepted:\n%s", tc.yaml)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error:\n%v\nwant a line containing:\n%s", err, tc.want)
			}
			if n := len(err.(interface{ Unwrap() []error }).Unwrap()); n != 1 {
				t.Errorf("%d problems, want 1:\n%v", n, err)
			}
		})
	}
}

// TestClusterAdvertiseFromEnvironment runs without t.Parallel: it sets
// the process's environment.
func TestClusterAdvertiseFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	doc := fmt.Sprintf("storage: {path: %q, driver: s3, parameters: {bucket: b}}\n", filepath.Join(dir, "data")) +
		"metadata: {driver: postgres, dsn: \"host=db\"}\nupstreams: [{name: hub, url: \"https://hub.example\"}]\ncluster: {listen: \"127.0.0.1:0\"}\n"
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, env, want, err string
	}{
		{"set", "http://10.1.2.3:5002", "http://10.1.2.3:5002", ""},
		{"unset", "", "", path + ":4: cluster.advertise: left out and AIRLOCK_CLUSTER_ADVERTISE is not set; set cluster.advertise to this replica's URL for its peers"},
		{"not a URL", "10.1.2.3:5002", "", path + `:4: cluster.advertise: AIRLOCK_CLUSTER_ADVERTISE="10.1.2.3:5002": not an absolute http or https URL`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(AdvertiseEnv, tc.env)
			cfg, err := Open(path, ScopeDocument)
			if err != nil {
				t.Fatalf("ScopeDocument: %v", err)
			}
			_, hostErr := Open(path, ScopeHost)
			got, err := cfg.Cluster.AdvertiseURL()
			if tc.err == "" {
				if hostErr != nil || err != nil || got != tc.want {
					t.Fatalf("AdvertiseURL() = %q, %v (host check: %v); want %q", got, err, hostErr, tc.want)
				}
				return
			}
			if hostErr == nil || !strings.Contains(hostErr.Error(), tc.err) {
				t.Errorf("host check:\n%v\nwant:\n%s", hostErr, tc.err)
			}
			if err == nil {
				t.Errorf("AdvertiseURL() = %q, want an error", got)
			}
		})
	}
}

func TestStorageDisableRedirects(t *testing.T) {
	t.Parallel()
	c, err := Parse("c.yaml", []byte(clusterBase+"cluster: {listen: \":5002\"}\n"))
	if err != nil || c.Storage.DisableRedirects {
		t.Fatalf("default: %v, %v; want redirects on", c, err)
	}
	s3 := strings.Replace(clusterBase, "region: us-east-1}", "region: us-east-1}, disableRedirects: true", 1)
	if c, err := Parse("c.yaml", []byte(s3)); err != nil || !c.Storage.DisableRedirects {
		t.Fatalf("s3 with disableRedirects: %v", err)
	}
	_, err = Parse("c.yaml", []byte("storage: {disableRedirects: true}\n"+metadataBase))
	if want := "c.yaml:1: storage.disableRedirects: the filesystem driver never redirects; remove the key"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("filesystem with disableRedirects: %v, want %q", err, want)
	}
}

func TestStorageLocalCacheSize(t *testing.T) {
	t.Parallel()
	s3 := strings.Replace(clusterBase, "region: us-east-1}", "region: us-east-1}, localCacheSize: 50GiB", 1)
	c, err := Parse("c.yaml", []byte(s3))
	if err != nil || c.Storage.LocalCacheSize.Bytes() != 50<<30 {
		t.Fatalf("s3 with localCacheSize: %v, %v", c, err)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"storage: {localCacheSize: 1GiB}\n" + metadataBase, "c.yaml:1: storage.localCacheSize: the filesystem driver's blobs are local files already; remove the key"},
		{strings.Replace(clusterBase, "region: us-east-1}", "region: us-east-1}, localCacheSize: -1", 1), `c.yaml:3: storage.localCacheSize: `},
	} {
		if _, err := Parse("c.yaml", []byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.yaml, err, tc.want)
		}
	}
}
