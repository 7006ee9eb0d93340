// Package control is the supervisor's control socket: a unix stream socket
// (0600, in a directory only the owner can write) speaking one JSON request
// and one JSON response per connection. Only peers with the supervisor's
// UID, or root, may ask for anything but status (SO_PEERCRED).
package control
