//go:build !linux

package main

import (
	"fmt"
	"os"
)

// changeover needs Linux: SO_REUSEPORT groups with steering programs,
// sock_diag, /proc, process groups and SO_PEERCRED.
func main() {
	fmt.Fprintln(os.Stderr, "changeover: this command runs on Linux only")
	os.Exit(1)
}
