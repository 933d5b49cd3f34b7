package bus

import (
	"io/fs"
	"os"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/redistest"
)

// TestScripts checks every Lua file under lua/: it holds code, and the
// script composed with it compiles in a real Redis, so a syntax error shows
// here rather than in whichever test first runs the script. A prelude is
// loaded on its own too, where an error's line number is its own.
func TestScripts(t *testing.T) {
	tests := []struct {
		file   string
		lua    string        // the file, as embedded
		script *redis.Script // the script composed with it; nil for a prelude
	}{
		{"lib/streams.lua", luaStreams, nil},
		{"lib/seq.lua", luaSeq, nil},
		{"lib/keep.lua", luaKeep, nil},
		{"lib/due.lua", luaDue, nil},
		{"acquire.lua", acquireLua, acquireScript},
		{"renew.lua", renewLua, renewScript},
		{"release.lua", releaseLua, releaseScript},
		{"read.lua", readLua, readScript},
		{"claim.lua", claimLua, claimScript},
		{"ensure.lua", ensureLua, ensureScript},
		{"apply.lua", applyLua, applyScript},
		{"forward.lua", forwardLua, forwardScript},
		{"trim.lua", trimLua, trimScript},
		{"ack.lua", ackLua, ackScript},
		{"escalate.lua", escalateLua, escalateScript},
		{"unacked.lua", unackedLua, unackedScript},
		{"escalate_once.lua", escalateOnceLua, escalateOnceScript},
		{"due_done.lua", dueDoneLua, dueDoneScript},
		{"renew_epoch.lua", renewEpochLua, renewEpochScript},
	}
	dir := os.DirFS("lua")
	files, _ := fs.Glob(dir, "*.lua")
	libs, _ := fs.Glob(dir, "lib/*.lua")
	checked := make(map[string]bool, len(tests))
	for _, tt := range tests {
		checked[tt.file] = true
	}
	for _, f := range append(files, libs...) {
		if !checked[f] {
			t.Errorf("lua/%s is not checked here: add it to the table", f)
		}
	}
	rdb := redistest.Start(t).Client(t)
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			if disk, err := fs.ReadFile(dir, tt.file); err != nil || string(disk) != tt.lua {
				t.Fatalf("lua/%s differs from the string the table names (%v)", tt.file, err)
			}
			redistest.NonEmptyLua(t, tt.file, tt.lua)
			if tt.script == nil {
				tt.script = redis.NewScript(tt.lua)
			}
			redistest.LoadScript(t, rdb, tt.script)
		})
	}
}
