// Command wsbus is the wsbus gateway and its tools: serve, migrate,
// publish and tail. Run `wsbus --help` for the list.
package main

import (
	"os"

	"github.com/wsbus/wsbus/app"
)

func main() {
	os.Exit(app.Main(os.Args[1:], os.Stdout, os.Stderr))
}
