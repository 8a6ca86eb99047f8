// Command stageapp is the two-service app the agent's tests deploy: built
// static, copied into FROM-scratch images. As "backend" it answers with
// the first line of /message.txt; as "web" it asks the backend, by its
// compose service name, and answers "web: <backend's answer>". With
// -probe it is its own health check.
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	role := flag.String("role", "web", "web or backend")
	listen := flag.String("listen", ":8080", "listen address")
	backend := flag.String("backend", "http://backend:9000/", "backend URL (web)")
	probe := flag.String("probe", "", "GET this URL and exit 0 if it answers 200")
	flag.Parse()

	if *probe != "" {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get(*probe)
		if err != nil || resp.StatusCode != http.StatusOK {
			os.Exit(1)
		}
		os.Exit(0)
	}

	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	switch *role {
	case "backend":
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			b, err := os.ReadFile("/message.txt")
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			first, _, _ := strings.Cut(string(b), "\n")
			fmt.Fprint(w, first)
		})
	default:
		// Printed on purpose: the agent must mask it in the log stream.
		fmt.Printf("web starting, API_KEY=%s\n", os.Getenv("API_KEY"))
		// /banner serves a file bind-mounted from the repository.
		http.HandleFunc("/banner", func(w http.ResponseWriter, r *http.Request) {
			b, err := os.ReadFile("/static/banner.txt")
			if err != nil {
				http.Error(w, err.Error(), http.StatusNotFound)
				return
			}
			w.Write(b)
		})
		client := &http.Client{Timeout: 5 * time.Second}
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			resp, err := client.Get(*backend)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			fmt.Fprintf(w, "web: %s", b)
		})
	}
	fmt.Printf("%s listening on %s\n", *role, *listen)
	if err := http.ListenAndServe(*listen, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
