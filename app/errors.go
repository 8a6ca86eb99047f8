package app

import (
	"context"
	"fmt"

	"github.com/rs/zerolog"
)

func errorf(kind error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", kind, fmt.Sprintf(format, args...))
}

// ignoreNotInstalled drops an event that names no installation: it came
// from a repository or organisation webhook, not through the GitHub App,
// so Stagely has no access to act on it.
func ignoreNotInstalled(ctx context.Context) error {
	zerolog.Ctx(ctx).Info().Msg("event without an installation: not delivered through the app; ignored")
	return nil
}
