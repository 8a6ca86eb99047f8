// Package fleet is the server's side of the machines that run previews:
// it gives each environment a machine (through a provisioner.Provider),
// hands the machine's agent its deployments, and turns the agent's step
// reports into the outcome the reconciler reports on the pull request. It
// also answers the agent's control calls (agent/protocol) from Postgres.
//
// It does not build or run anything itself (the agent does), and it does
// not carry bytes to the agent (the tunnel does).
package fleet
