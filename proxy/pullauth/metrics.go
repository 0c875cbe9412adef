package pullauth

import "github.com/prometheus/client_golang/prometheus"

// metrics are the Authenticator's series. Refused requests never reach the
// registry handler, so its request counters do not see them; these do.
type metrics struct {
	refusals    *prometheus.CounterVec
	comparisons prometheus.Counter
}

// Refusal reasons, the values of the reason label.
const (
	reasonNoCredentials = "no_credentials"
	reasonMalformed     = "malformed"
	reasonInvalid       = "invalid_credentials"
	reasonDenied        = "denied"
	reasonThrottled     = "throttled"
)

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "airlock_pull_auth_refusals_total",
			Help: "Registry requests refused by client authentication, by reason: no_credentials, malformed, invalid_credentials (401), denied (403, user not allowed on the upstream), throttled (429).",
		}, []string{"reason"}),
		comparisons: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "airlock_pull_auth_bcrypt_comparisons_total",
			Help: "bcrypt comparisons run to check client credentials; verified credentials are cached, so this grows with logins and failed attempts, not with requests.",
		}),
	}
	for _, r := range []string{reasonNoCredentials, reasonMalformed, reasonInvalid, reasonDenied, reasonThrottled} {
		m.refusals.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.refusals, m.comparisons)
	}
	return m
}
