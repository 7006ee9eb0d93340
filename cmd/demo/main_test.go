package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-nope"}, "flag provided but not defined: -nope"},
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"-addr", "256.0.0.1:80"}, "256.0.0.1"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stderr bytes.Buffer
			err := run(context.Background(), tc.args, io.Discard, &stderr)
			if err == nil || !strings.Contains(err.Error()+stderr.String(), tc.want) {
				t.Fatalf("run(%q) = %v, stderr %q; want %q", tc.args, err, stderr.String(), tc.want)
			}
		})
	}
	if err := run(context.Background(), []string{"-h"}, io.Discard, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
}

func TestServe(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-addr", addr, "-version", "v7"}, io.Discard, io.Discard) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()

	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	var resp *http.Response
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if resp, err = c.Post("http://"+addr+"/any/path", "text/plain", strings.NewReader("body")); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	want := "version=v7 pid=" + strconv.Itoa(os.Getpid()) + "\n"
	check := func(resp *http.Response, code int, body string) {
		t.Helper()
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != code || !strings.Contains(string(b), body) {
			t.Fatalf("%s: %d %q, want %d %q", resp.Request.URL, resp.StatusCode, b, code, body)
		}
	}
	check(resp, 200, want)
	for _, tc := range []struct {
		path string
		code int
		body string
	}{
		{"/sleep?duration=10ms", 200, want},
		{"/sleep", 400, "duration"},
		{"/sleep?duration=banana", 400, `"banana"`},
	} {
		resp, err := c.Get("http://" + addr + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		check(resp, tc.code, tc.body)
	}
}
