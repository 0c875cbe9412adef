// Package verify checks that content is what its digest says it is.
//
// Every byte airlock stores or serves as cached comes from an upstream it
// does not trust, so the digest named by the client (or by a manifest) is the
// only authority. A [Reader] hashes content as it streams and refuses to
// report a clean end of stream unless the digest, and the size when one is
// known, match. It also bounds every read: an upstream that sends more than it
// announced, or more than a configured limit, is cut off as soon as the excess
// byte arrives rather than after it has been buffered or written to disk.
//
// Guarantees:
//   - A Reader returns io.EOF only after the full content has been read and
//     its digest (and size, when given) matched. A mismatch is reported in
//     place of io.EOF as an error wrapping [ErrDigestMismatch].
//   - A Reader never reads more than one byte past its bound from the
//     underlying reader; exceeding the bound is an error wrapping
//     [ErrTooLarge].
//   - Only sha256 and sha512 digests are accepted. [Check] validates a digest
//     from untrusted input (a URL path, a manifest) before it is used as a
//     key or a file name, so a malformed digest can never name a path outside
//     the content store.
//
// The package performs no I/O of its own and has no HTTP handlers.
package verify
