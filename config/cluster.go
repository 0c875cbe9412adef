package config

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
)

// AdvertiseEnv is the environment variable cluster.advertise is taken
// from when the key is left out: a replica's address is usually known
// only when it starts (in Kubernetes, "http://$(POD_IP):5002"), while the
// configuration file is the same for every replica.
const AdvertiseEnv = "AIRLOCK_CLUSTER_ADVERTISE"

// Cluster makes this airlock one replica of several that share one
// PostgreSQL metadata store and one blob store. Replicas coordinate
// through the database (a fill's lease, the evictor's turn) and stream
// blobs being filled to each other over the peer listener, so that a
// burst of cold pulls spread over every replica costs one upstream
// transfer per blob. It is off unless Listen is set, and then needs
// metadata.driver postgres and a blob store every replica reads. Read at
// start only; a change needs a restart.
type Cluster struct {
	// Advertise is this replica's URL for its peers, the scheme, host and
	// port at which they reach Listen (http://10.0.0.12:5002). Left out,
	// it is read from the environment variable AIRLOCK_CLUSTER_ADVERTISE
	// at start.
	Advertise string `yaml:"advertise"`

	// Listen is the host:port of the peer listener, which serves blobs
	// being filled to the other replicas, to those presenting the
	// cluster's secret (kept in the database). Make it reachable from
	// them only. Required to turn clustering on.
	Listen string `yaml:"listen"`

	// SharedFilesystem says that storage.driver filesystem is on a
	// filesystem every replica mounts (NFS, or one machine's disk in
	// tests): storage.path, and with it the blobs and the downloads in
	// progress, are shared. Without it a cluster needs s3, gcs or azure.
	// Default false.
	SharedFilesystem bool `yaml:"sharedFilesystem"`
}

// Enabled reports whether this airlock runs as one replica of several.
func (c *Cluster) Enabled() bool {
	return c.Listen != "" || c.Advertise != "" || c.SharedFilesystem
}

// AdvertiseURL returns the URL peers reach this replica at: Advertise, or
// the value of AIRLOCK_CLUSTER_ADVERTISE.
func (c *Cluster) AdvertiseURL() (string, error) {
	if c.Advertise != "" {
		return c.Advertise, nil
	}
	v := os.Getenv(AdvertiseEnv)
	if v == "" {
		return "", fmt.Errorf("cluster.advertise: left out and %s is not set; set cluster.advertise to this replica's URL for its peers (http://10.0.0.12:5002), or export %s (in Kubernetes from the pod IP)",
			AdvertiseEnv, AdvertiseEnv)
	}
	if err := advertiseProblem(v); err != nil {
		return "", fmt.Errorf("cluster.advertise: %s=%q: %w", AdvertiseEnv, v, err)
	}
	return v, nil
}

func (c *Config) checkCluster(p *problems) {
	cl := &c.Cluster
	if !cl.Enabled() {
		return
	}
	if cl.Listen == "" {
		p.add("cluster.listen", "required to run as one replica of several; set the host:port of the peer listener, such as :5002")
	} else {
		p.addr("cluster.listen", cl.Listen)
		if sameListener(c.Listen, cl.Listen) {
			p.add("cluster.listen", "%q is also the registry listen address; give the peer listener its own port", cl.Listen)
		}
		if sameListener(c.Admin.Listen, cl.Listen) {
			p.add("cluster.listen", "%q is also admin.listen; give the peer listener its own port", cl.Listen)
		}
	}
	if cl.Advertise != "" {
		if err := advertiseProblem(cl.Advertise); err != nil {
			p.add("cluster.advertise", "%q: %v", cl.Advertise, err)
		}
	}
	if !c.Metadata.Postgres() {
		p.add("cluster", "needs metadata.driver postgres: replicas share image states, tags and fill leases through PostgreSQL, and bbolt is one process's file")
	}
	switch {
	case c.Storage.Driver == DriverFilesystem && !cl.SharedFilesystem:
		p.add("cluster", "storage.driver filesystem keeps blobs on this replica's disk, which the others cannot read; use s3, gcs or azure, or set cluster.sharedFilesystem: true if storage.path is on a filesystem every replica mounts")
	case c.Storage.Driver != DriverFilesystem && cl.SharedFilesystem:
		p.add("cluster.sharedFilesystem", "applies to storage.driver filesystem only; storage.driver %s is shared by every replica already, so remove the key", c.Storage.Driver)
	}
}

// advertiseProblem says what is wrong with a peer URL, or nil.
func advertiseProblem(s string) error {
	errRelative := errors.New("not an absolute http or https URL; write it as http://host:port, the address peers reach cluster.listen at")
	if !strings.Contains(s, "://") {
		return errRelative // "10.0.0.12:5002" parses as a scheme and an opaque part
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("does not parse (%v); write it as http://host:port", errors.Unwrap(err))
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return errRelative
	case u.Hostname() == "":
		return errors.New("has no host; write it as http://host:port")
	case strings.HasSuffix(u.Host, ":"):
		return errors.New("has an empty port; write it as http://host:port, or leave out the colon for the scheme's port")
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || strings.Trim(u.Path, "/") != "":
		return errors.New("give only the scheme, host and port: peers add their own paths")
	}
	if ip, err := netip.ParseAddr(strings.Trim(u.Hostname(), "[]")); err == nil && ip.IsUnspecified() {
		return fmt.Errorf("%s is every interface, not an address peers can reach; give this replica's own address", u.Hostname())
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("port %q is not a number from 1 to 65535", port)
		}
	}
	return nil
}

// checkHost checks that the peer listener's host is this machine's and
// that the advertised address is known.
func (cl *Cluster) checkHost(p *problems) {
	if !cl.Enabled() {
		return
	}
	p.localAddr("cluster.listen", cl.Listen)
	if cl.Advertise == "" {
		if _, err := cl.AdvertiseURL(); err != nil {
			p.add("cluster.advertise", "%s", strings.TrimPrefix(err.Error(), "cluster.advertise: "))
		}
	}
}
