package repoconfig_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/stagely-dev/stagely/repoconfig"
)

func ExampleParse() {
	file := []byte(`version: 1
previews:
  - name: web
    service: app
    port: 3000
ttl: 48h
`)
	cfg, err := repoconfig.Parse(file)
	if err != nil {
		fmt.Println(err)
		return
	}
	cfg.Defaults(repoconfig.Defaults{
		Provider: repoconfig.Provider{Name: "hetzner", Size: "cx22", Region: "fsn1"},
		TTL:      72 * time.Hour,
	})
	p := cfg.Previews[0]
	fmt.Printf("%s -> %s:%d, compose %v, %s in %s, ttl %v\n",
		p.Name, p.Service, p.Port, cfg.Compose, cfg.Provider.Name, cfg.Provider.Region, cfg.TTL)
	// Output:
	// web -> app:3000, compose [compose.yaml], hetzner in fsn1, ttl 48h0m0s
}

func ExampleParseError() {
	_, err := repoconfig.Parse([]byte(`version: 1
previewz:
  - name: web
previews:
  - name: web
    service: app
    port: 70000
`))
	var pe *repoconfig.ParseError
	if errors.As(err, &pe) {
		fmt.Println(pe)
		fmt.Println(pe.Errs[0].Line, pe.Errs[0].Column)
	}
	// Output:
	// line 2: unknown key "previewz" (did you mean "previews"?)
	// line 7: previews[0].port: must be between 1 and 65535
	// 2 1
}
