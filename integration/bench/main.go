package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// settings are the sizes and rounds of one run; the defaults finish in
// well under five minutes on a 2-core machine.
type settings struct {
	rounds     int
	blobMiB    int64 // scenarios 1 and 9
	coldMiB    int64 // scenario 5
	clients    int   // scenario 1, many clients
	layerMiB   int64 // scenarios 4, 6, 7 and 8
	layers     int   // scenario 4
	rateMiB    int64 // origin bandwidth per response in the slow scenarios
	manifestN  int   // requests per client in scenarios 2 and 3
	slowSecond time.Duration
	out        string
	only       string // comma-separated scenario numbers; empty runs all
	baseline   string // an earlier airlock binary scenarios 1, 4 and 5 also measure
}

func main() {
	var s settings
	var serve, serveManifest, listen string
	flag.IntVar(&s.rounds, "rounds", 3, "timed rounds per scenario and contender; the median is reported")
	flag.Int64Var(&s.blobMiB, "blob-mib", 256, "size of the large blob in MiB (scenarios 1, 9)")
	flag.Int64Var(&s.coldMiB, "cold-mib", 128, "size of the cold layer in MiB (scenario 5)")
	flag.IntVar(&s.clients, "clients", 32, "concurrent clients of the warm blob (scenario 1)")
	flag.Int64Var(&s.layerMiB, "layer-mib", 16, "layer size in MiB of the cold images (scenarios 4, 6, 7, 8)")
	flag.IntVar(&s.layers, "layers", 4, "layers per cold image (scenario 4)")
	flag.Int64Var(&s.rateMiB, "rate-mib", 64, "origin bandwidth per response in MiB/s for cold pulls, like a distant registry (scenarios 4, 5, 6, 7, 8, 10; 4, 5 and 10 also run unthrottled)")
	flag.IntVar(&s.manifestN, "manifest-requests", 50, "manifest GETs per client per round (scenarios 2, 3)")
	flag.DurationVar(&s.slowSecond, "slow-for", 3*time.Second, "how long the slow clients read (scenario 9)")
	flag.StringVar(&s.out, "out", "docs/benchmarks.md", "Markdown file the report is written to (empty: stdout only)")
	flag.StringVar(&s.only, "only", "", "run only these scenarios, e.g. \"4,5\"; the partial report is printed, not written, unless -out is given")
	flag.StringVar(&s.baseline, "baseline", "", "an airlock binary built from an earlier commit, which scenarios 1, 4 and 5 also measure, as contender \"before\"")
	flag.StringVar(&serve, ceilingFlag, "", "internal: serve this file as the ceiling and do nothing else")
	flag.StringVar(&serveManifest, "manifest", "", "internal: manifest served from memory by -"+ceilingFlag)
	flag.StringVar(&listen, "listen", "", "internal: address for -"+ceilingFlag)
	flag.Parse()
	outGiven := false
	flag.Visit(func(f *flag.Flag) { outGiven = outGiven || f.Name == "out" })
	if s.only != "" && !outGiven {
		s.out = "" // a partial run must not replace the full table
	}

	if serve != "" {
		if err := serveFile(serve, serveManifest, listen); err != nil {
			fmt.Fprintln(os.Stderr, "ceiling:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, s); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, s settings) error {
	began := time.Now()
	dir, err := os.MkdirTemp("", "airlock-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	logf("building airlock")
	bin, err := buildAirlock(ctx, dir)
	if err != nil {
		return err
	}
	b, err := newBench(ctx, s, dir, bin)
	if err != nil {
		return err
	}
	defer b.close()

	rows, err := b.runAll(ctx)
	if err != nil {
		return err
	}
	report := render(s, rows, machine(), time.Since(began))
	fmt.Print(report)
	if s.out != "" {
		if err := os.MkdirAll(filepath.Dir(s.out), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(s.out, []byte(report), 0o644); err != nil {
			return fmt.Errorf("write the report: %w", err)
		}
		logf("wrote %s", s.out)
	}
	return nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}
