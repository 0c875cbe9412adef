package scanner

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quay/claircore"

	"github.com/airlock-registry/airlock/scanner/scannertest"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// debian100 is a Debian 12 root with 100 packages, each with a 64 KiB
// file of incompressible bytes; seed makes the layer unique.
func debian100(seed uint64) map[string]string {
	var pkgs []scannertest.Deb
	for i := range 100 {
		pkgs = append(pkgs, scannertest.Deb{Name: fmt.Sprintf("pkg%03d", i), Version: fmt.Sprintf("1.%d.0-1", i)})
	}
	pkgs[0] = scannertest.Deb{Name: "libssl3", Version: "3.0.11-1~deb12u2", Source: "openssl"}
	files := scannertest.DebianFiles(pkgs...)
	r := rand.New(rand.NewPCG(seed, 100))
	for _, p := range pkgs {
		b := make([]byte, 64<<10)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		files["usr/lib/"+p.Name] = string(b)
	}
	return files
}

// BenchmarkScan measures a scan of an image of 100 Debian packages, from
// Enqueue to the done result: "new" indexes a new layer each time,
// "shared-base" a new small layer on a base indexed before.
func BenchmarkScan(b *testing.B) {
	e := open(b, "", nil)
	e.importData(b, scannertest.Update{Updater: scannertest.DebianUpdater, Fingerprint: "bench", Vulns: []*claircore.Vulnerability{
		scannertest.DebianVuln("CVE-2024-5535", "openssl", "3.0.14-1~deb12u1", "medium", claircore.High),
	}})
	e.run(b)
	base := scannertest.Layer(b, scannertest.Gzip, debian100(1<<40))
	warm := e.content.addImage(b, base)
	e.enqueue(b, warm)
	e.results.wait(b, warm, time.Minute, isDone)

	for _, mode := range []string{"new", "shared-base"} {
		b.Run(mode, func(b *testing.B) {
			bytes0 := testutil.ToFloat64(e.s.metrics.layerBytes)
			var total time.Duration
			i := 0
			for b.Loop() {
				b.StopTimer()
				i++
				var d digest.Digest
				if mode == "new" {
					d = e.content.addImage(b, scannertest.Layer(b, scannertest.Gzip, debian100(uint64(i))))
				} else {
					d = e.content.addImage(b, base, scannertest.Layer(b, scannertest.Gzip, map[string]string{"app/bin": fmt.Sprint(i)}))
				}
				b.StartTimer()
				t0 := time.Now()
				e.enqueue(b, d)
				sc := e.results.wait(b, d, 5*time.Minute, isDone)
				total += time.Since(t0)
				if sc.Packages != 100 || len(sc.Findings) != 1 || sc.Findings[0].Severity != metadata.SeverityHigh {
					b.Fatalf("scan %+v", sc)
				}
			}
			mb := (testutil.ToFloat64(e.s.metrics.layerBytes) - bytes0) / (1 << 20)
			b.ReportMetric(float64(total.Milliseconds())/float64(i), "ms/enqueue-to-done")
			b.ReportMetric(mb/total.Seconds(), "MB/s-indexed")
			b.ReportMetric(100*float64(i)/total.Seconds(), "packages/s")
		})
	}
}
