package proxy

import (
	"html/template"
	"net/http"
)

// The pages a visitor sees when the proxy itself answers. They name the
// host and say what to do; they never say why in terms only an operator
// would know, and never leak internal addresses.
var pageTemplate = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}code{background:#f3f3f3;padding:.1rem .3rem;border-radius:3px}</style>
</head><body>
<h1>{{.Title}}</h1>
<p>{{.Text}}</p>
{{if .Host}}<p><code>{{.Host}}</code></p>{{end}}
<p><small>Stagely preview proxy · {{.Status}}</small></p>
</body></html>
`))

type page struct {
	Status int
	Title  string
	Text   string
	Host   string
}

func writePage(w http.ResponseWriter, p page) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(p.Status)
	_ = pageTemplate.Execute(w, p)
}

func notFoundPage(w http.ResponseWriter, host string) {
	writePage(w, page{Status: http.StatusNotFound, Title: "No preview here",
		Text: "There is no preview environment at this address. It may have been destroyed when its pull request closed, or the link may be mistyped.",
		Host: host})
}

func unreachablePage(w http.ResponseWriter, host string) {
	writePage(w, page{Status: http.StatusBadGateway, Title: "Preview not reachable right now",
		Text: "This preview exists, but it is not reachable right now: its environment may be starting, redeploying or restarting. Try again in a minute.",
		Host: host})
}

func routeTableDownPage(w http.ResponseWriter, host string) {
	writePage(w, page{Status: http.StatusServiceUnavailable, Title: "Preview routing unavailable",
		Text: "The proxy cannot look up previews right now. Try again in a minute.",
		Host: host})
}

func busyPage(w http.ResponseWriter, host string) {
	w.Header().Set("Retry-After", "5")
	writePage(w, page{Status: http.StatusServiceUnavailable, Title: "Preview busy",
		Text: "This preview has as many connections open as it may have at once. Try again in a moment.",
		Host: host})
}
