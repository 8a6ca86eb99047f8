// Package repoconfig reads and validates a repository's .stagely.yml, the
// file that tells Stagely how to run a pull request's preview environment.
//
// The server fetches the file at the pull request's head SHA and hands its
// bytes to [Parse]. Parse either returns a complete [Config] (file-level
// defaults filled in) or a [*ParseError] listing every problem it found,
// each with the line it is on, ready to be shown on the Check Run. A
// missing file is not a parse error: loaders report it as [ErrNotFound], so
// callers can tell "this repository has not opted in" from "its config is
// broken". [Config.Defaults] then fills in what the server decides when the
// file is silent: the provider, its size and region, and the TTL.
//
// The package does not fetch anything, does not know GitHub, and does not
// look inside the compose files it names: whether a service exists, and how
// the agent finds a compose file, is decided where the compose file is read.
//
// # File format
//
// A YAML mapping, version 1:
//
//	version: 1                   # required; the only version there is
//	compose:                     # optional; a path or a list of paths,
//	  - compose.yaml             #   relative to the repository root;
//	  - compose.preview.yaml     #   default [compose.yaml]
//	previews:                    # required; 1 to 10 entries
//	  - name: web                # DNS label: a-z 0-9 '-', 1-30 chars, unique
//	    service: frontend        # compose service name
//	    port: 3000               # container port, 1-65535
//	    path: /                  # optional; where the PR comment links to
//	  - name: api
//	    service: backend
//	    port: 8080
//	health:                      # optional; checks the first preview
//	  path: /healthz             # optional; without it: the port accepts TCP
//	  timeout: 5m                # optional; 1s..1h, default 5m
//	  interval: 2s               # optional; 1s..timeout, default 2s
//	  expect_status: 200         # optional; default any 2xx or 3xx
//	provider:                    # optional; default: the server's
//	  name: hetzner              # local | aws | digitalocean | hetzner
//	  size: cx32                 # optional; the provider's size/type name
//	  region: fsn1               # optional
//	  image: ubuntu-24.04        # optional
//	ttl: 72h                     # optional; 10m..720h ("3d" also accepted)
//	env:                         # optional; plain, non-secret variables
//	  LOG_LEVEL: debug
//	  FEATURE_X: "true"
//	secrets:                     # optional; NAMES only, values live in Stagely
//	  - STRIPE_KEY
//	build:                       # optional
//	  timeout: 30m               # 1m..3h, default 30m
//
// Unknown keys, wrong types and out-of-range values are errors; all of them
// are reported at once, sorted by line. A key whose value is empty (null) is
// treated as absent. Anchors, aliases and merge keys ("<<") work, within a
// fixed expansion budget; top-level keys starting with "x-" are ignored, to
// hold anchors as in compose files. Files over [MaxFileSize] are refused
// unread.
//
// README.md beside this file is the user-facing reference.
package repoconfig
