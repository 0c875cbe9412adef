// Package console is airlock's admin web console: server-rendered pages at
// /ui/ on the admin listener, for the people who decide about quarantined
// images and would rather look than read JSON.
//
//	GET  /ui/login                      sign in with a token from admin.tokenFile
//	POST /ui/logout                     sign out
//	GET  /ui/                           overview: states, new quarantines, cache, upstreams, refused pulls
//	GET  /ui/images?state=&upstream=&repository=&scan=&q=&sort=&page=
//	GET  /ui/images/<upstream>/<repo>@<digest>
//	GET  /ui/images/<upstream>/<repo>@<digest>/sbom?format=spdx|cyclonedx  (a download; needs Options.SBOMs)
//	POST /ui/images/<upstream>/<repo>@<digest>/{release,block,unblock,rescan}
//	GET  /ui/audit?actor=&action=&repository=&q=&before=
//
// It uses the pieces the admin API uses: the same [admin.Store] to read,
// the same [admin.Decider] (the gate) to change, and the same token file
// through [admin.Tokens]; a change made here is the change the CLI would
// make, audited with the signed-in token's name.
//
// Guarantees:
//   - Everything it serves is embedded in the binary: templates, CSS, a
//     little plain JavaScript and an icon. Pages never load anything from
//     another host (the Content-Security-Policy says so to the browser
//     too), and every page reads and works without JavaScript.
//   - Sessions are kept in memory, server-side: a restart signs everyone
//     out, and a token removed from admin.tokenFile ends its sessions on
//     their next request. The cookie holds only a random session id; it is
//     HttpOnly, SameSite=Strict, Secure when served over TLS, and expires.
//   - Every form carries a per-session CSRF token, compared in constant
//     time; the sign-in form carries one bound to a short-lived cookie.
//     Cross-origin POSTs are refused before that (net/http's
//     CrossOriginProtection).
//   - Vulnerability data is the feeds' to write: advisory ids, package
//     names, versions and links reach the page as text, and a finding's
//     link only when it is a plain http(s) address (else the advisory
//     database its id names, or none).
//   - A change asks for confirmation first (a second POST with confirm=yes)
//     and shows its result. A page never shows a token: the sign-in field
//     is never filled back in, and no token is kept after sign-in.
package console
