package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/airlock-registry/airlock/config"
)

func newConfigCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Work with airlock configuration files"}
	var path string
	check := &cobra.Command{
		Use:   "check",
		Short: "Validate a configuration file and explain what is wrong",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(path)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: valid (%d upstreams)\n", displayPath(path), len(cfg.Upstreams))
			return nil
		},
	}
	check.Flags().StringVar(&path, "config", "", "configuration file (default: the embedded default)")
	cmd.AddCommand(check)
	return cmd
}

// loadConfig reads path, or returns the embedded default when path is empty.
func loadConfig(path string) (*config.Config, error) {
	if path == "" {
		return config.Default(), nil
	}
	return config.Load(path)
}

func displayPath(path string) string {
	if path == "" {
		return "embedded default"
	}
	return path
}
