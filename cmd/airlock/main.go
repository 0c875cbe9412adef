// Command airlock runs the airlock registry gateway and its admin tools.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "airlock:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	info := readBuildInfo()
	root := &cobra.Command{
		Use:           "airlock",
		Short:         "A container-registry gateway that serves only verified, approved images",
		Version:       info.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("airlock {{.Version}}\n")
	root.AddCommand(newServeCommand(), newConfigCommand(), newVersionCommand(info))
	root.AddCommand(newQuarantineCommand(), newImagesCommand(), newReleaseCommand(), newBlockCommand(),
		newUnblockCommand(), newRescanCommand(), newAuditCommand(), newVulndbCommand(), newMetadataCommand())
	return root
}
