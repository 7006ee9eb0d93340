module github.com/changeover-dev/changeover

go 1.26.8

require (
	github.com/coreos/go-systemd/v22 v22.7.0
	github.com/libp2p/go-reuseport v0.4.0
	github.com/oklog/run v1.2.0
	go.uber.org/goleak v1.3.0
	golang.org/x/sys v0.50.0
)
