// Command app is the example preview app Stagely's demo and end-to-end
// tests deploy: two services of one static binary, each in a FROM-scratch
// image. As "backend" it answers with /message.txt; as "web" it calls the
// backend by its compose service name and serves a page with the answer.
package main

import (
	"flag"
	"fmt"
	"html"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	role := flag.String("role", "web", "web or backend")
	listen := flag.String("listen", ":8080", "listen address")
	backend := flag.String("backend", "http://backend:9000/", "the backend's URL, by compose service name")
	flag.Parse()

	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	if *role == "backend" {
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			b, err := os.ReadFile("/message.txt")
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			fmt.Fprint(w, strings.TrimSpace(string(b)))
		})
	} else {
		client := &http.Client{Timeout: 5 * time.Second}
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			resp, err := client.Get(*backend)
			if err != nil {
				http.Error(w, "backend: "+err.Error(), http.StatusBadGateway)
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			fmt.Fprintf(w, "<!doctype html><title>Stagely example</title><h1>Stagely example</h1><p>The backend says: <b>%s</b></p>\n", html.EscapeString(string(b)))
		})
	}
	fmt.Printf("%s listening on %s\n", *role, *listen)
	if err := http.ListenAndServe(*listen, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
