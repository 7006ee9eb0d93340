module github.com/changeover-dev/changeover

go 1.26.8

require (
	github.com/libp2p/go-reuseport v0.4.0
	golang.org/x/sys v0.50.0
)

require (
	github.com/coreos/go-systemd/v22 v22.7.0 // indirect
	github.com/oklog/run v1.2.0 // indirect
	github.com/stretchr/testify v1.8.0 // indirect
	go.uber.org/goleak v1.3.0 // indirect
)
