//go:build !race

package proxy

// bigTransfer is the size of the large download and upload tests: 1 GiB,
// streamed (neither side holds it in memory).
const bigTransfer = 1 << 30
