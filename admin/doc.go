// Package admin is airlock's admin API and the client the CLI uses to talk
// to it.
//
// The API is JSON under /api/v1/ on the admin listener. Every request
// carries "Authorization: Bearer <token>" with a token from admin.tokenFile
// (one per line, "token" or "name:token"); the name, or a short hash of an
// unnamed token, becomes the actor the audit log records. A request without
// a valid token is answered 401 before anything else is looked at, so it can
// neither change nor probe anything.
//
//	GET    /api/v1/images?state=&upstream=&repository=&limit=&after=
//	GET    /api/v1/images/<upstream>/<repo>@<digest>      (or :<tag>)
//	GET    /api/v1/images/<upstream>/<repo>@<digest>/sbom?format=spdx|cyclonedx  (or :<tag>/sbom)
//	POST   /api/v1/images/<upstream>/<repo>@<digest>/release  {"reason","expires"}
//	POST   /api/v1/images/<upstream>/<repo>@<digest>/block    {"reason"}
//	POST   /api/v1/images/<upstream>/<repo>@<digest>/unblock  {"reason"}
//	POST   /api/v1/images/<upstream>/<repo>@<digest>/rescan   {}
//	DELETE /api/v1/images/<upstream>/<repo>@<digest>          {"reason"} (optional)
//	GET    /api/v1/audit?after=&limit=
//	GET    /api/v1/audit/verify
//
// An image carries its vulnerability scan ("scan": state, timing,
// distribution, packages, findings), the findings a waiver let through
// ("verdict.waived") and a count of its findings per severity
// ("vulnerabilities"). The list leaves out scan.findings, which can be
// thousands per image, and keeps the count; GET one image for all of
// them. The SBOM is the scan's package index as an SPDX or CycloneDX
// JSON document (application/spdx+json, application/vnd.cyclonedx+json);
// an image not scanned answers 404 with a sentence saying why, and a
// scanner whose database is down 503 with Retry-After.
//
// Guarantees:
//   - Errors are {"errors":[{"code","message"}]} with a 4xx or 5xx status
//     from one closed table (see [Code]); the message is a sentence meant
//     for the person at the CLI. A refused request changes nothing: input is
//     checked in full before the decider is called.
//   - The server decides nothing itself: every change goes through the
//     [Decider] (the gate), which writes the state and its audit record in
//     one transaction. The audit log can be read and verified here, never
//     written.
//   - Tokens are compared in constant time and never logged; the token file
//     is re-read when it changes, so a rotated token takes effect on the
//     next request without a restart.
package admin
