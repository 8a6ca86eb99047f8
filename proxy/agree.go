package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/valkey-io/valkey-go"
)

// Agree checks that this node routes as the others sharing the route
// table do: under the same preview domain, and with the same hop secret
// (its fingerprint, never the secret) when it serves the hop. The first
// node records them; a node that differs is refused at its start, naming
// the difference, instead of serving 404s (another domain's hosts are
// not its) or 502s (a hop the others cannot verify) to every visitor whose
// agent is connected elsewhere.
func (v *Valkey) Agree(ctx context.Context, previewDomain string, hopSecret []byte) error {
	if got, err := v.agree(ctx, "preview-domain", previewDomain); err != nil {
		return err
	} else if got != previewDomain {
		return fmt.Errorf("the preview domain %q differs from %q, which the other nodes sharing the route table (prefix %q) serve: "+
			"give every node the same one (to change it for all, stop them all and delete the key %q)",
			previewDomain, got, v.prefix, v.settingKey("preview-domain"))
	}
	if len(hopSecret) == 0 {
		return nil
	}
	m := hmac.New(sha256.New, hopSecret)
	m.Write([]byte("stagely hop secret fingerprint"))
	fp := hex.EncodeToString(m.Sum(nil)[:16])
	if got, err := v.agree(ctx, "hop-secret-fingerprint", fp); err != nil {
		return err
	} else if got != fp {
		return fmt.Errorf("the hop secret differs from the one the other nodes sharing the route table (prefix %q) use: "+
			"give every node the same one (to change it for all, stop them all and delete the key %q)",
			v.prefix, v.settingKey("hop-secret-fingerprint"))
	}
	return nil
}

func (v *Valkey) settingKey(name string) string { return v.prefix + "setting:" + name }

// agree records value as the table's setting name unless one is there,
// and returns the setting.
func (v *Valkey) agree(ctx context.Context, name, value string) (string, error) {
	key := v.settingKey(name)
	if err := v.c.Do(ctx, v.c.B().Set().Key(key).Value(value).Nx().Build()).Error(); err != nil && !valkey.IsValkeyNil(err) {
		return "", fmt.Errorf("record the route table's %s: %w", name, err)
	}
	got, err := v.c.Do(ctx, v.c.B().Get().Key(key).Build()).ToString()
	if valkey.IsValkeyNil(err) {
		return "", errors.New("the route table's " + name + " vanished as it was recorded; start again")
	}
	if err != nil {
		return "", fmt.Errorf("read the route table's %s: %w", name, err)
	}
	return got, nil
}
