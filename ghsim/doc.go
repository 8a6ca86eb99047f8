// Package ghsim is a strict, in-process simulator of the slice of GitHub that
// Stagely talks to: a GitHub App, its installations, repositories, pull
// requests, check runs, issue comments and reactions, and the webhooks GitHub
// sends about them.
//
// It is strict on purpose. Every API request is validated against GitHub's own
// OpenAPI description (a subset embedded from GitHub's published
// rest-api.json), authenticated like GitHub does it (App JWTs for /app
// endpoints, expiring installation tokens scoped to the installation's
// repositories for everything else), and every webhook payload it sends is
// validated against GitHub's published webhook schemas before it leaves. A
// client that passes against the simulator is therefore talking GitHub's
// dialect, not a mock's.
//
// It is not GitHub: only the endpoints listed in README.md exist (everything
// else answers 404 like an unknown route), there is no git, no GraphQL, no
// HTML, no user accounts beyond logins and permissions, and state lives in
// memory for the life of a Sim. It is meant for tests (wrap a *Sim in
// httptest.NewServer) and for local development (`stagely ghsim`, see Run).
package ghsim
