package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
)

// row is one line of the results table.
type row struct {
	id, scenario string
	// cells maps a contender ("airlock", "distribution", "direct",
	// "ceiling") to its measurement; absent means not applicable.
	cells   map[string]string
	ratio   string
	goal    string
	verdict string
}

var columns = []string{"airlock", "distribution", "direct", "ceiling"}

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "**missed**"
}

func ms(d time.Duration) string {
	switch {
	case d >= 100*time.Millisecond:
		return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

func mibps(v float64) string { return fmt.Sprintf("%.0f MiB/s", v) }

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// hostInfo describes the machine a report was produced on.
type hostInfo struct {
	cpu   string
	cores int
	goVer string
	os    string
	date  string
}

func machine() hostInfo {
	h := hostInfo{cpu: "unknown", cores: runtime.NumCPU(), goVer: runtime.Version(),
		os: runtime.GOOS + "/" + runtime.GOARCH, date: time.Now().UTC().Format("2006-01-02")}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				h.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	return h
}

func render(s settings, rows []row, h hostInfo, took time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmarks\n\n")
	fmt.Fprintf(&b, "Produced by `go run ./integration/bench` on %s: %s, %d cores, %s, %s. The run took %v.\n\n",
		h.date, h.cpu, h.cores, h.os, h.goVer, took.Round(time.Second))
	fmt.Fprintf(&b, "Settings: %d rounds (median reported), large blob %d MiB, %d clients on the warm blob, "+
		"cold images of %d × %d MiB layers, origin throttled to %d MiB/s per response for cold image pulls "+
		"and %d MiB/s for scenarios 7 and 8, %d manifest requests per client per round.\n\n",
		s.rounds, s.blobMiB, s.clients, s.layers, s.layerMiB, s.rateMiB, max(1, s.rateMiB/4), s.manifestN)
	b.WriteString("Contenders, all on loopback: **airlock** as its own process; **distribution** v3.1.2 in proxy mode " +
		"(filesystem storage, in-process); **direct** pulls from the origin registry; the **ceiling**, a bare " +
		"`http.ServeContent` of an `*os.File` with the same bytes, as its own process.\n\n")
	b.WriteString("| # | scenario | airlock | distribution | direct | ceiling | airlock ratio | goal | result |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s |", r.id, r.scenario)
		for _, c := range columns {
			v := r.cells[c]
			if v == "" {
				v = "—"
			}
			fmt.Fprintf(&b, " %s |", v)
		}
		ra := r.ratio
		if ra == "" {
			ra = "—"
		}
		fmt.Fprintf(&b, " %s | %s | %s |\n", ra, r.goal, r.verdict)
	}
	var missed []string
	seen := map[string]bool{}
	for _, r := range rows {
		if r.verdict != verdict(true) && !seen[r.id] && causes[r.id] != "" {
			seen[r.id] = true
			missed = append(missed, fmt.Sprintf("- **Scenario %s.** %s", r.id, causes[r.id]))
		}
	}
	if len(missed) > 0 {
		b.WriteString("\n## Why airlock missed\n\n")
		b.WriteString(strings.Join(missed, "\n") + "\n")
	}
	b.WriteString("\n## Spread between runs\n\n" + spread + "\n")
	b.WriteString("\n## Reproduce\n\n```\ngo run ./integration/bench            # this table, about 2 minutes on 2 cores\n" +
		"go run ./integration/bench -only 4,5  # single scenarios, printed only\n" +
		"go test -run '^$' -bench . -count 10 ./proxy > new.txt && benchstat old.txt new.txt\n```\n")
	return b.String()
}

// spread records how far single runs moved on the 2-core VM the goals were
// first measured on, so that a ratio near its goal is read with care.
const spread = "On a 2-core VM the clients share both cores with the servers, and single runs move. " +
	"Over six runs of this command, scenario 1 gave 0.78–1.08× the ceiling's throughput for one client, " +
	"0.78–1.02× for 32 clients and 0.83–1.35× its CPU per GiB; scenario 3 gave 1.19–2.66× the in-memory " +
	"registry. The verdicts of scenarios 2 and 4–9 were the same in every run (distribution's upstream " +
	"GETs per blob in scenario 6 vary with timing, from about 0.65× to 1× the number of clients)."

// causes explains, per scenario, why airlock missed its goal, as found by
// the investigation of that miss; a note is printed only when the run
// misses the goal, and must be revised when the cause is fixed.
var causes = map[string]string{
	"1": "The warm path is `http.ServeContent` of an `*os.File` through a writer that keeps `io.ReaderFrom`, " +
		"and `strace -c` of the airlock process during these pulls counts 3,367 `sendfile` calls against 35 " +
		"`write`s: the bytes do not pass through user space. The gap is not stable: five runs on this " +
		"2-core VM, where the clients share both cores with the server, gave 0.78–1.08× the ceiling's " +
		"throughput for one client, 0.78–0.99× for 32, and 0.83–1.35× its CPU per GiB. Its cause is not " +
		"yet found; a copy in user space is ruled out, scheduling against the clients and the per-request " +
		"work of a hit (metadata touch, metrics, spans) are not.",
	"3": "The handler's own cost for this hit is about 20 µs (`BenchmarkManifestHitByDigest`, 67 allocations), " +
		"so most of airlock's p50 is outside it. Across five runs the in-memory baseline measured 54–199 µs " +
		"and airlock 89–264 µs, meeting the goal in three; the cause of the remaining gap is not yet found.",
	"4": "Timing each request of the pull shows the blobs streaming at the origin's pace and the cold " +
		"manifest by tag taking about 70 ms against 2–4 ms for distribution. The cause is metadata writes " +
		"in series on the first pull: `downloadManifest` (proxy/manifest.go) calls `LinkBlob` once per " +
		"referenced blob, one after another, and `LinkBlob` and `PutTag` go through bbolt's `Batch` " +
		"(storage/metadata/db.go `batch`), which waits `MaxBatchDelay` (10 ms by default) for company " +
		"a lone caller never gets, then commits with an fsync; with `PutManifest` that is seven commits " +
		"before the client gets the manifest. The same `LinkBlob` after `Commit` (proxy/fill.go " +
		"`transfer`) holds back each blob's last byte by ≥10 ms plus the spool's fsync. Fix: link all " +
		"blobs of a manifest in one transaction (a `LinkBlobs`), use `Update` for lone writes or set " +
		"`MaxBatchDelay` to about 1 ms, and release the last byte once the digest has verified, before " +
		"the fsyncs and the link.",
	"5": "Run alone this scenario meets its goal (+1.7 ms); a miss comes from the kernel writing back " +
		"earlier scenarios' data while airlock's first spool write waits in `balance_dirty_pages` — the " +
		"first byte is released only after it is in the spool file.",
}
