module github.com/changeover-dev/changeover

go 1.26.8

require (
	github.com/libp2p/go-reuseport v0.4.0 // indirect
	github.com/oklog/run v1.2.0 // indirect
	go.uber.org/goleak v1.3.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
)
