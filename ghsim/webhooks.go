package ghsim

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Delivery is one webhook the simulator built (and sent, when a webhook URL
// is set): what GitHub shows under an App's "Recent Deliveries".
type Delivery struct {
	GUID           string          `json:"guid"`
	Event          string          `json:"event"`
	Action         string          `json:"action"`
	InstallationID int64           `json:"installation_id"`
	Payload        json.RawMessage `json:"payload"`
	Redelivery     bool            `json:"redelivery"`
	DeliveredAt    time.Time       `json:"delivered_at"`
	// Status is the HTTP status the receiver answered; 0 if it was not sent
	// (no webhook URL) or the request failed (see Error).
	Status int    `json:"status"`
	Error  string `json:"error,omitempty"`
}

// hookSchemas are the compiled payload schemas, by webhook name.
type hookSchemas struct {
	byName map[string]*jsonschema.Schema
}

func loadHookSchemas() (*hookSchemas, error) {
	data, err := readGitHubData(webhookSubsetFile)
	if err != nil {
		return nil, err
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("ghsim: parse webhook schemas: %w", err)
	}
	const loc = "ghsim:webhooks-api.json"
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020) // OpenAPI 3.1 schemas are 2020-12
	if err := c.AddResource(loc, doc); err != nil {
		return nil, fmt.Errorf("ghsim: webhook schemas: %w", err)
	}
	hs := &hookSchemas{byName: map[string]*jsonschema.Schema{}}
	for _, k := range webhookKinds() {
		// Each webhook's request body is a $ref to a component schema.
		sch, err := c.Compile(loc + "#/webhooks/" + k.schema + "/post/requestBody/content/application~1json/schema")
		if err != nil {
			return nil, fmt.Errorf("ghsim: compile webhook schema %s: %w", k.schema, err)
		}
		hs.byName[k.schema] = sch
	}
	return hs, nil
}

// validate checks a payload against the schema of its webhook.
func (hs *hookSchemas) validate(schema string, payload []byte) error {
	sch := hs.byName[schema]
	if sch == nil {
		return fmt.Errorf("no schema for webhook %s", schema)
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(payload))
	if err != nil {
		return err
	}
	return sch.Validate(v)
}

func kindFor(event, action string) (webhookKind, bool) {
	for _, k := range webhookKinds() {
		if k.event == event && k.action == action {
			return k, true
		}
	}
	return webhookKind{}, false
}

// absent in an overlay deletes the key from the template.
type absent struct{}

// buildPayload starts from the recorded example of event.action, overlays
// the simulated state and checks the result against the webhook schema. A
// payload that does not validate is a simulator bug and is not sent.
func (s *Sim) buildPayload(event, action string, overlay obj) ([]byte, error) {
	k, ok := kindFor(event, action)
	if !ok {
		return nil, fmt.Errorf("ghsim: no webhook kind %s.%s", event, action)
	}
	tmpl, err := readGitHubData("webhooks/" + k.template)
	if err != nil {
		return nil, err
	}
	var base obj
	if err := json.Unmarshal(tmpl, &base); err != nil {
		return nil, fmt.Errorf("ghsim: template %s: %w", k.template, err)
	}
	overlay["action"] = action
	merge(base, overlay)
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(base); err != nil {
		return nil, fmt.Errorf("ghsim: encode %s.%s payload: %w", event, action, err)
	}
	payload := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if err := s.hooks.validate(k.schema, payload); err != nil {
		return nil, fmt.Errorf("ghsim bug: %s.%s payload does not match GitHub's webhook schema: %w", event, action, err)
	}
	return payload, nil
}

// merge writes overlay into dst: objects merge key by key, anything else
// replaces, absent{} deletes. Permission sets replace whole: a merge would
// grant the example App's permissions to ours.
func merge(dst, overlay obj) {
	for k, v := range overlay {
		if _, del := v.(absent); del {
			delete(dst, k)
			continue
		}
		if ov, ok := v.(obj); ok && k != "permissions" {
			if dv, ok := dst[k].(map[string]any); ok {
				merge(dv, ov)
				continue
			}
		}
		dst[k] = v
	}
}

// queueDelivery records a new delivery of payload. Must hold s.mu.
func (s *Sim) queueDelivery(event, action string, instID int64, payload []byte) (*Delivery, error) {
	guid, err := newGUID()
	if err != nil {
		return nil, err
	}
	d := &Delivery{GUID: guid, Event: event, Action: action, InstallationID: instID, Payload: payload}
	s.deliveries = append(s.deliveries, d)
	return d, nil
}

// send delivers d synchronously, without holding s.mu (the receiver may call
// the API while handling it), and returns a copy with the outcome.
func (s *Sim) send(ctx context.Context, d *Delivery) Delivery {
	s.mu.Lock()
	target, secret := s.webhookURL, s.cfg.WebhookSecret
	d.DeliveredAt = s.now()
	s.mu.Unlock()

	status, errText := 0, ""
	if target != "" {
		status, errText = s.post(ctx, target, secret, d)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	d.Status, d.Error = status, errText
	return *d
}

func (s *Sim) post(ctx context.Context, target, secret string, d *Delivery) (int, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(d.Payload))
	if err != nil {
		return 0, err.Error()
	}
	h := req.Header
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "GitHub-Hookshot/ghsim01")
	h.Set("X-GitHub-Event", d.Event)
	h.Set("X-GitHub-Delivery", d.GUID)
	h.Set("X-GitHub-Hook-ID", strconv.FormatInt(s.hookID, 10))
	h.Set("X-GitHub-Hook-Installation-Target-Type", "integration")
	h.Set("X-GitHub-Hook-Installation-Target-ID", strconv.FormatInt(s.cfg.AppID, 10))
	if secret != "" {
		h.Set("X-Hub-Signature", "sha1="+hmacHex(sha1.New, secret, d.Payload))
		h.Set("X-Hub-Signature-256", "sha256="+hmacHex(sha256.New, secret, d.Payload))
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, ""
}

func hmacHex(h func() hash.Hash, secret string, body []byte) string {
	m := hmac.New(h, []byte(secret))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// newGUID makes a random UUID, the form of GitHub's X-GitHub-Delivery.
func newGUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("ghsim: delivery guid: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// Deliveries returns every delivery so far, oldest first.
func (s *Sim) Deliveries() []Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Delivery, len(s.deliveries))
	for i, d := range s.deliveries {
		out[i] = *d
	}
	return out
}

// Redeliver sends a past delivery again with the same GUID and body, as
// GitHub's "Redeliver" button does, and records it as a new delivery.
func (s *Sim) Redeliver(ctx context.Context, guid string) (Delivery, error) {
	s.mu.Lock()
	var orig *Delivery
	for _, d := range s.deliveries {
		if d.GUID == guid {
			orig = d
			break
		}
	}
	if orig == nil {
		s.mu.Unlock()
		return Delivery{}, fmt.Errorf("ghsim: no delivery %s", guid)
	}
	d := &Delivery{GUID: orig.GUID, Event: orig.Event, Action: orig.Action, InstallationID: orig.InstallationID,
		Payload: orig.Payload, Redelivery: true}
	s.deliveries = append(s.deliveries, d)
	s.mu.Unlock()
	return s.send(ctx, d), nil
}
