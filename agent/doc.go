// Package agent is the deploy engine of the program that runs on each
// preview VM (`stagely agent`): given a desired deployment and its source
// tarball it unpacks the tree, checks the compose files against the
// server's policy, writes the override (own project name, Stagely labels,
// no published ports, bounded logs, variables through a private env
// file), runs `docker compose up --build --wait`, finds the previewed
// services on the compose network and health-checks the first; it
// redeploys in place on a new SHA and destroys everything of the project
// on request. Progress goes to a Reporter as steps and masked log lines.
//
// The engine is a library and knows no transport: Agent.Run drives it
// from a protocol.Client (long-poll, source stream, reports), which in
// production runs over control streams of the tunnel. It is not the
// tunnel, and it does not proxy preview traffic: it only says where each
// preview's service listens.
package agent
