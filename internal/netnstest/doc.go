// Package netnstest is for tests that need a network namespace of their own
// (Linux, root): Run re-runs a test inside a new one, MakeSink gives it an
// address whose packets go nowhere, and Peer plays a TCP client by hand from
// that address, so that a test can hold a handshake half-open for as long as
// it likes, or forever.
package netnstest
