package pullauth

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// ErrHtpasswd is wrapped by every error about the content of an htpasswd
// file, so callers can tell a file to fix from one they could not read.
var ErrHtpasswd = errors.New("invalid htpasswd file")

// Users are the accounts of an htpasswd file: user name to bcrypt hash.
type Users map[string][]byte

// MaxCost is the highest bcrypt cost accepted: what htpasswd -B -C allows,
// about ten seconds a comparison. bcrypt itself goes to 31, which takes
// days, and the policy derives from the highest cost in the file the hash
// an unknown user is compared with (see dummyHash), so one such line would
// hang start-up and every reload, not only that user's logins.
const MaxCost = 17

// maxHtpasswdBytes bounds the file read: a million users would still fit,
// and a mistaken path to a large file is refused instead of read.
const maxHtpasswdBytes = 64 << 20

// ReadHtpasswd reads and parses the htpasswd file at path. Errors name the
// file, and the line for a line that is wrong.
func ReadHtpasswd(path string) (Users, error) {
	f, err := os.Open(path)
	if err != nil {
		if pe, ok := errors.AsType[*fs.PathError](err); ok {
			err = pe.Err // the path comes first below, once
		}
		return nil, fmt.Errorf("%s: %w; check the path, and that the Secret holding it is mounted", path, err)
	}
	defer f.Close()
	return ParseHtpasswd(path, f)
}

// ParseHtpasswd parses an htpasswd file: one "user:hash" a line, where the
// hash is bcrypt ($2a$, $2b$ or $2y$, as `htpasswd -B` writes). Empty lines
// and lines starting with # are skipped. Any other hash (Apache MD5,
// SHA-1, crypt, plain text) is an error naming the line and the user,
// never the hash: airlock verifies only bcrypt, which is slow enough to
// resist guessing should the file leak. name is used in messages.
func ParseHtpasswd(name string, r io.Reader) (Users, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxHtpasswdBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	if len(data) > maxHtpasswdBytes {
		return nil, fmt.Errorf("%s: %w: larger than %d MiB; is this the right file?", name, ErrHtpasswd, maxHtpasswdBytes>>20)
	}
	users := Users{}
	lines := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, len(data)+1)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r \t")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, hash, err := parseLine(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w: %v", name, n, ErrHtpasswd, err)
		}
		if first, dup := lines[user]; dup {
			return nil, fmt.Errorf("%s:%d: %w: user %q is already defined on line %d; keep one line per user", name, n, ErrHtpasswd, user, first)
		}
		lines[user] = n
		users[user] = hash
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return users, nil
}

func parseLine(line string) (user string, hash []byte, err error) {
	user, h, ok := strings.Cut(line, ":")
	switch {
	case !ok:
		return "", nil, errors.New(`not "user:hash"; create lines with htpasswd -B`)
	case user == "":
		return "", nil, errors.New("empty user name")
	case strings.ContainsFunc(user, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return "", nil, errors.New("the user name contains control characters")
	}
	if kind := hashKind(h); kind != "" {
		return "", nil, fmt.Errorf("user %q: the password hash is %s, not bcrypt, which is all airlock accepts; recreate it with htpasswd -B", user, kind)
	}
	cost, err := bcrypt.Cost([]byte(h))
	if err != nil {
		return "", nil, fmt.Errorf("user %q has a malformed bcrypt hash (%v); recreate it with htpasswd -B", user, err)
	}
	if cost > MaxCost {
		return "", nil, fmt.Errorf("user %q: the bcrypt cost %d is more than %d, the most htpasswd -B -C writes; each login would take minutes or days, so recreate it with a lower -C", user, cost, MaxCost)
	}
	return user, []byte(h), nil
}

// hashKind names the scheme of a hash that is not bcrypt, or returns ""
// for one that looks like bcrypt.
func hashKind(h string) string {
	switch {
	case strings.HasPrefix(h, "$2a$"), strings.HasPrefix(h, "$2b$"), strings.HasPrefix(h, "$2y$"):
		return ""
	case strings.HasPrefix(h, "$apr1$"):
		return "Apache MD5 ($apr1$)"
	case strings.HasPrefix(h, "{SHA}"):
		return "SHA-1 ({SHA})"
	case strings.HasPrefix(h, "$1$"):
		return "MD5-crypt ($1$)"
	case strings.HasPrefix(h, "$5$"), strings.HasPrefix(h, "$6$"):
		return "SHA-crypt"
	case h == "":
		return "empty"
	case len(h) == 13 && !strings.HasPrefix(h, "$"):
		return "DES crypt (or plain text)"
	}
	return "of an unknown kind (or plain text)"
}
