// Command tube is Tubes in one binary: the relay, the daemon and the
// client commands. See package cli.
package main

import (
	"context"
	"os"

	"github.com/tubes-dev/tubes/cli"
)

func main() {
	os.Exit(cli.Run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
