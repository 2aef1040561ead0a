// Command tslink-devcontrol runs a local tailnet for demos and tests: a
// control server with DERP and STUN (package devcontrol). It prints
// "control URL: http://…" once ready and serves until interrupted.
//
// Usage:
//
//	tslink-devcontrol [-listen 127.0.0.1] [-port 0] [-authkey KEY | -authkey-file FILE]
//
// With an auth key set, control rejects every other key. GET /tslink/nodes
// on the control URL lists the registered nodes as JSON.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/tslink/tslink/pkg/devcontrol"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "tslink-devcontrol:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1", "IP address for control, DERP and STUN")
	port := flag.Int("port", 0, "control server TCP port (0 picks one)")
	authKey := flag.String("authkey", "", "the only auth key control accepts (empty: any); prefer -authkey-file, command lines are visible to every user")
	authKeyFile := flag.String("authkey-file", "", "file holding the auth key")
	verbose := flag.Bool("v", false, "log control's requests")
	flag.Parse()
	key := *authKey
	if *authKeyFile != "" {
		b, err := os.ReadFile(*authKeyFile)
		if err != nil {
			return fmt.Errorf("reading -authkey-file: %w", err)
		}
		key = strings.TrimSpace(string(b))
	}
	// Changes reach nodes batched, as from headscale: a netmap to every
	// node on every change of any node grows with the square of the
	// tailnet's size when many containers start at once.
	opts := devcontrol.Options{ListenAddr: *listen, ControlPort: *port, AuthKey: key, MapUpdateInterval: devcontrol.BatchingMapUpdateInterval}
	if *verbose {
		opts.Logf = log.Printf
	}
	s, err := devcontrol.Start(opts)
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Printf("control URL: %s\n", s.URL())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return nil
}
