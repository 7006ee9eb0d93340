package healthcheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Probe checks one thing once.
//
// Check reports nil when the check passed and otherwise an error that says
// what failed and why. It must honour ctx: Wait gives every attempt a context
// that expires after Policy.Timeout. Check may be called from several
// goroutines at once. String returns a short readable form for logs.
type Probe interface {
	Check(ctx context.Context) error
	String() string
}

// HTTP probes with GET: healthy on 2xx (and Body, if set, is a substring of
// the body).
//
// Redirects are not followed (a 3xx is a failure), because a redirect could
// lead to an address served by another instance. No proxy is used and
// connections are not kept alive between checks.
//
// Source, if set, is the local address the probe connects from (a
// supervisor routes connections from its probe address to the instance it
// checks).
type HTTP struct {
	URL    string
	Body   string
	Source netip.Addr
}

// TCP probes by connecting to Addr (host:port); healthy when the connection
// is established. The connection is closed at once. Source, if set, is
// the local address it connects from.
type TCP struct {
	Addr   string
	Source netip.Addr
}

// dialer connects from source, if it is set.
func dialer(source netip.Addr) *net.Dialer {
	d := &net.Dialer{}
	if source.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: source.AsSlice(), Zone: source.Zone()}
	}
	return d
}

// Exec probes by running Command through /bin/sh -c; healthy on exit 0.
//
// Env holds extra "KEY=VALUE" entries added to the supervisor's environment
// (later entries win); Dir is the working directory (empty: the current one).
// On Unix the command runs in its own process group, which is killed when
// the check's context is done.
type Exec struct {
	Command string
	Env     []string
	Dir     string
}

const (
	// maxBodyRead bounds how much of an HTTP response body is read to look
	// for HTTP.Body.
	maxBodyRead = 64 << 10
	// bodyExcerptLen bounds the body excerpt quoted in an HTTP failure.
	bodyExcerptLen = 200
	// tailLines and tailBytes bound the output tail quoted in an Exec failure.
	tailLines = 5
	tailBytes = 512
	// execWaitDelay bounds how long an Exec check waits for its output pipes
	// after its context is done (see exec.Cmd.WaitDelay).
	execWaitDelay = time.Second
	// healthAddrPlaceholder is replaced by the health address in specs.
	healthAddrPlaceholder = "{health_addr}"
)

// Parse reads a probe spec: "http://..." / "https://...", "tcp:HOST:PORT",
// "exec:CMD". Every "{health_addr}" in the spec is replaced by healthAddr
// first; it is an error to use the placeholder with an empty healthAddr.
// Surrounding white space is ignored. Errors quote the spec.
//
// The result is an HTTP, TCP or Exec value; its String method returns a spec
// that Parse accepts again.
func Parse(spec, healthAddr string) (Probe, error) {
	s := strings.TrimSpace(spec)
	bad := func(format string, args ...any) error {
		return fmt.Errorf("healthcheck: bad probe spec %q: %s", spec, fmt.Sprintf(format, args...))
	}
	if s == "" {
		return nil, bad("empty spec (want http://..., https://..., tcp:HOST:PORT or exec:CMD)")
	}
	if strings.Contains(s, healthAddrPlaceholder) {
		if healthAddr == "" {
			return nil, bad("uses %s but no health address is set", healthAddrPlaceholder)
		}
		s = strings.ReplaceAll(s, healthAddrPlaceholder, healthAddr)
	}
	scheme, rest, _ := strings.Cut(s, ":")
	switch strings.ToLower(scheme) {
	case "http", "https":
		u, err := url.Parse(s)
		if err != nil {
			return nil, bad("%v", err)
		}
		if !strings.HasPrefix(rest, "//") {
			return nil, bad("want %s://HOST[:PORT]/PATH", strings.ToLower(scheme))
		}
		if u.Host == "" || u.Hostname() == "" {
			return nil, bad("URL %q has no host", s)
		}
		return HTTP{URL: u.String()}, nil
	case "tcp":
		addr := strings.TrimSpace(rest)
		if addr == "" {
			return nil, bad("empty address (want tcp:HOST:PORT)")
		}
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, bad("address %q: %v (want tcp:HOST:PORT)", addr, err)
		}
		if port == "" {
			return nil, bad("address %q has no port (want tcp:HOST:PORT)", addr)
		}
		return TCP{Addr: addr}, nil
	case "exec":
		cmd := strings.TrimSpace(rest)
		if cmd == "" {
			return nil, bad("empty command (want exec:CMD)")
		}
		return Exec{Command: cmd}, nil
	default:
		return nil, bad("unknown or missing scheme (want http://..., https://..., tcp:HOST:PORT or exec:CMD)")
	}
}

// String returns the URL, followed by the expected body substring if set.
func (h HTTP) String() string {
	if h.Body != "" {
		return fmt.Sprintf("%s (body contains %q)", h.URL, h.Body)
	}
	return h.URL
}

// Check performs one GET request of h.URL.
func (h HTTP) Check(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.URL, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: GET %q: %w", h.URL, err)
	}
	tr := &http.Transport{
		Proxy:             nil,
		DisableKeepAlives: true,
		ForceAttemptHTTP2: false,
		DialContext:       dialer(h.Source).DialContext,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	resp, err := client.Do(req)
	if err != nil {
		return err // *url.Error: `Get "URL": cause`
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBodyRead))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("healthcheck: GET %q: status %s, body %s", h.URL, resp.Status, excerpt(body))
	}
	if err != nil {
		return fmt.Errorf("healthcheck: GET %q: status %s, reading body: %w", h.URL, resp.Status, err)
	}
	if h.Body != "" && !bytes.Contains(body, []byte(h.Body)) {
		return fmt.Errorf("healthcheck: GET %q: status %s but body does not contain %q: body %s",
			h.URL, resp.Status, h.Body, excerpt(body))
	}
	return nil
}

// excerpt quotes the start of b for an error message.
func excerpt(b []byte) string {
	if len(b) > bodyExcerptLen {
		return fmt.Sprintf("%q...", b[:bodyExcerptLen])
	}
	return fmt.Sprintf("%q", b)
}

// String returns "tcp:ADDR".
func (t TCP) String() string { return "tcp:" + t.Addr }

// Check connects to t.Addr and closes the connection.
func (t TCP) Check(ctx context.Context) error {
	c, err := dialer(t.Source).DialContext(ctx, "tcp", t.Addr)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err) // *net.OpError names the address
	}
	return c.Close()
}

// String returns "exec:COMMAND".
func (e Exec) String() string { return "exec:" + e.Command }

// Check runs e.Command through /bin/sh -c and waits for it.
func (e Exec) Check(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", e.Command)
	cmd.Dir = e.Dir
	if len(e.Env) > 0 {
		cmd.Env = append(os.Environ(), e.Env...)
	}
	var stdout, stderr tailBuffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.WaitDelay = execWaitDelay
	ownProcessGroup(cmd)
	err := cmd.Run()
	if err == nil {
		return nil
	}
	out := "stderr " + outputTail(stderr.Bytes())
	if len(bytes.TrimSpace(stderr.Bytes())) == 0 && len(bytes.TrimSpace(stdout.Bytes())) > 0 {
		out = "stdout " + outputTail(stdout.Bytes())
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("healthcheck: exec %q: %w (%v); %s", e.Command, ctxErr, err, out)
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return fmt.Errorf("healthcheck: exec %q: %w; %s", e.Command, err, out)
	}
	return fmt.Errorf("healthcheck: exec %q: %w", e.Command, err)
}

// outputTail quotes the last tailLines lines, at most tailBytes bytes, of b.
func outputTail(b []byte) string {
	b = bytes.TrimRight(b, " \t\r\n")
	for i, n := len(b)-1, 0; i >= 0; i-- {
		if b[i] == '\n' {
			if n++; n == tailLines {
				b = b[i+1:]
				break
			}
		}
	}
	if len(b) > tailBytes {
		return fmt.Sprintf("...%q", b[len(b)-tailBytes:])
	}
	return fmt.Sprintf("%q", b)
}

// tailBuffer is an io.Writer that keeps only the last few KiB written to it.
type tailBuffer struct {
	buf []byte
}

const tailBufferMax = 4 * tailBytes

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) >= tailBufferMax {
		t.buf = append(t.buf[:0], p[len(p)-tailBufferMax:]...)
		return n, nil
	}
	if over := len(t.buf) + len(p) - tailBufferMax; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

// Bytes returns the retained tail.
func (t *tailBuffer) Bytes() []byte { return t.buf }
