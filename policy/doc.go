// Package policy decides what the configured admission policies say about
// an image: which policies match its repository, whether it passes each,
// and why not. It does no I/O and reads no clock: files arrive as bytes,
// time as an argument, so every decision is a pure function of its inputs
// and is table-tested as one.
//
// An image is judged by every policy whose match globs cover its
// repository ("<upstream>/<repository>"); all of them must pass. A policy
// in audit mode never refuses: its findings are kept as reasons marked
// "audit" on an approved image. An image no policy matches is approved.
//
// What is judged depends on the manifest's [Kind]: pins and signatures on
// an image and on an image index, vulnerabilities on an image and on each
// platform of an index, from that platform's own scan. A vulnerability
// check counts a finding at or above the policy's block severity (an
// unrated one as its unknown severity), unless it has no fix and the
// policy ignores those, or a waiver lets it through: an allow entry until
// its end, or an OpenVEX statement (see [VEX]). Since waivers end by
// themselves, a verdict says when it changes on its own (Recheck).
//
// Admin overrides (a release with an end, a block) are applied on top of
// the verdict by [Effective].
package policy
