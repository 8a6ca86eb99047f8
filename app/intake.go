package app

import (
	"bytes"
	"errors"
	"io"
	"net/http"

	"github.com/google/go-github/v60/github"
	"github.com/palantir/go-githubapp/githubapp"
	"github.com/rs/zerolog"
)

// HookPath is where GitHub delivers webhooks.
const HookPath = "/api/github/hook"

// MaxBody is the largest webhook body accepted. GitHub caps payloads at
// 25 MB and drops larger ones, so anything above it is not from GitHub.
const MaxBody = 25 << 20

// NewIntake returns the webhook endpoint: a go-githubapp dispatcher behind
// a body limit (413 above it) and a signature check (401 when
// X-Hub-Signature-256 is missing or wrong, before anything is parsed or
// recorded). Malformed JSON is a 400; events Stagely does not handle are
// acknowledged with 202 and dropped.
func NewIntake(b *Base, secret string) http.Handler {
	d := githubapp.NewEventDispatcher(Handlers(b), secret,
		githubapp.WithErrorCallback(onError(b.Logger)),
		githubapp.WithResponseCallback(onResponse),
	)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "webhooks are POSTed", http.StatusMethodNotAllowed)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				http.Error(w, "payload over 25 MB", http.StatusRequestEntityTooLarge)
				return
			}
			http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
			return
		}
		sig := r.Header.Get(github.SHA256SignatureHeader)
		if sig == "" {
			http.Error(w, "missing "+github.SHA256SignatureHeader, http.StatusUnauthorized)
			return
		}
		if err := github.ValidateSignature(sig, body, []byte(secret)); err != nil {
			http.Error(w, "signature does not match", http.StatusUnauthorized)
			return
		}
		if r.Header.Get(github.EventTypeHeader) == "" {
			http.Error(w, "missing "+github.EventTypeHeader, http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		d.ServeHTTP(w, r)
	})
}

func onError(log zerolog.Logger) githubapp.ErrorCallback {
	return func(w http.ResponseWriter, r *http.Request, err error) {
		var ve githubapp.ValidationError
		switch {
		case errors.Is(err, ErrMalformed), errors.As(err, &ve):
			http.Error(w, err.Error(), http.StatusBadRequest)
		default:
			log.Error().Err(err).Str("delivery", r.Header.Get(github.DeliveryIDHeader)).Msg("webhook not recorded")
			// GitHub shows the failure; a redelivery retries it.
			http.Error(w, "could not record the event", http.StatusInternalServerError)
		}
	}
}

func onResponse(w http.ResponseWriter, r *http.Request, event string, handled bool) {
	if !handled {
		w.WriteHeader(http.StatusAccepted)
		return
	}
	w.WriteHeader(http.StatusOK)
}
