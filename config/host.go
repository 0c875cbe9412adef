package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"syscall"
)

// Scope says how much of a configuration [Open] checks.
type Scope int

const (
	// ScopeDocument checks the file alone: YAML syntax, keys, types and
	// values. It needs nothing from the machine it runs on, so CI can check
	// a file whose Secrets are mounted only where airlock runs.
	ScopeDocument Scope = iota
	// ScopeHost also checks what serving the file needs from this machine:
	// the listen hosts are addresses of it, the TLS key pair loads, every CA bundle holds a certificate, every
	// credentials file and admin.tokenFile is readable and not empty (or
	// the environment variables are set), storage.path can be written
	// or created, and auth.htpasswd holds only bcrypt lines and every user
	// auth.upstreams lists. A configuration that passes is one serve starts
	// with.
	ScopeHost
)

// Open returns airlock's configuration: the YAML file at path, or the
// embedded default (see [Default]) when path is "". It is the one check
// behind `airlock serve`, SIGHUP and `airlock config check`, so the three
// never disagree. Every problem, of the document and of the host, is
// reported in one error in file order; each wraps [ErrInvalid].
//
// Open does not bind the listen addresses: on a reload they are held by
// the running process itself.
func Open(path string, scope Scope) (*Config, error) {
	name, data := "embedded default", defaultYAML
	if path != "" {
		var err error
		if data, err = readLimited(path, maxConfigBytes); err != nil {
			return nil, fmt.Errorf("reading configuration: %w", err)
		}
		name = path
	}
	d, err := parseDocument(name, data)
	if err != nil {
		return nil, err
	}
	if scope == ScopeHost {
		for _, err := range d.cfg.hostProblems() {
			if fe, ok := errors.AsType[*fieldError](err); ok && d.isUndecodable(fe.key) {
				continue
			}
			d.problems = append(d.problems, err)
		}
	}
	if len(d.problems) > 0 {
		return nil, locate(d.name, d.keys, d.problems)
	}
	return &d.cfg, nil
}

// hostProblems checks the files and directories c names. It reads each
// file as serve would, and reports what is wrong without its content.
func (c *Config) hostProblems() []error {
	var p problems
	p.localAddr("listen", c.Listen)
	p.localAddr("admin.listen", c.Admin.Listen)
	if c.TLS.CertFile != "" && c.TLS.KeyFile != "" {
		cert, certOK := p.readFile("tls.certFile", c.TLS.CertFile)
		key, keyOK := p.readFile("tls.keyFile", c.TLS.KeyFile)
		if certOK && keyOK {
			if _, err := tls.X509KeyPair(cert, key); err != nil {
				p.add("tls", "certFile and keyFile are not a usable key pair (%v); check that both are PEM and belong together", err)
			}
		}
	}
	p.writableDir("storage.path", c.Storage.Path)
	if c.Storage.Driver == DriverFilesystem {
		// The default, <path>/blobs, stands or falls with storage.path.
		if root, _ := c.Storage.Parameters[filesystemRootParameter].(string); root != "" &&
			filepath.Clean(root) != filepath.Join(c.Storage.Path, "blobs") {
			p.writableDir("storage.parameters."+filesystemRootParameter, root)
		}
	}
	if c.Admin.TokenFile != "" {
		p.secretFile("admin.tokenFile", c.Admin.TokenFile)
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		key := fmt.Sprintf("upstreams[%d]", i)
		if u.CAFile != "" {
			if pem, ok := p.readFile(key+".caFile", u.CAFile); ok && !x509.NewCertPool().AppendCertsFromPEM(pem) {
				p.add(key+".caFile", "%s holds no PEM certificate; write the CA bundle as -----BEGIN CERTIFICATE----- blocks", u.CAFile)
			}
		}
		u.Auth.checkHost(&p, key+".auth")
	}
	c.Auth.checkHost(&p)
	for i, pol := range c.Policies {
		if pol.Pins != "" {
			p.readFile(fmt.Sprintf("policies[%d].pins", i), pol.Pins)
		}
		if pol.Signature != nil {
			files := pol.Signature.files(fmt.Sprintf("policies[%d].signature", i))
			for _, k := range slices.Sorted(maps.Keys(files)) {
				p.readFile(k, files[k])
			}
		}
		if pol.Vulnerabilities != nil {
			// Parsed when the policies are compiled, which serve, SIGHUP
			// and config check all do: here only whether they can be read.
			for j, f := range pol.Vulnerabilities.VEX {
				if f != "" {
					p.readable(fmt.Sprintf("policies[%d].vulnerabilities.vex[%d]", i, j), f)
				}
			}
		}
	}
	c.Metadata.checkHost(&p)
	c.Cluster.checkHost(&p)
	c.Scanner.checkHost(&p)
	for i, w := range c.Alerts.Webhooks {
		if w.SecretFile != "" {
			p.secretFile(fmt.Sprintf("alerts.webhooks[%d].secretFile", i), w.SecretFile)
		}
	}
	return p
}

// checkHost checks that the credentials a's upstream is pulled with can be
// read now. Files win over the environment, as in [Auth.Credentials], so
// the variables are checked only when no file is set.
func (a Auth) checkHost(p *problems, key string) {
	switch {
	case a.UsernameFile != "" || a.PasswordFile != "":
		if a.UsernameFile != "" {
			p.secretFile(key+".usernameFile", a.UsernameFile)
		}
		if a.PasswordFile != "" {
			p.secretFile(key+".passwordFile", a.PasswordFile)
		}
	default:
		for _, env := range []struct{ key, name string }{{"usernameEnv", a.UsernameEnv}, {"passwordEnv", a.PasswordEnv}} {
			if env.name == "" {
				continue
			}
			if v, ok := os.LookupEnv(env.name); !ok || v == "" {
				p.add(key+"."+env.key, "environment variable %s is not set; export it, or configure usernameFile and passwordFile", env.name)
			}
		}
	}
}

// localAddr checks that the host of addr is an address of this machine
// (or a name resolving to one) by binding it on a free port. Binding the
// configured port itself would fail on a reload, where the running airlock
// holds it.
func (p *problems) localAddr(key, addr string) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return // reported by validation, or all interfaces
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		reason := err
		if oe, ok := errors.AsType[*net.OpError](err); ok {
			reason = oe.Err
		}
		p.add(key, "cannot listen on %s on this machine (%v); use one of its addresses, or leave the host out to listen on all interfaces", host, reason)
		return
	}
	l.Close()
}

// readFile reads the file configured at key, or adds why it cannot.
func (p *problems) readFile(key, path string) ([]byte, bool) {
	data, err := readLimited(path, maxPEMBytes)
	if err != nil {
		p.add(key, "%s", fileProblem(path, err))
		return nil, false
	}
	return data, true
}

// readable checks that the file configured at key can be opened for
// reading and is not a directory, without reading it: files such as
// Red Hat's mapping or a vendor's VEX document are read, and bounded, by
// the code that parses them.
func (p *problems) readable(key, path string) {
	f, err := os.Open(path)
	if err != nil {
		p.add(key, "%s", fileProblem(path, err))
		return
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		p.add(key, "%s is a directory; name the file", path)
	}
}

// secretFile checks a file holding one credential or token: readable, not
// empty and not larger than any credential is.
func (p *problems) secretFile(key, path string) {
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		p.add(key, "%s", fileProblem(path, err))
	case fi.IsDir():
		p.add(key, "%s is a directory; name the file inside it (a mounted Secret holds one file per key)", path)
	case fi.Size() > maxSecretBytes:
		p.add(key, "%s is larger than %d bytes; check that the path names the credential file", path, maxSecretBytes)
	default:
		data, ok := p.readFile(key, path)
		if ok && len(trimNewline(data)) == 0 {
			p.add(key, "%s is empty; write the credential into it", path)
		}
	}
}

// writableDir checks that dir exists as a writable directory or can be
// created: its nearest existing ancestor is a directory airlock can write
// to. It proves it by creating and removing a file, the only test that
// also catches read-only mounts and root-squashing network filesystems.
func (p *problems) writableDir(key, dir string) {
	if dir == "" {
		return // reported by validation
	}
	existing := dir
	for {
		fi, err := os.Stat(existing)
		if err == nil {
			if !fi.IsDir() {
				if existing == dir {
					p.add(key, "%s is not a directory; name a directory airlock may write to", dir)
				} else {
					p.add(key, "cannot create %s: %s is a file, not a directory", dir, existing)
				}
				return
			}
			break
		}
		parent := filepath.Dir(existing)
		// ENOTDIR: an ancestor is a file, which the loop then reports.
		if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) || parent == existing {
			p.add(key, "%s", fileProblem(existing, err))
			return
		}
		existing = parent
	}
	f, err := os.CreateTemp(existing, ".airlock-write-check-*")
	if err != nil {
		reason := err
		if pe, ok := errors.AsType[*fs.PathError](err); ok {
			reason = pe.Err
		}
		if existing == dir {
			p.add(key, "%s is not writable (%v); airlock writes its files there", dir, reason)
		} else {
			p.add(key, "cannot create %s: %s is not writable (%v)", dir, existing, reason)
		}
		return
	}
	f.Close()
	os.Remove(f.Name())
}

// The bounds of the files read whole. A path mistyped to a device
// (/dev/zero) or a huge file must cost an error, not all of memory.
const (
	// maxConfigBytes bounds the configuration file: hundreds of upstreams
	// with long allow-lists are well under a MiB.
	maxConfigBytes = 8 << 20
	// maxPEMBytes bounds TLS and CA files; the system's whole CA bundle
	// is a few hundred KiB.
	maxPEMBytes = 16 << 20
)

// errTooLarge is readLimited's error for a file beyond its bound.
var errTooLarge = errors.New("file too large")

// readLimited reads the file at path, at most max bytes of it.
func readLimited(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, &fs.PathError{Op: "read", Path: path,
			Err: fmt.Errorf("%w: larger than %d MiB; check that the path names the right file", errTooLarge, max>>20)}
	}
	return data, nil
}

// fileProblem says why path cannot be used, in words that point at the
// likely fix rather than at the system call.
func fileProblem(path string, err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return path + " does not exist; check the path, and that the Secret or volume holding it is mounted"
	case errors.Is(err, fs.ErrPermission):
		return path + " is not readable by airlock (permission denied)"
	}
	if pe, ok := errors.AsType[*fs.PathError](err); ok {
		return fmt.Sprintf("%s: %v", path, pe.Err)
	}
	return err.Error()
}

func trimNewline(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
	}
	if n := len(b); n > 0 && b[n-1] == '\r' {
		b = b[:n-1]
	}
	return b
}
