package main

import (
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/airlock-registry/airlock/config"
)

func newConfigCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Work with airlock configuration files"}
	var path string
	var static bool
	check := &cobra.Command{
		Use:   "check",
		Short: "Validate a configuration file and explain what is wrong",
		Long: "Validate a configuration file as serve and SIGHUP do, and list every problem with its line and key.\n" +
			"Besides the file itself this checks what it names on this machine: the listen hosts, TLS, CA and\n" +
			"credentials files, admin.tokenFile, pin files, webhook secrets and a writable storage.path. Use --static where those are not\n" +
			"present, as in CI.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			scope := config.ScopeHost
			if static {
				scope = config.ScopeDocument
			}
			cfg, err := config.Open(path, scope)
			if err != nil {
				return err
			}
			if !static {
				// The pin files parse, as serve and SIGHUP will read them.
				if _, err := compilePolicies(cfg, slog.New(slog.DiscardHandler)); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: valid (%d upstreams)\n", displayPath(path), len(cfg.Upstreams))
			return nil
		},
	}
	check.Flags().StringVar(&path, "config", "", "configuration file (default: the embedded default)")
	check.Flags().BoolVar(&static, "static", false, "check the file alone, not the files and directories it names on this machine")
	cmd.AddCommand(check)
	return cmd
}

// loadConfig returns the configuration serve and SIGHUP use: the file at
// path, or the embedded default when path is empty, checked against this
// machine exactly as `airlock config check` checks it.
func loadConfig(path string) (*config.Config, error) {
	return config.Open(path, config.ScopeHost)
}

func displayPath(path string) string {
	if path == "" {
		return "embedded default"
	}
	return path
}
