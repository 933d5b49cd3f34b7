package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
)

// statusFrames is how `wsbus status --watch` draws.
type statusFrames struct {
	every time.Duration
	json  bool // one JSON object per line, for tools
	clear bool // stdout is a terminal: clear the screen before each frame
}

// statusReadTimeout bounds one read of the status, as a one-shot `wsbus
// status` is bounded.
const statusReadTimeout = 10 * time.Second

// watchStatus prints the status of c's bus every f.every until ctx is done.
func (c *common) watchStatus(ctx context.Context, w io.Writer, f statusFrames) error {
	rdb, keys, err := c.open()
	if err != nil {
		return err
	}
	defer rdb.Close()
	return watchStatus(ctx, w, f, func(ctx context.Context) (Status, error) { return ReadStatus(ctx, rdb, keys) })
}

// watchStatus draws what read returns every f.every until ctx is done,
// which is not an error. A failed read is drawn as that frame and the next
// one tries again: an operator watching a fleet through a Redis failover
// wants the screen to come back by itself. Only a failed write (stdout
// gone) ends it early.
func watchStatus(ctx context.Context, w io.Writer, f statusFrames, read func(context.Context) (Status, error)) error {
	tick := time.NewTicker(f.every)
	defer tick.Stop()
	for first := true; ; first = false {
		readCtx, cancel := context.WithTimeout(ctx, statusReadTimeout)
		st, err := read(readCtx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err := f.draw(w, st, err, first); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// draw writes one frame in one write, so a terminal never shows half of
// one.
func (f statusFrames) draw(w io.Writer, st Status, readErr error, first bool) error {
	var b bytes.Buffer
	switch {
	case f.json && readErr != nil:
		_ = json.NewEncoder(&b).Encode(map[string]string{"error": userMessage(readErr), "time": time.Now().UTC().Format(time.RFC3339)})
	case f.json:
		_ = json.NewEncoder(&b).Encode(st)
	default:
		if f.clear {
			b.WriteString("\x1b[H\x1b[2J") // cursor home, clear screen
		} else if !first {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "Every %v: wsbus status at %s (Ctrl-C to stop)\n\n", f.every, time.Now().Format("15:04:05"))
		if readErr != nil {
			fmt.Fprintf(&b, "reading the status: %s\n", userMessage(readErr))
		} else {
			printStatus(&b, st)
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

// isTerminal reports whether w is a terminal (a character device), where
// --watch redraws in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
