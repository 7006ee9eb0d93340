// Package supervisor runs generations of a command and hands traffic over
// from one to the next: generation N+1 starts beside N (both bind the shared
// ports with SO_REUSEPORT), and only once N+1 is ready (READY=1 on its own
// notify socket and every probe passing on its own health address) does N
// get SIGTERM and a drain deadline. A new generation that fails is killed
// with its process group and N keeps serving.
package supervisor
