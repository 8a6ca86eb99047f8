//go:build race

package proxy

// bigTransfer is smaller under the race detector, which slows every byte
// copy about tenfold; the normal run moves the full 1 GiB.
const bigTransfer = 64 << 20
