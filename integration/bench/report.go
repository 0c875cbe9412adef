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
	return b.String()
}
