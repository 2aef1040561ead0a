package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// runHelper runs the test binary as a child "plugin process" holding one
// node, when TSLINK_HELPER=node: it reads a Config (JSON) from
// TSLINK_HELPER_CONFIG, starts the node (attaching it to TSLINK_HELPER_NETNS
// unless adopting), prints "READY <ipv4>" and serves until SIGTERM (Close) or
// SIGKILL (nothing: the persistent TUN stays).
func runHelper() bool {
	if os.Getenv("TSLINK_HELPER") != "node" {
		return false
	}
	var cfg Config
	if err := json.Unmarshal([]byte(os.Getenv("TSLINK_HELPER_CONFIG")), &cfg); err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	cfg.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := Start(ctx, cfg)
	if err == nil && cfg.AdoptNetNS == "" {
		err = n.Attach(os.Getenv("TSLINK_HELPER_NETNS"))
	}
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	v4, _ := n.Addrs()
	fmt.Println("READY", v4)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
	n.Close(context.Background())
	os.Exit(0)
	return true
}
