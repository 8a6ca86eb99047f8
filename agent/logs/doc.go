// Package logs carries build and run output from the agent's commands and
// containers to whoever ships it to the server: it splits byte streams into
// lines, masks every secret value in each whole line (so a secret split
// across two writes is still caught), and holds lines in a bounded buffer
// that never blocks its writers: when the reader falls behind, the oldest
// lines are dropped and a "N lines dropped" marker takes their place.
//
// It is not the transport: a reader drains the Buffer into a
// protocol.LogStream or anything else.
package logs
