package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// The admin verbs talk to a running airlock's admin API. They share the
// connection flags, which default to the environment so that a shell (or a
// CI job) sets them once.
const (
	envServer     = "AIRLOCK_SERVER"
	envTokenFile  = "AIRLOCK_TOKEN_FILE"
	defaultServer = "http://127.0.0.1:5001"
)

// adminConn holds the --server and --token-file flags of one command.
type adminConn struct {
	server    string
	tokenFile string

	// token is what client read, for explain.
	token string
}

func (a *adminConn) register(fs *pflag.FlagSet) {
	fs.StringVar(&a.server, "server", "", "airlock's admin API, its admin.listen address (default $"+envServer+", else "+defaultServer+")")
	fs.StringVar(&a.tokenFile, "token-file", "", "file holding an admin token alone on its first line (default $"+envTokenFile+")")
}

// client builds the API client the flags and the environment describe.
func (a *adminConn) client() (*admin.Client, error) {
	server := firstSet(a.server, os.Getenv(envServer), defaultServer)
	path := firstSet(a.tokenFile, os.Getenv(envTokenFile))
	if path == "" {
		return nil, fmt.Errorf("no admin token: pass --token-file FILE or set %s to a file holding a token from the server's admin.tokenFile", envTokenFile)
	}
	token, err := readToken(path)
	if err != nil {
		return nil, err
	}
	a.token = token
	// The timeout covers a delete, which removes blobs; the command's
	// context (Ctrl-C) ends any request sooner.
	return admin.NewClient(server, token, &http.Client{Timeout: 5 * time.Minute})
}

func firstSet(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}

// readToken reads the token on the first line of path.
func readToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("reading the admin token: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var token string
	if sc.Scan() {
		// Without the byte order mark a Windows editor may put first.
		token = strings.TrimSpace(strings.TrimPrefix(sc.Text(), "\ufeff"))
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("reading the admin token from %s: %w", path, err)
	}
	if token == "" {
		return "", fmt.Errorf("%s holds no token: put an admin token alone on its first line", path)
	}
	return token, nil
}

// explain adds what the person at the CLI can do about an error.
func explain(err error, conn *adminConn) error {
	apiErr, ok := errors.AsType[*admin.APIError](err)
	if !ok || apiErr.Code != admin.CodeUnauthorized {
		return err
	}
	msg := apiErr.Message + " (token read from " + firstSet(conn.tokenFile, os.Getenv(envTokenFile)) + ")"
	if strings.Contains(conn.token, ":") {
		// Likely a line copied from the server's file, name and all.
		msg += "; if that line is \"name:token\" as in admin.tokenFile, put the token alone on its first line"
	}
	return errors.New(msg)
}

// checkOutput checks an -o value against the formats a command prints.
func checkOutput(o string, formats ...string) error {
	for _, f := range formats {
		if o == f {
			return nil
		}
	}
	return fmt.Errorf("unknown output format %q; use -o %s", o, strings.Join(formats, " or -o "))
}

func newQuarantineCommand() *cobra.Command {
	var conn adminConn
	cmd := &cobra.Command{
		Use:   "quarantine",
		Short: "See the images a policy held back",
	}
	conn.register(cmd.PersistentFlags())
	var output, upstream, repository string
	list := &cobra.Command{
		Use:   "list",
		Short: "List quarantined images with the reason each was held back",
		Long: "List the images a policy quarantined, with their tags and first reason.\n" +
			"Let one through with `airlock release REPOSITORY@DIGEST --reason TEXT`.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "table", "json"); err != nil {
				return err
			}
			q := metadata.ImageQuery{State: metadata.StateQuarantined, Upstream: upstream, Repository: repository}
			return listImages(cmd, &conn, q, output)
		},
	}
	list.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json (an array of images)")
	list.Flags().StringVar(&upstream, "upstream", "", "only images of this upstream")
	list.Flags().StringVar(&repository, "repository", "", "only images of this repository (<upstream>/<repository>)")
	cmd.AddCommand(list)
	return cmd
}

func listImages(cmd *cobra.Command, conn *adminConn, q metadata.ImageQuery, output string) error {
	c, err := conn.client()
	if err != nil {
		return err
	}
	images, err := c.AllImages(cmd.Context(), q)
	if err != nil {
		return explain(err, conn)
	}
	out := cmd.OutOrStdout()
	switch output {
	case "json":
		return writeJSONTo(out, images)
	case "wide":
		return writeImagesWide(out, images, time.Now())
	}
	if len(images) == 0 {
		what := "images"
		if q.State != "" {
			what = string(q.State) + " images"
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "no %s\n", what)
		return nil
	}
	return writeImageTable(out, images, time.Now(), tableWidth)
}

func newImagesCommand() *cobra.Command {
	var conn adminConn
	cmd := &cobra.Command{
		Use:   "images",
		Short: "See the images airlock has seen and what its cache holds of them",
	}
	conn.register(cmd.PersistentFlags())
	cmd.AddCommand(newImagesListCommand(&conn), newImagesShowCommand(&conn), newImagesDeleteCommand(&conn))
	return cmd
}

func newImagesListCommand(conn *adminConn) *cobra.Command {
	var output, state, upstream, repository string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List images with their state; -o wide adds platforms, cached bytes and pulls",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "table", "wide", "json"); err != nil {
				return err
			}
			q := metadata.ImageQuery{State: metadata.State(state), Upstream: upstream, Repository: repository}
			return listImages(cmd, conn, q, output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, wide or json (an array of images)")
	cmd.Flags().StringVar(&state, "state", "", "only images in this state: pending, approved, quarantined, released or blocked")
	cmd.Flags().StringVar(&upstream, "upstream", "", "only images of this upstream")
	cmd.Flags().StringVar(&repository, "repository", "", "only images of this repository (<upstream>/<repository>)")
	return cmd
}

func newImagesShowCommand(conn *adminConn) *cobra.Command {
	var output, sbomFormat string
	var sbom bool
	cmd := &cobra.Command{
		Use:   "show REPOSITORY@DIGEST | REPOSITORY:TAG",
		Short: "Show one image: its state and why, tags, platforms, cache, pulls and vulnerability scan",
		Long: "Show one image: its state and every reason, tags, platforms, cache and pulls, and its\n" +
			"vulnerability scan with the findings worst first and the waivers that let some through.\n" +
			"With --sbom print instead the SBOM of its scanned packages (SPDX, or CycloneDX with\n" +
			"--sbom-format cyclonedx), as JSON.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output, "text", "json"); err != nil {
				return err
			}
			flags := cmd.Flags()
			if flags.Changed("sbom-format") && !sbom {
				return errors.New("--sbom-format chooses the format of --sbom; add --sbom")
			}
			if sbom && flags.Changed("output") {
				return errors.New("--sbom prints the SBOM document itself, which is JSON; leave out -o")
			}
			format, err := admin.SBOMFormat(sbomFormat)
			if err != nil {
				return err
			}
			ref, err := admin.ParseReference(args[0])
			if err != nil {
				return err
			}
			c, err := conn.client()
			if err != nil {
				return err
			}
			if sbom {
				doc, err := c.SBOM(cmd.Context(), ref, format)
				if err != nil {
					return explain(err, conn)
				}
				if !bytes.HasSuffix(doc, []byte("\n")) {
					doc = append(doc, '\n')
				}
				_, err = cmd.OutOrStdout().Write(doc)
				return err
			}
			img, err := c.Image(cmd.Context(), ref)
			if err != nil {
				return explain(err, conn)
			}
			if output == "json" {
				return writeJSONTo(cmd.OutOrStdout(), img)
			}
			return writeImage(cmd.OutOrStdout(), img, time.Now())
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	cmd.Flags().BoolVar(&sbom, "sbom", false, "print the SBOM of the image's scanned packages instead")
	cmd.Flags().StringVar(&sbomFormat, "sbom-format", "spdx", "format of --sbom: spdx or cyclonedx")
	return cmd
}

func newImagesDeleteCommand(conn *adminConn) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "delete REPOSITORY@DIGEST",
		Short: "Remove an image's record, its cached manifest and the blobs nothing else references",
		Long: "Remove an image's cached manifest and the blobs no other cached manifest references,\n" +
			"and forget its state, so that the next pull fetches and checks it again. An image an\n" +
			"admin decided about keeps its record: a block outlives the deletion. Audited.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref, err := admin.ParseDigestReference(args[0])
			if err != nil {
				return err
			}
			c, err := conn.client()
			if err != nil {
				return err
			}
			if err := c.Delete(cmd.Context(), ref, reason); err != nil {
				return explain(err, conn)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %s\n", ref)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the audit log")
	return cmd
}

// newChangeCommand builds release, block and unblock: a verb on one image
// by digest, with a required reason.
func newChangeCommand(verb, short, long string) *cobra.Command {
	var conn adminConn
	var reason, expires, output string
	cmd := &cobra.Command{
		Use:   verb + " REPOSITORY@DIGEST --reason TEXT",
		Short: short,
		Long:  long,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output, "text", "json"); err != nil {
				return err
			}
			ref, err := admin.ParseDigestReference(args[0])
			if err != nil {
				return err
			}
			if strings.TrimSpace(reason) == "" && verb != "rescan" {
				return fmt.Errorf("%s needs --reason TEXT: say why, for the audit log", verb)
			}
			if expires != "" {
				// Check here too, for the error before the round trip;
				// the server decides with its own clock.
				if _, err := admin.ParseExpiry(expires, time.Now()); err != nil {
					return err
				}
			}
			c, err := conn.client()
			if err != nil {
				return err
			}
			var img admin.Image
			ctx := cmd.Context()
			switch verb {
			case "release":
				img, err = c.Release(ctx, ref, reason, expires)
			case "block":
				img, err = c.Block(ctx, ref, reason)
			case "unblock":
				img, err = c.Unblock(ctx, ref, reason)
			case "rescan":
				img, err = c.Rescan(ctx, ref)
			}
			if err != nil {
				return explain(err, &conn)
			}
			if output == "json" {
				return writeJSONTo(cmd.OutOrStdout(), img)
			}
			fmt.Fprintln(cmd.OutOrStdout(), describeChange(ref, img))
			return nil
		},
	}
	conn.register(cmd.Flags())
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json (the image after the change)")
	if verb != "rescan" {
		cmd.Flags().StringVar(&reason, "reason", "", "why, for the audit log (required)")
	}
	if verb == "release" {
		cmd.Flags().StringVar(&expires, "expires", "", "end of the release: a date (holds through that day, UTC), an RFC 3339 time, or a duration such as 72h or 30d; default never")
	}
	return cmd
}

func newReleaseCommand() *cobra.Command {
	c := newChangeCommand("release", "Let one quarantined image through, optionally until a date",
		"Let exactly this digest through this repository, with a reason for the audit log.\n"+
			"With --expires the image returns to quarantine after that date. A release never\n"+
			"lets a new digest behind the same tag through.")
	c.Use = "release REPOSITORY@DIGEST --reason TEXT [--expires 2026-12-31]"
	return c
}

func newBlockCommand() *cobra.Command {
	return newChangeCommand("block", "Refuse one image, whatever the policies and releases say",
		"Refuse this digest in this repository: a block wins over every policy result and release.")
}

func newUnblockCommand() *cobra.Command {
	return newChangeCommand("unblock", "Lift a block; the policies decide again", "")
}

func newRescanCommand() *cobra.Command {
	c := newChangeCommand("rescan", "Run an image's checks again", "")
	c.Use = "rescan REPOSITORY@DIGEST"
	return c
}

func newAuditCommand() *cobra.Command {
	var conn adminConn
	var output string
	var after uint64
	var limit int
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Show the audit log: every state change, who made it and why",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "table", "json"); err != nil {
				return err
			}
			c, err := conn.client()
			if err != nil {
				return err
			}
			recs, err := allAudit(cmd, c, after, limit)
			if err != nil {
				return explain(err, &conn)
			}
			if output == "json" {
				return writeJSONTo(cmd.OutOrStdout(), recs)
			}
			if len(recs) == 0 {
				fmt.Fprintln(cmd.ErrOrStderr(), "no audit records")
				return nil
			}
			return writeAuditTable(cmd.OutOrStdout(), recs, tableWidth)
		},
	}
	conn.register(cmd.PersistentFlags())
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json (an array of records)")
	cmd.Flags().Uint64Var(&after, "after", 0, "only records after this sequence number")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many records (default all)")
	cmd.AddCommand(newAuditVerifyCommand(&conn))
	return cmd
}

// allAudit reads records after after, up to limit (0: all).
func allAudit(cmd *cobra.Command, c *admin.Client, after uint64, limit int) ([]metadata.AuditRecord, error) {
	recs := []metadata.AuditRecord{}
	for {
		page := 1000
		if limit > 0 && limit-len(recs) < page {
			page = limit - len(recs)
		}
		list, err := c.Audit(cmd.Context(), after, page)
		if err != nil {
			return nil, err
		}
		recs = append(recs, list.Records...)
		if list.Next == 0 || list.Next <= after || (limit > 0 && len(recs) >= limit) {
			return recs, nil
		}
		after = list.Next
	}
}

func newAuditVerifyCommand(conn *adminConn) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check the audit log's hash chain; exits non-zero when a record was edited or removed",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "text", "json"); err != nil {
				return err
			}
			c, err := conn.client()
			if err != nil {
				return err
			}
			check, err := c.VerifyAudit(cmd.Context())
			if err != nil {
				return explain(err, conn)
			}
			if output == "json" {
				if err := writeJSONTo(cmd.OutOrStdout(), check); err != nil {
					return err
				}
			} else {
				writeAuditCheck(cmd.OutOrStdout(), check)
			}
			if !check.OK {
				return fmt.Errorf("the audit log does not verify: record %d: %s", check.BrokenAt, check.Problem)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}
