package certs_test

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// The lock-expiry test runs this binary as the process that crashes
	// holding a lock.
	if prefix := os.Getenv(lockHolderEnv); prefix != "" {
		holdLockUntilKilled(prefix)
	}
	os.Exit(m.Run())
}
