package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/airlock-registry/airlock/scanner/scannertest"
)

// TestCleanupTBRunsCleanupsAndSkips checks the adapter pgtest runs on:
// cleanups run last first, and a Skip ends the fixture as an error.
func TestCleanupTBRunsCleanupsAndSkips(t *testing.T) {
	t.Parallel()
	tb := &cleanupTB{fixtureTB: &fixtureTB{ctx: t.Context(), dir: t.TempDir()}}
	var order []int
	tb.Cleanup(func() { order = append(order, 1) })
	tb.Cleanup(func() { order = append(order, 2) })
	tb.cleanup()
	tb.cleanup() // a second call runs nothing again
	if !slices.Equal(order, []int{2, 1}) {
		t.Errorf("cleanups ran in order %v, want [2 1]", order)
	}
	func() {
		defer func() {
			f, ok := recover().(fixtureFailure)
			if !ok || f.msg != "PostgreSQL is not installed" || !tb.skipped {
				t.Errorf("Skip: recovered %v, skipped %v; want the fixture failure with its message", f, tb.skipped)
			}
		}()
		tb.Skip("PostgreSQL is not installed")
		t.Error("Skip returned")
	}()
}

// TestPostgresForScenario13 starts PostgreSQL as scenario 13 does,
// connects to the database it gave, and stops it.
func TestPostgresForScenario13(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	dsn, stop, err := postgres(ctx, t.TempDir())
	if errors.Is(err, errNoPostgres) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%v (CI=true forbids skipping)", err)
		}
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		stop()
		t.Fatalf("connect to %s: %v", dsn, err)
	}
	var one int
	err = conn.QueryRow(ctx, "SELECT 1").Scan(&one)
	conn.Close(ctx)
	if err != nil || one != 1 {
		t.Errorf("SELECT 1: %d, %v", one, err)
	}
	stop()
	if c, err := pgx.Connect(ctx, dsn); err == nil {
		c.Close(ctx)
		t.Errorf("%s still answers after stop", dsn)
	}
}

// TestSeedScanImage checks scenario 13's images: served by the origin,
// one uncompressed layer holding a Debian root of scanPackages packages,
// each image's layer its own.
func TestSeedScanImage(t *testing.T) {
	t.Parallel()
	o, err := startOrigin()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(o.close)
	dir := t.TempDir()
	b := &bench{dir: dir, origin: o, seed: &seeder{dir: dir, origin: o}, client: newClient()}
	sb := &scanBench{bench: b}
	var layers []string
	for i := range 2 {
		img, err := sb.seedScanImage(t.Context(), "bench/scan/test", "v1", scannertest.DebianBase(scanPackages))
		if err != nil {
			t.Fatal(err)
		}
		if d, _, err := b.client.manifest(t.Context(), o.URL, img.Repo, img.Tag); err != nil || d != img.Digest {
			t.Fatalf("image %d: the origin serves %s (%v), want %s", i, d, err, img.Digest)
		}
		if len(img.Blobs) != 2 {
			t.Fatalf("image %d has %d blobs, want a config and one layer", i, len(img.Blobs))
		}
		layer := img.Blobs[1]
		layers = append(layers, layer.Digest)
		raw, err := os.ReadFile(layer.Path)
		if err != nil {
			t.Fatal(err)
		}
		status := tarFile(t, raw, "var/lib/dpkg/status")
		if n := strings.Count(status, "Package: "); n != scanPackages {
			t.Errorf("image %d: dpkg status lists %d packages, want %d", i, n, scanPackages)
		}
		if !strings.Contains(status, "Package: libssl3\nStatus: install ok installed") {
			t.Errorf("image %d: no libssl3 in its dpkg status", i)
		}
	}
	if layers[0] == layers[1] {
		t.Errorf("two seeded images share layer %s; each must be new to the scanner", layers[0])
	}
}

// tarFile returns the content of name in the tar raw.
func tarFile(t *testing.T, raw []byte, name string) string {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			t.Fatalf("the layer has no %s", name)
		}
		if err != nil {
			t.Fatalf("the layer is not a tar: %v", err)
		}
		if h.Name == name {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}
	}
}
