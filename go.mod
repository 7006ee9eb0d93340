module github.com/changeover-dev/changeover

go 1.26.8

require (
	github.com/libp2p/go-reuseport v0.4.0
	golang.org/x/sys v0.50.0
)

require github.com/stretchr/testify v1.8.0 // indirect
