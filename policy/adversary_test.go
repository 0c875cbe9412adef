package policy

import (
	"strings"
	"testing"
)

// Pin files as editors on other systems write them: a byte order mark,
// CRLF line ends, no final newline, duplicate lines, trailing blanks.
func TestParsePinsEditorArtifacts(t *testing.T) {
	t.Parallel()
	for name, data := range map[string]string{
		"bom":          "\ufeff" + dA.String() + "\nhcl/app:1.0 " + dB.String() + "\n",
		"crlf":         dA.String() + "\r\nhcl/app:1.0 " + dB.String() + "\r\n",
		"bom and crlf": "\ufeff# vendor pins\r\n" + dA.String() + "\r\nhcl/app:1.0\t" + dB.String(),
		"duplicates":   dA.String() + "\n" + dA.String() + "\nhcl/app:1.0 " + dB.String() + "\nhcl/app:1.0 " + dB.String() + "  \n",
	} {
		p, err := ParsePins("pins.txt", []byte(data))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if msg, _ := p.check("hcl/other", dA, nil); msg != "" {
			t.Errorf("%s: the digest pinned on a line of its own is refused: %s", name, msg)
		}
		if msg, _ := p.check("hcl/app", dB, []string{"1.0"}); msg != "" {
			t.Errorf("%s: the tag pin is refused: %s", name, msg)
		}
		if msg, _ := p.check("hcl/app", dC, []string{"1.0"}); msg == "" {
			t.Errorf("%s: an unpinned digest behind a pinned tag passes", name)
		}
	}
	// A BOM anywhere but the start is not skipped: it is an error, as any
	// other stray character.
	if _, err := ParsePins("pins.txt", []byte(dA.String()+"\n\ufeff"+dB.String()+"\n")); err == nil || !strings.Contains(err.Error(), "pins.txt:2") {
		t.Errorf("a BOM on line 2: %v", err)
	}
}
