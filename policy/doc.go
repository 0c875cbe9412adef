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
// Admin overrides (a release with an end, a block) are applied on top of
// the verdict by [Effective].
package policy
