package main

import (
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/changeover-dev/changeover/runner"
)

// connTracker follows a server's connections through ConnState and, once
// draining, makes every response carry "Connection: close".
type connTracker struct {
	draining atomic.Bool
	mu       sync.Mutex
	conns    map[net.Conn]http.ConnState
}

// trackConns wraps srv's handler and ConnState hook.
func trackConns(srv *http.Server) *connTracker {
	t := &connTracker{conns: map[net.Conn]http.ConnState{}}
	h := srv.Handler
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// net/http closes the connection after a response whose handler
		// set "Connection: close". Not SetKeepAlivesEnabled(false): it
		// also closes the idle connections at once, racing clients that
		// are sending a request on them right then.
		if t.draining.Load() {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		t.mu.Lock()
		defer t.mu.Unlock()
		switch st {
		case http.StateClosed, http.StateHijacked:
			delete(t.conns, c)
		default:
			t.conns[c] = st
		}
	}
	return t
}

// counts returns how many tracked connections there are, and how many of
// them were accepted but have not sent a request yet (StateNew).
func (t *connTracker) counts() (all, fresh int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, st := range t.conns {
		if st == http.StateNew {
			fresh++
		}
	}
	return len(t.conns), fresh
}

// carefulDrain is the drain a careful tableflip user writes, the same
// steps as the runner's drain after its handover (runner package doc):
//
//  1. mark draining: every response now carries "Connection: close";
//  2. close this process's listener and wait for Serve to return, so that
//     every accepted connection is tracked. tableflip's listener is the
//     same socket as the new process's (an inherited fd), so closing it
//     here loses nothing: its accept queue lives on in the new process;
//  3. wait until every connection is gone (each keep-alive connection
//     closes after its next response) or the keep-alive window passes
//     (runner.DefaultKeepAliveWindow, as the runner rows use); then, until
//     the deadline, until no connection is left that was accepted but has
//     not sent its request yet: Shutdown closes such a connection as idle,
//     and a request read just as Shutdown starts is closed unanswered
//     (conn.serve checks shuttingDown right after reading it);
//  4. Shutdown, for the connections that stayed idle the whole window and
//     those still active, bounded by the drain timeout (shutdown's hammer).
func carefulDrain(srv *http.Server, ln net.Listener, served <-chan struct{}, t *connTracker) error {
	start := time.Now()
	deadline := start.Add(*drainTimeout)
	t.draining.Store(true)
	if err := ln.Close(); err != nil {
		log.Printf("close listener: %v", err)
	}
	select {
	case <-served:
	case <-time.After(time.Until(deadline)):
	}
	window := start.Add(runner.DefaultKeepAliveWindow)
	for {
		all, fresh := t.counts()
		now := time.Now()
		if all == 0 || now.After(deadline) || (now.After(window) && fresh == 0) {
			log.Printf("careful drain: %d connections left after %v (%d not yet sent a request)",
				all, now.Sub(start).Round(time.Millisecond), fresh)
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return shutdown(srv, max(time.Until(deadline), time.Millisecond))
}
