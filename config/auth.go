package config

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

// Auth says where an upstream's credentials come from. Files are how a
// Kubernetes Secret is mounted; environment variables are for development.
// When any file is configured the files are used and the environment is
// ignored, so a missing mount in production fails loudly instead of
// falling back to whatever a shell exported.
type Auth struct {
	// UsernameFile holds the user name. Default "".
	UsernameFile string `yaml:"usernameFile"`
	// PasswordFile holds the password or token. Default "".
	PasswordFile string `yaml:"passwordFile"`
	// UsernameEnv names an environment variable holding the user name,
	// used when no file is configured. Default "".
	UsernameEnv string `yaml:"usernameEnv"`
	// PasswordEnv names an environment variable holding the password,
	// used when no file is configured. Default "".
	PasswordEnv string `yaml:"passwordEnv"`
}

// Anonymous reports whether no credentials are configured.
func (a Auth) Anonymous() bool { return a == Auth{} }

// maxSecretBytes bounds a credentials file; real ones are far smaller, and
// a mistaken path to a large file must not be read into memory.
const maxSecretBytes = 64 << 10

// Credentials returns the user name and password to present upstream, or
// two empty strings for an anonymous upstream. Files are read on every
// call, so a rotated Secret is used without a restart; one trailing newline
// is removed, since editors and `echo` add it. Errors name the file or
// variable, never its content.
func (a Auth) Credentials(ctx context.Context) (user, pass string, err error) {
	if err := ctx.Err(); err != nil {
		return "", "", err
	}
	switch {
	case a.UsernameFile != "" || a.PasswordFile != "":
		if user, err = readSecret(a.UsernameFile); err != nil {
			return "", "", err
		}
		if pass, err = readSecret(a.PasswordFile); err != nil {
			return "", "", err
		}
		return user, pass, nil
	case a.UsernameEnv != "" || a.PasswordEnv != "":
		if user, err = lookupSecret(a.UsernameEnv); err != nil {
			return "", "", err
		}
		if pass, err = lookupSecret(a.PasswordEnv); err != nil {
			return "", "", err
		}
		return user, pass, nil
	}
	return "", "", nil
}

func readSecret(name string) (string, error) {
	if name == "" {
		return "", errors.New("upstream credentials: usernameFile and passwordFile must be set together")
	}
	f, err := os.Open(name)
	if err != nil {
		return "", fmt.Errorf("upstream credentials: %w; check that the Secret is mounted", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSecretBytes+1))
	if err != nil {
		return "", fmt.Errorf("upstream credentials: reading %s: %w", name, err)
	}
	if len(data) > maxSecretBytes {
		return "", fmt.Errorf("upstream credentials: %s is larger than %d bytes; check that the path names the credential file", name, maxSecretBytes)
	}
	data = bytes.TrimSuffix(data, []byte("\n"))
	data = bytes.TrimSuffix(data, []byte("\r"))
	if len(data) == 0 {
		return "", fmt.Errorf("upstream credentials: %s is empty; write the credential into it", name)
	}
	return string(data), nil
}

func lookupSecret(env string) (string, error) {
	if env == "" {
		return "", errors.New("upstream credentials: usernameEnv and passwordEnv must be set together")
	}
	v, ok := os.LookupEnv(env)
	if !ok || v == "" {
		return "", fmt.Errorf("upstream credentials: environment variable %s is not set; export it or configure usernameFile and passwordFile", env)
	}
	return v, nil
}
