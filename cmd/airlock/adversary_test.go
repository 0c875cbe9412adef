package main

import (
	"os"
	"path/filepath"
	"testing"
)

// The CLI's --token-file as editors leave it: a byte order mark, CRLF, a
// comment line after the token. The token is what is sent, nothing more.
func TestReadTokenEditorArtifacts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for name, content := range map[string]string{
		"plain":    "s3cret\n",
		"crlf":     "s3cret\r\n",
		"bom":      "\ufeffs3cret\n",
		"bom crlf": "\ufeff  s3cret \r\n# rotated monthly\r\n",
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := readToken(path)
		if err != nil || got != "s3cret" {
			t.Errorf("%s: readToken = %q, %v; want s3cret", name, got, err)
		}
	}
}
