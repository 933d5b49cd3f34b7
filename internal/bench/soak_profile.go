package bench

import (
	"bufio"
	"bytes"
	"errors"
	"strconv"
	"strings"
)

// poolWorker is the function an idle worker of the gateway's pool (ws's
// pool.go) waits in for its next task. Such workers come and go with the
// load (up to ws.Config.Workers, 256 by default, each ending after 10 s
// without work): keepalive pings keep dozens of them alive on an idle
// gateway, so they are told apart from the goroutines that must not grow.
const poolWorker = "github.com/wsbus/wsbus/ws.(*pool).worker"

// errBadProfile is returned for a goroutine profile not in the text form
// of /debug/pprof/goroutine?debug=1.
var errBadProfile = errors.New("bench: not a goroutine profile (debug=1)")

// goroutineCounts reads a goroutine profile in the text form of
// /debug/pprof/goroutine?debug=1 (a record per distinct stack: "N @
// addresses", then a "#" line per frame, innermost first) and returns how
// many goroutines it counts and how many of them are idle pool workers:
// their innermost frame is poolWorker itself. Its input comes from the
// server under test: it is fuzzed.
func goroutineCounts(b []byte) (total, idleWorkers int, err error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	if !sc.Scan() || !strings.HasPrefix(sc.Text(), "goroutine profile: total ") {
		return 0, 0, errBadProfile
	}
	n, first := 0, false // the count of the record being read; its first frame not yet seen
	for sc.Scan() {
		line := sc.Text()
		if count, rest, ok := strings.Cut(line, " @"); ok && !strings.HasPrefix(line, "#") {
			if n, err = strconv.Atoi(count); err != nil || n < 0 || n > 1<<30 || rest != "" && rest[0] != ' ' {
				return 0, 0, errBadProfile
			}
			total += n
			first = true
			continue
		}
		if !first || !strings.HasPrefix(line, "#") || strings.HasPrefix(line, "# labels:") {
			continue
		}
		first = false
		fields := strings.Fields(line) // "#", address, function+offset, file:line
		if len(fields) >= 3 {
			fn, _, _ := strings.Cut(fields[2], "+")
			if fn == poolWorker {
				idleWorkers += n
			}
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	return total, idleWorkers, nil
}
