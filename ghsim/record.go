package ghsim

import (
	"encoding/json"
	"net/url"
	"time"
)

// Request is the record of one API request the simulator received (admin
// and tarball download requests are not recorded).
type Request struct {
	Time      time.Time       `json:"time"`
	Method    string          `json:"method"`
	Path      string          `json:"path"` // escaped, without an /api/v3 prefix
	Query     url.Values      `json:"query,omitempty"`
	Body      json.RawMessage `json:"body,omitempty"` // the JSON body; a JSON string if it was not JSON
	Status    int             `json:"status"`
	Operation string          `json:"operation,omitempty"` // operationId in GitHub's description

	// Valid says the request matched an operation the simulator serves and
	// satisfied its description and GitHub's documented limits. Credentials
	// and the existence of resources do not enter into it.
	Valid bool   `json:"valid"`
	Error string `json:"error,omitempty"` // why it was invalid or refused

	// ResponseError is set, with Config.CheckResponses, when the simulator's
	// own answer did not match the description: a simulator bug.
	ResponseError string `json:"response_error,omitempty"`
}

func recordBody(raw []byte) json.RawMessage {
	if len(raw) == 0 {
		return nil
	}
	if json.Valid(raw) {
		return append(json.RawMessage(nil), raw...)
	}
	b, _ := json.Marshal(string(raw))
	return b
}

// record keeps rec in memory and appends it to the record file. Must hold s.mu.
func (s *Sim) record(rec Request) {
	s.records = append(s.records, rec)
	if s.recordFile == nil {
		return
	}
	line, err := json.Marshal(rec)
	if err != nil {
		return // cannot happen: every field marshals
	}
	// A failed write must not fail the API request it records; the file is
	// a debugging aid and Requests() has everything.
	_, _ = s.recordFile.Write(append(line, '\n'))
}

// Requests returns the records of every API request received so far.
func (s *Sim) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.records...)
}
