package streams

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Acked is a subject's acknowledged cursor on a topic (see bus/ack.go for
// how acks move it) and how many events follow it.
type Acked struct {
	// ID is the newest event the subject acknowledged; zero when it never
	// acknowledged one (or its cursor expired with the topic's history).
	ID ID
	// Unread is how many events of the topic follow ID, exactly: the
	// head's sequence number minus the cursor's when both are of one
	// sequence, which they are unless Redis lost data; otherwise counted.
	// A cursor of zero is followed by every event of the sequence, trimmed
	// ones included.
	Unread int64
}

// cursorScript reads a subject's cursor and how many events follow it.
// The cursors' hash lives exactly as long as the history (see bus/ack.go),
// so the seq stored with the cursor is of the head's sequence; the seq the
// history holds at the cursor is preferred while it is retained. Anything
// inconsistent (Redis lost writes) is counted instead.
// KEYS: acked hash, history. ARGV: subject.
// Returns {acked ID or "0", unread}.
var cursorScript = redis.NewScript(`
local function seqof(e)
  for i = 1, #e[2], 2 do
    if e[2][i] == 'seq' then return tonumber(e[2][i + 1]) end
  end
  return nil
end
local function idless(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local v = redis.call('HGET', KEYS[1], 's:' .. ARGV[1])
local id, seq = nil, nil
if v then
  id, seq = string.match(v, '^(%S+) (%d+)$')
end
local head = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
if not head then
  return {id or '0', 0}
end
local hseq = seqof(head)
if not id then
  if hseq then return {'0', hseq} end
  return {'0', redis.call('XLEN', KEYS[2])}
end
if not idless(id, head[1]) then
  return {id, 0}
end
local at = redis.call('XRANGE', KEYS[2], id, id)[1]
if at then seq = seqof(at) else seq = tonumber(seq) end
if hseq and seq and seq > 0 and seq <= hseq then
  return {id, hseq - seq}
end
return {id, #redis.call('XRANGE', KEYS[2], '(' .. id, '+')}`)

// CursorCmd queues the read of subject's cursor on topic in pipe, for a
// subscription that reads its head in the same round trip; ReadCursor
// reads its answer.
func (h *History) CursorCmd(ctx context.Context, pipe redis.Pipeliner, topic, subject string) *redis.Cmd {
	p := Partition(topic, h.n)
	return cursorScript.EvalSha(ctx, pipe, []string{h.keys.Acked(p, topic), h.keys.Topic(p, topic)}, subject)
}

// ReadCursor decodes the answer of a cursor read.
func ReadCursor(cmd *redis.Cmd) (Acked, error) {
	res, err := cmd.Slice()
	if err != nil {
		return Acked{}, fmt.Errorf("reading acknowledged cursor: %w", err)
	}
	if len(res) != 2 {
		return Acked{}, fmt.Errorf("reading acknowledged cursor: unexpected reply %v", res)
	}
	s, _ := res[0].(string)
	id, err := ParseID(s)
	if err != nil {
		return Acked{}, fmt.Errorf("reading acknowledged cursor: %w", err)
	}
	n, _ := res[1].(int64)
	return Acked{ID: id, Unread: n}, nil
}

// LoadScripts loads the scripts History runs in pipelines, where EVALSHA
// cannot fall back to EVAL by itself.
func (h *History) LoadScripts(ctx context.Context) error {
	return cursorScript.Load(ctx, h.rdb).Err()
}

// ReadCursor returns subject's cursor on topic.
func (h *History) ReadCursor(ctx context.Context, topic, subject string) (Acked, error) {
	p := Partition(topic, h.n)
	cmd := cursorScript.Run(ctx, h.rdb, []string{h.keys.Acked(p, topic), h.keys.Topic(p, topic)}, subject)
	return ReadCursor(cmd)
}

// isNoScript reports a NOSCRIPT reply: a pipelined EVALSHA of a script
// Redis does not hold (it restarted); load it and retry.
func isNoScript(err error) bool {
	return err != nil && len(err.Error()) >= 8 && err.Error()[:8] == "NOSCRIPT"
}
