package policy

// Temporary stand-ins for the vulnerability API (dropped at merge).
type Kind string

const (
	KindImage    Kind = ""
	KindIndex    Kind = "index"
	KindPlatform Kind = "platform"
)

func (s *Set) Scans(repo string) bool { return false }
