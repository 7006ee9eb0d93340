package healthcheck_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/changeover-dev/changeover/healthcheck"
)

func ExampleParse() {
	// The supervisor expands {health_addr} to the address only the new
	// instance serves (CHANGEOVER_HEALTH_ADDR).
	for _, spec := range []string{
		"http://{health_addr}/healthz",
		"tcp:{health_addr}",
		"exec:pg_isready -h 127.0.0.1",
		"localhost:8080",
	} {
		p, err := healthcheck.Parse(spec, "127.0.0.1:9901")
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Println(p)
	}
	// Output:
	// http://127.0.0.1:9901/healthz
	// tcp:127.0.0.1:9901
	// exec:pg_isready -h 127.0.0.1
	// error: healthcheck: bad probe spec "localhost:8080": unknown or missing scheme (want http://..., https://..., tcp:HOST:PORT or exec:CMD)
}

func ExampleWait() {
	// A stand-in for the new instance's health endpoint.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	}))
	defer srv.Close()

	probe, err := healthcheck.Parse("http://{health_addr}/healthz", srv.Listener.Addr().String())
	if err != nil {
		fmt.Println(err)
		return
	}
	policy := healthcheck.Policy{Successes: 3, Interval: 10 * time.Millisecond, Deadline: 10 * time.Second}
	if err := healthcheck.Wait(context.Background(), policy, probe); err != nil {
		// errors.Is(err, healthcheck.ErrNotHealthy): keep the old instance.
		fmt.Println(err)
		return
	}
	fmt.Println("healthy: SIGTERM the old instance")
	// Output: healthy: SIGTERM the old instance
}
