package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/storage/metadata"
	"github.com/airlock-registry/airlock/storage/metadata/postgres"
)

// runCLI runs airlock with args as a user would, returning what it printed
// and its error.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(t.Context())
	return out.String(), err
}

// singleNode writes a stopped single node's bbolt store under dir: an
// upstream identity, a tag, a manifest with its link, and an image an
// admin blocked, with its audit record.
func singleNode(t *testing.T, dir string) (repo string, d digest.Digest) {
	t.Helper()
	db, err := metadata.Open(filepath.Join(dir, "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := t.Context()
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`)
	repo, d = "hub/library/alpine", digest.FromBytes(body)
	const mt = "application/vnd.oci.image.manifest.v1+json"
	if _, err := db.Reidentify(ctx, map[string]string{"hub": "https://registry-1.docker.io"}); err != nil {
		t.Fatal(err)
	}
	if err := db.PutManifest(ctx, repo, metadata.ManifestRecord{Digest: d, MediaType: mt, Body: body},
		metadata.Link{Size: int64(len(body)), MediaType: mt}); err != nil {
		t.Fatal(err)
	}
	if err := db.PutTag(ctx, repo, "3.20", metadata.TagRecord{Digest: d, MediaType: mt, Size: int64(len(body)), Resolved: time.Now()}); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	if _, err := db.UpdateImage(ctx, repo, d, now, func(img *metadata.Image) (metadata.Change, error) {
		img.MediaType = mt
		img.Tags = []string{"3.20"}
		img.State = metadata.StateBlocked
		img.Override = &metadata.Override{Action: metadata.ActionBlock, By: "admin:ann", Reason: "incident 7", At: now}
		return metadata.Change{Actor: "admin:ann", Action: metadata.ActionBlock, Reason: "incident 7"}, nil
	}); err != nil {
		t.Fatal(err)
	}
	return repo, d
}

// writeClusterConfig writes a replica's configuration whose metadata
// section names dsn through a dsnFile, as a mounted Secret would.
func writeClusterConfig(t *testing.T, dir, driver, dsn string) string {
	t.Helper()
	dsnFile := filepath.Join(dir, "dsn")
	if err := os.WriteFile(dsnFile, []byte(dsn+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	meta := fmt.Sprintf("metadata: {driver: postgres, dsnFile: %q}\n", dsnFile)
	if driver == "bbolt" {
		meta = "metadata: {driver: bbolt}\n"
	}
	path := filepath.Join(dir, "airlock.yaml")
	doc := fmt.Sprintf("storage: {path: %q}\n%supstreams: [{name: hub, url: \"https://registry-1.docker.io\"}]\n", dir, meta)
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestMetadataMigrate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	repo, d := singleNode(t, dir)
	dsn := pgtest.DSN(t)
	cfg := writeClusterConfig(t, dir, "postgres", dsn)

	out, err := runCLI(t, "metadata", "migrate", "--from", "bbolt", "--to", "postgres", "--config", cfg)
	if err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	for _, want := range []string{
		"copied " + filepath.Join(dir, "metadata.db") + " into PostgreSQL",
		"1  upstream identities", "1  tags", "1  manifests", "1  manifest links", "1  images", "1  audit records",
		"audit log: 1 records chained to head ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// The database answers as the bbolt file did.
	s, err := postgres.Open(t.Context(), postgres.Options{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	img, err := s.Image(t.Context(), repo, d)
	if err != nil || img.State != metadata.StateBlocked || img.Override == nil || img.Override.Reason != "incident 7" {
		t.Fatalf("imported image: %+v, %v", img, err)
	}
	tag, err := s.Tag(t.Context(), repo, "3.20")
	if err != nil || tag.Digest != d {
		t.Fatalf("imported tag: %+v, %v", tag, err)
	}
	check, err := s.VerifyAudit(t.Context())
	if err != nil || !check.OK || check.Records != 1 {
		t.Fatalf("imported audit log: %+v, %v", check, err)
	}
	src, err := metadata.OpenReadOnly(filepath.Join(dir, "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	if s.ID() != src.ID() {
		t.Errorf("store identity %q, want the bbolt file's %q: event IDs would not continue", s.ID(), src.ID())
	}
	src.Close()

	// A second run finds the database in use and copies nothing.
	out, err = runCLI(t, "metadata", "migrate", "--from", "bbolt", "--to", "postgres", "--config", cfg)
	if err == nil || !strings.Contains(err.Error(), "the PostgreSQL store is not empty") {
		t.Fatalf("second migrate: %v\n%s; want a refusal saying the store is not empty", err, out)
	}
}

func TestMetadataMigrateRefuses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	singleNode(t, dir)
	pg := writeClusterConfig(t, dir, "postgres", "postgres://127.0.0.1:1/none?connect_timeout=1")
	bbolt := writeClusterConfig(t, t.TempDir(), "bbolt", "")
	empty := t.TempDir()
	emptyCfg := writeClusterConfig(t, empty, "postgres", "postgres://127.0.0.1:1/none?connect_timeout=1")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"the other way", []string{"--from", "postgres", "--to", "bbolt", "--config", pg},
			`migrate copies --from bbolt --to postgres only, not --from "postgres" --to "bbolt"`},
		{"no config", []string{"--from", "bbolt", "--to", "postgres"}, `required flag(s) "config" not set`},
		{"bbolt target", []string{"--from", "bbolt", "--to", "postgres", "--config", bbolt},
			"metadata.driver is bbolt; set it to postgres with metadata.dsn or metadata.dsnFile, the database to copy into"},
		{"no bbolt file", []string{"--from", "bbolt", "--to", "postgres", "--config", emptyCfg},
			"opening the bbolt store (stop airlock first; --bbolt names another file): metadata: no index at " + filepath.Join(empty, "metadata.db")},
		{"database down", []string{"--from", "bbolt", "--to", "postgres", "--config", pg}, "opening the PostgreSQL store: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, err := runCLI(t, append([]string{"metadata", "migrate"}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("migrate %v: %v\n%s\nwant an error with %q", tc.args, err, out, tc.want)
			}
		})
	}
}

// TestMetadataMigrateLocked: a running airlock holds the bbolt file;
// migrate says to stop it rather than copy a store that is changing.
func TestMetadataMigrateLocked(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	singleNode(t, dir)
	db, err := metadata.Open(filepath.Join(dir, "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	cfg := writeClusterConfig(t, dir, "postgres", "postgres://127.0.0.1:1/none?connect_timeout=1")
	_, err = runCLI(t, "metadata", "migrate", "--from", "bbolt", "--to", "postgres", "--config", cfg)
	if err == nil || !regexp.MustCompile(`stop airlock first.*is locked by another process`).MatchString(err.Error()) {
		t.Fatalf("migrate of a store in use: %v", err)
	}
}
