// Command failapp is the misbehaving service of the agent's failure tests,
// built static and copied into FROM-scratch images. With -exit it prints a
// line and exits with that code at once (also usable as a healthcheck that
// never passes). Otherwise it runs until SIGTERM or SIGINT (exit 0),
// answering 200 on -listen if given; with -usr1-exit, SIGUSR1 makes it
// exit with that code, as a crash after a successful start would.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	exit := flag.Int("exit", -1, "print a line and exit with this code at once")
	listen := flag.String("listen", "", "answer 200 on this address")
	usr1 := flag.Int("usr1-exit", -1, "exit with this code on SIGUSR1")
	flag.Parse()

	if *exit >= 0 {
		fmt.Fprintf(os.Stderr, "failapp: exiting with code %d\n", *exit)
		os.Exit(*exit)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1)
	if *listen != "" {
		go func() {
			err := http.ListenAndServe(*listen, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintln(w, "ok")
			}))
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}()
		fmt.Printf("failapp listening on %s\n", *listen)
	} else {
		fmt.Println("failapp waiting for a signal")
	}
	for s := range sigs {
		if s == syscall.SIGUSR1 {
			if *usr1 < 0 {
				continue
			}
			fmt.Fprintf(os.Stderr, "failapp: SIGUSR1, exiting with code %d\n", *usr1)
			os.Exit(*usr1)
		}
		os.Exit(0)
	}
}
