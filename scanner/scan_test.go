package scanner

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quay/claircore"

	"github.com/airlock-registry/airlock/scanner/scannertest"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// The Debian data every scan test matches against.
var debianData = scannertest.Update{
	Updater:     scannertest.DebianUpdater,
	Fingerprint: "v1",
	Vulns: []*claircore.Vulnerability{
		scannertest.DebianVuln("CVE-2024-5535", "openssl", "3.0.14-1~deb12u1", "medium", claircore.High),
		scannertest.DebianVuln("CVE-2023-4039", "gcc-12", "", "low", claircore.Medium),
		scannertest.DebianVuln("CVE-2022-0001", "zlib", "0", "high", claircore.Critical), // "0": not affected
	},
}

func TestScanDebian(t *testing.T) {
	t.Parallel()
	e := open(t, "", nil)
	e.importData(t, debianData)
	e.run(t)

	tests := []struct {
		name string
		comp scannertest.Compression
		pkgs []scannertest.Deb
		want []metadata.Finding
	}{
		{
			name: "vulnerable openssl",
			comp: scannertest.Gzip,
			pkgs: []scannertest.Deb{{Name: "libssl3", Version: "3.0.11-1~deb12u2", Source: "openssl"}, {Name: "bash", Version: "5.2.15-2+b2"}},
			want: []metadata.Finding{{
				ID: "CVE-2024-5535", Package: "libssl3", Installed: "3.0.11-1~deb12u2", Fixed: "3.0.14-1~deb12u1",
				Severity: metadata.SeverityHigh, SourceSeverity: "medium",
				Link: "https://security-tracker.debian.org/tracker/CVE-2024-5535", Updater: "debian/updater",
			}},
		},
		{
			name: "fixed openssl",
			comp: scannertest.Zstd,
			pkgs: []scannertest.Deb{{Name: "libssl3", Version: "3.0.14-1~deb12u1", Source: "openssl"}, {Name: "bash", Version: "5.2.15-2+b2"}},
		},
		{
			name: "unfixed gcc, unaffected zlib, uncompressed layer",
			comp: scannertest.Uncompressed,
			pkgs: []scannertest.Deb{{Name: "libgcc-s1", Version: "12.2.0-14", Source: "gcc-12"}, {Name: "zlib1g", Version: "1:1.2.13.dfsg-1", Source: "zlib"}},
			want: []metadata.Finding{{
				ID: "CVE-2023-4039", Package: "libgcc-s1", Installed: "12.2.0-14",
				Severity: metadata.SeverityMedium, SourceSeverity: "low",
				Link: "https://security-tracker.debian.org/tracker/CVE-2023-4039", Updater: "debian/updater",
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			layer := scannertest.Layer(t, tt.comp, scannertest.DebianFiles(tt.pkgs...))
			d := e.content.addImage(t, layer)
			ld, _ := layer.Digest()
			if sc := e.enqueue(t, d); sc.State != metadata.ScanQueued {
				t.Fatalf("Enqueue: state %q, want queued", sc.State)
			}
			sc := e.results.wait(t, d, time.Minute, isDone)
			if sc.Distribution != "Debian GNU/Linux 12 (bookworm)" {
				t.Errorf("distribution %q", sc.Distribution)
			}
			if sc.Packages != len(tt.pkgs) || sc.Layers != 1 || sc.Size <= 0 || sc.Data == "" {
				t.Errorf("packages %d layers %d size %d data %q; want %d, 1, >0, set", sc.Packages, sc.Layers, sc.Size, sc.Data, len(tt.pkgs))
			}
			for i := range tt.want {
				tt.want[i].Layer = digestOf(ld.String())
			}
			if !equalFindings(sc.Findings, tt.want) {
				t.Errorf("findings:\n got %+v\nwant %+v", sc.Findings, tt.want)
			}
			// Enqueue reports "queued" once its row is committed, and a
			// worker may claim the job and report "scanning" first: the
			// reports' times, not their arrival, order them (the gate
			// drops a report older than the one it holds).
			states := []string{}
			var queued, running time.Time
			for _, r := range e.results.of(d) {
				states = append(states, r.State)
				switch r.State {
				case metadata.ScanQueued:
					queued = r.Queued
				case metadata.ScanRunning:
					running = r.Started
				}
			}
			sorted := slices.Sorted(slices.Values(states[:len(states)-1]))
			if len(states) != 3 || states[2] != metadata.ScanDone || !slices.Equal(sorted, []string{metadata.ScanQueued, metadata.ScanRunning}) {
				t.Errorf("reported states %q, want queued and scanning (in either order), then done", strings.Join(states, " "))
			}
			if running.Before(queued) {
				t.Errorf("the scanning report (started %s) is dated before the queued one (%s)", running, queued)
			}
			st, err := e.s.Status(t.Context(), d)
			if err != nil || st.State != metadata.ScanDone || len(st.Findings) != len(tt.want) || st.Finished.IsZero() || st.Attempts != 1 {
				t.Errorf("Status = %+v, %v", st, err)
			}
		})
	}
	if n := testutil.ToFloat64(e.s.metrics.scans.WithLabelValues("done")); n != float64(len(tests)) {
		t.Errorf("scans_total{result=done} = %v, want %d", n, len(tests))
	}
}
