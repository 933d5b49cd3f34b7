package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

const usage = `wsbus: a real-time notification bus from Redis Streams to WebSocket clients.

Usage:
  wsbus serve    [flags]               run a gateway node (applies migrations on a new bus)
  wsbus migrate  [flags]               create or upgrade the bus's Redis keys
  wsbus publish  [flags] TOPIC DATA    append one event ("-" reads DATA from stdin)
  wsbus tail     [flags] TOPIC...      subscribe and print events, resuming on reconnect
  wsbus status   [flags]               nodes, partitions per node, owners, consumer lag (--watch: redraw)
  wsbus bench    [flags]               open many connections to a gateway and measure it

Run 'wsbus COMMAND --help' for a command's flags. Every flag can also be set
with an environment variable WSBUS_<FLAG> (--node-id is WSBUS_NODE_ID) or in a
--config file of 'name = value' lines. The command line wins over the
environment, which wins over the file; a flag that may be repeated (--redis,
--allowed-origins) takes all its values from the one that wins.
`

type command struct {
	run  func(args []string, stdout, stderr io.Writer) error
	help string
}

var commands = map[string]command{
	"serve":   {runServe, "run a gateway node"},
	"migrate": {runMigrate, "create or upgrade the bus's Redis keys"},
	"publish": {runPublish, "append one event"},
	"tail":    {runTail, "subscribe and print events"},
	"status":  {runStatus, "show nodes, partition owners and lag"},
	"bench":   {runBench, "load-test a running gateway"},
}

// Main runs the command line and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "wsbus: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	err := cmd.run(args[1:], stdout, stderr)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintf(stderr, "wsbus %s: %s\n", args[0], userMessage(err))
		return 1
	}
}

// newFlagSet returns a flag set that prints its usage to stdout when
// asked for (--help) and to stderr after a mistake: a bad flag, or
// arguments the command refuses (fs.Usage called after parsing).
func newFlagSet(name, synopsis string, stdout, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("wsbus "+name, flag.ContinueOnError)
	out := &flagOutput{stderr: stderr}
	fs.SetOutput(out)
	fs.Usage = func() {
		w := stderr
		if out.asked {
			w = stdout
		}
		fmt.Fprintf(w, "Usage: wsbus %s\n\nFlags (each also WSBUS_<FLAG> in the environment):\n", synopsis)
		printFlags(w, fs)
	}
	return fs
}

// flagOutput is where a flag set prints its errors, with the flag named
// as the usage names it ("flag provided but not defined: --nope", where
// the flag package says -nope). asked is true while the command line is
// parsed and no error has been printed: the flag package calls Usage then
// only for -h or --help.
type flagOutput struct {
	stderr io.Writer
	asked  bool
}

// flagDashes turns the flag package's single-dash names in its error
// messages into two.
var flagDashes = strings.NewReplacer("defined: -", "defined: --", "for flag -", "for flag --",
	"for -", "for --", "argument: -", "argument: --")

func (o *flagOutput) Write(p []byte) (int, error) {
	o.asked = false
	if _, err := io.WriteString(o.stderr, flagDashes.Replace(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// printFlags lists fs's flags as flag.PrintDefaults does, with the two
// dashes the README and the messages use (the flag package takes one or
// two): a line that names a flag is the only one to start "  -".
func printFlags(w io.Writer, fs *flag.FlagSet) {
	var b strings.Builder
	out := fs.Output()
	fs.SetOutput(&b)
	fs.PrintDefaults()
	fs.SetOutput(out)
	fmt.Fprint(w, strings.ReplaceAll("\n"+b.String(), "\n  -", "\n  --")[1:])
}

// parseOrUsage parses flags (see parse), with a usage the flag package
// prints for --help going to stdout.
func parseOrUsage(fs *flag.FlagSet, args []string) error {
	if out, ok := fs.Output().(*flagOutput); ok {
		out.asked = true
		defer func() { out.asked = false }()
	}
	return parse(fs, args)
}

// flagAfterArgs refuses a flag of fs given after the first argument: the
// flag package stops at the first argument and would take the flag for
// one more (a topic named "--since").
func flagAfterArgs(fs *flag.FlagSet) error {
	for _, arg := range fs.Args() {
		name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		if strings.HasPrefix(arg, "-") && fs.Lookup(name) != nil {
			return fmt.Errorf("%s comes after the arguments: flags go before them (%s --help)", arg, fs.Name())
		}
	}
	return nil
}

// wasSet reports whether a flag was given on the command line, in the
// environment or in the config file.
func wasSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// internalPrefixes start the errors of wsbus's packages (STYLE: "ws:
// connection closed"), which say where an error comes from in logs and
// tests but are noise to someone at the command line.
var internalPrefixes = []string{"streams: ", "bus: ", "migrations: ", "auth: ", "ws: "}

// userMessage is err's text without the internal package prefixes, at its
// start or after a wrapping phrase ("migrating the bus: streams: ...").
func userMessage(err error) string {
	msg := err.Error()
	for _, p := range internalPrefixes {
		msg = strings.ReplaceAll(strings.TrimPrefix(msg, p), ": "+p, ": ")
	}
	return msg
}
