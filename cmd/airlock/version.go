package main

import (
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
)

// version and commit override what Go records about the build, for builds
// made outside a module-aware checkout (a release tarball, a Dockerfile
// that copies sources without .git):
//
//	go build -ldflags "-X main.version=v1.2.0 -X main.commit=$(git rev-parse HEAD)" ./cmd/airlock
//
// They are set only by the linker and never changed at run time.
var (
	version string
	commit  string
)

// buildInfo says which airlock is running: the module version, the VCS
// revision it was built from and whether the tree had uncommitted changes.
type buildInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	Modified  bool   `json:"modified"`
	GoVersion string `json:"goVersion"`
}

// readBuildInfo reads what `go build` stamped into the binary, overridden
// by -ldflags -X where set.
func readBuildInfo() buildInfo {
	b := buildInfo{Version: "(devel)", Commit: "unknown", GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v := bi.Main.Version; v != "" {
			b.Version = v
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Commit = s.Value
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	if version != "" {
		b.Version = version
	}
	if commit != "" {
		b.Commit, b.Modified = commit, false
	}
	return b
}

// CommitLabel is the commit as one word: the revision, with "-modified"
// when the tree had uncommitted changes.
func (b buildInfo) CommitLabel() string {
	if b.Modified {
		return b.Commit + "-modified"
	}
	return b.Commit
}

func (b buildInfo) String() string {
	return fmt.Sprintf("%s (commit %s, %s)", b.Version, b.CommitLabel(), b.GoVersion)
}

// collector is airlock_build_info: always 1, labelled with the build, so
// that dashboards can show which version runs where and when it changed.
func (b buildInfo) collector() prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "airlock_build_info",
		Help: "Always 1; the labels say which airlock build is running.",
		ConstLabels: prometheus.Labels{
			"version": b.Version, "commit": b.CommitLabel(), "goversion": b.GoVersion,
		},
	})
	g.Set(1)
	return g
}

func newVersionCommand(info buildInfo) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print airlock's version and the commit it was built from",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch output {
			case "":
				fmt.Fprintf(cmd.OutOrStdout(), "airlock %s\n", info)
			case "json":
				enc := json.NewEncoder(cmd.OutOrStdout())
				return enc.Encode(info)
			default:
				return fmt.Errorf("unknown output format %q; use -o json, or no -o for text", output)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json, or text when empty")
	return cmd
}
