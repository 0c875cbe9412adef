package airlocktest

// Signature is a policy's signature section, in airlock's YAML terms.
type Signature struct {
	Keys            []string  `yaml:"keys,omitempty"`
	Keyless         []Keyless `yaml:"keyless,omitempty"`
	TrustedRoot     string    `yaml:"trustedRoot,omitempty"`
	TransparencyLog int       `yaml:"transparencyLog,omitempty"`
	Timestamps      int       `yaml:"timestamps,omitempty"`
	Notation        *Notation `yaml:"notation,omitempty"`
}

// Keyless is one keyless identity of a signature section.
type Keyless struct {
	Issuer        string `yaml:"issuer,omitempty"`
	IssuerRegExp  string `yaml:"issuerRegExp,omitempty"`
	Subject       string `yaml:"subject,omitempty"`
	SubjectRegExp string `yaml:"subjectRegExp,omitempty"`
}

// Notation is the notation section of a signature section.
type Notation struct {
	TrustStore        []string `yaml:"trustStore"`
	TrustedIdentities []string `yaml:"trustedIdentities"`
}
