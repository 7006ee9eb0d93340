// Package private checks that files and directories the supervisor trusts
// (state files, pidfiles, the control socket's directory) belong to the
// user it runs as and that no one else can write them.
package private
