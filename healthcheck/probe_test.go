package healthcheck

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	const health = "127.0.0.1:9901"
	good := []struct {
		spec, healthAddr string
		want             Probe
	}{
		{"http://{health_addr}/healthz", health, HTTP{URL: "http://127.0.0.1:9901/healthz"}},
		{"https://example.com:8443/ready?full=1", "", HTTP{URL: "https://example.com:8443/ready?full=1"}},
		{"HTTP://Example.com/", "", HTTP{URL: "http://Example.com/"}},
		{"  http://[::1]:80/  ", "", HTTP{URL: "http://[::1]:80/"}},
		{"tcp:127.0.0.1:5432", "", TCP{Addr: "127.0.0.1:5432"}},
		{"tcp:{health_addr}", health, TCP{Addr: health}},
		{"tcp:[::1]:80", "", TCP{Addr: "[::1]:80"}},
		{"tcp:localhost:http", "", TCP{Addr: "localhost:http"}},
		{"exec:pg_isready -h 127.0.0.1", "", Exec{Command: "pg_isready -h 127.0.0.1"}},
		{"exec:curl -fsS http://{health_addr}/ | grep -q ok", health,
			Exec{Command: "curl -fsS http://127.0.0.1:9901/ | grep -q ok"}},
	}
	for _, tc := range good {
		t.Run(tc.spec, func(t *testing.T) {
			got, err := Parse(tc.spec, tc.healthAddr)
			if err != nil {
				t.Fatalf("Parse(%q, %q): %v", tc.spec, tc.healthAddr, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Parse(%q, %q) = %#v, want %#v", tc.spec, tc.healthAddr, got, tc.want)
			}
			// String is a spec again.
			again, err := Parse(got.String(), "")
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Fatalf("Parse(%q) = %#v, %v; want %#v", got.String(), again, err, got)
			}
		})
	}

	bad := []struct {
		spec, healthAddr, wantErr string
	}{
		{"", "", "empty spec"},
		{"   ", "", "empty spec"},
		{"localhost:8080", "", "scheme"},
		{"127.0.0.1:8080", "", "scheme"},
		{"/healthz", "", "scheme"},
		{"ftp://example.com/", "", "scheme"},
		{"http://", "", "no host"},
		{"http:///healthz", "", "no host"},
		{"http://:8080/healthz", "", "no host"},
		{"http:/healthz", "", "want http://"},
		{"http://a b/", "", "invalid character"},
		{"http://[::1/", "", "missing ']'"},
		{"http://{health_addr}/healthz", "", "no health address"},
		{"tcp:", "", "empty address"},
		{"tcp:  ", "", "empty address"},
		{"tcp:localhost", "", "missing port"},
		{"tcp:localhost:", "", "no port"},
		{"exec:", "", "empty command"},
		{"exec:   ", "", "empty command"},
	}
	for _, tc := range bad {
		t.Run("bad/"+tc.spec, func(t *testing.T) {
			p, err := Parse(tc.spec, tc.healthAddr)
			if err == nil {
				t.Fatalf("Parse(%q, %q) = %#v, want error", tc.spec, tc.healthAddr, p)
			}
			if !strings.Contains(err.Error(), strconv.Quote(tc.spec)) {
				t.Errorf("error %q does not quote the spec %q", err, tc.spec)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
		})
	}
}

// ctxFor returns a context that ends after d and is cancelled at the end of
// the test.
func ctxFor(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestHTTPCheck(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "all ok here") })
	mux.HandleFunc("/nocontent", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/starting", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "starting up") })
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "database down", http.StatusInternalServerError)
	})
	mux.HandleFunc("/fail-long", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, strings.Repeat("x", 10000))
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ok", http.StatusFound)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	tests := []struct {
		name    string
		probe   HTTP
		wantErr []string // substrings of the error; nil: healthy
	}{
		{"200", HTTP{URL: srv.URL + "/ok"}, nil},
		{"204", HTTP{URL: srv.URL + "/nocontent"}, nil},
		{"body matches", HTTP{URL: srv.URL + "/ok", Body: "ok"}, nil},
		{"body mismatch", HTTP{URL: srv.URL + "/starting", Body: "ready"},
			[]string{"200 OK", `does not contain "ready"`, `"starting up"`}},
		{"500 with body excerpt", HTTP{URL: srv.URL + "/fail"},
			[]string{"500 Internal Server Error", "database down", srv.URL + "/fail"}},
		{"503 with long body", HTTP{URL: srv.URL + "/fail-long"}, []string{"503", `xxx"...`}},
		{"404", HTTP{URL: srv.URL + "/missing"}, []string{"404 Not Found"}},
		{"redirect not followed", HTTP{URL: srv.URL + "/redirect"}, []string{"302 Found"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.probe.Check(ctxFor(t, 10*time.Second))
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			checkErr(t, err, tc.wantErr)
			if len(err.Error()) > 500 {
				t.Errorf("error is %d bytes long, want a short excerpt: %q", len(err.Error()), err)
			}
		})
	}
}

func TestHTTPCheckUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL + "/healthz"
	srv.Close()
	err := HTTP{URL: url}.Check(ctxFor(t, 10*time.Second))
	if err == nil {
		t.Fatal("Check of a closed server: nil error")
	}
	if !strings.Contains(err.Error(), url) {
		t.Errorf("error %q does not name the URL %q", err, url)
	}
	var opErr *net.OpError
	if !errors.As(err, &opErr) {
		t.Errorf("error %q does not wrap a *net.OpError", err)
	}
}

func TestHTTPCheckTimeout(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // hang until the client gives up
	}))
	defer srv.Close()
	err := HTTP{URL: srv.URL}.Check(ctxFor(t, 50*time.Millisecond))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Check of a hanging server = %v, want context.DeadlineExceeded", err)
	}
}

func TestTCPCheck(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := (TCP{Addr: addr}).Check(ctxFor(t, 10*time.Second)); err != nil {
		t.Errorf("Check of a listening port: %v", err)
	}
	l.Close()
	err = TCP{Addr: addr}.Check(ctxFor(t, 10*time.Second))
	if err == nil {
		t.Fatal("Check of a closed port: nil error")
	}
	if !strings.Contains(err.Error(), addr) {
		t.Errorf("error %q does not name the address %q", err, addr)
	}
}

func TestExecCheck(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "marker"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		probe    Exec
		wantErr  []string
		wantNot  []string
		wantCode int
	}{
		{name: "exit 0", probe: Exec{Command: "exit 0"}},
		{name: "pipeline", probe: Exec{Command: "echo ok | grep -q ok"}},
		{name: "env and dir", probe: Exec{
			Command: `test "$PROBE_FOO" = bar && test -f marker && env | grep -q '^PATH='`,
			Env:     []string{"PROBE_FOO=bar"},
			Dir:     dir,
		}},
		{
			name:     "exit 3 with stderr tail",
			probe:    Exec{Command: "for i in 1 2 3 4 5 6 7; do echo line$i >&2; done; exit 3"},
			wantErr:  []string{"exit status 3", "stderr", `line3\nline4\nline5\nline6\nline7`},
			wantNot:  []string{"line1", "line2"},
			wantCode: 3,
		},
		{
			name:     "stdout when stderr is empty",
			probe:    Exec{Command: "echo not ready yet; exit 1"},
			wantErr:  []string{"exit status 1", "stdout", "not ready yet"},
			wantCode: 1,
		},
		{
			name:     "long stderr is cut",
			probe:    Exec{Command: "{ i=0; while [ $i -lt 300 ]; do printf xxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done; echo; echo last; } >&2; exit 2"},
			wantErr:  []string{"exit status 2", `x\nlast"`},
			wantCode: 2,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.probe.Check(ctxFor(t, 10*time.Second))
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			checkErr(t, err, tc.wantErr)
			for _, not := range tc.wantNot {
				if strings.Contains(err.Error(), not) {
					t.Errorf("error %q contains %q", err, not)
				}
			}
			if len(err.Error()) > tailBytes+len(tc.probe.Command)+100 {
				t.Errorf("error is %d bytes long: %q", len(err.Error()), err)
			}
			var exitErr *exec.ExitError
			if !errors.As(err, &exitErr) || exitErr.ExitCode() != tc.wantCode {
				t.Errorf("error %q: want an *exec.ExitError with code %d", err, tc.wantCode)
			}
		})
	}
}

func TestExecCheckTimeout(t *testing.T) {
	// The shell forks sleep, which would hold the stderr pipe open if only
	// the shell were killed.
	start := time.Now()
	err := Exec{Command: "sleep 30; true"}.Check(ctxFor(t, 100*time.Millisecond))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Check = %v, want context.DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), `"sleep 30; true"`) {
		t.Errorf("error %q does not name the command", err)
	}
	if d := time.Since(start); d > execWaitDelay {
		t.Errorf("Check returned after %v, want the process group killed at once", d)
	}
}

func TestOutputTail(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", `""`},
		{"one line\n", `"one line"`},
		{"1\n2\n3\n4\n5\n6\n7\n\n", `"3\n4\n5\n6\n7"`},
		{strings.Repeat("a", 600) + "END", `..."` + strings.Repeat("a", 509) + `END"`},
	}
	for _, tc := range tests {
		if got := outputTail([]byte(tc.in)); got != tc.want {
			t.Errorf("outputTail(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestTailBuffer(t *testing.T) {
	var tb tailBuffer
	var all strings.Builder
	for i := 0; i < 1000; i++ {
		s := strconv.Itoa(i) + "\n"
		all.WriteString(s)
		tb.Write([]byte(s))
	}
	tb.Write([]byte(strings.Repeat("y", 3*tailBufferMax)))
	all.WriteString(strings.Repeat("y", 3*tailBufferMax))
	tb.Write([]byte("end"))
	all.WriteString("end")
	want := all.String()[all.Len()-tailBufferMax:]
	if got := string(tb.Bytes()); got != want {
		t.Errorf("tailBuffer kept %d bytes, want the last %d", len(got), len(want))
	}
}

// checkErr fails unless err is an error whose text has every want.
func checkErr(t *testing.T, err error, want []string) {
	t.Helper()
	if err == nil {
		t.Fatal("Check: nil error, want failure")
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}
