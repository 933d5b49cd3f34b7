package streams

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Event is one retained event of a topic.
type Event struct {
	ID   string
	Seq  uint64 // its place in the topic's sequence: 1, 2, 3, ...; 0 for events written before wsbus numbered them
	Data string
}

// Cursor is where a subscriber resumes: the last event it processed.
type Cursor struct {
	// Since is that event's ID; "0" (or the zero ID) for everything
	// retained.
	Since string
	// Seq is that event's seq, when HasSeq: with it a resume that finds
	// events trimmed can tell exactly how many (Resume.Missed).
	Seq    uint64
	HasSeq bool
	// Epoch is the partition epoch the subscriber was given; "" when none.
	Epoch string
}

// Resume is the answer to a client that subscribes with a cursor.
type Resume struct {
	// Epoch is the partition's current epoch, for the client to send back.
	Epoch string
	// Head is the topic's newest event ID (zero when it has none) and
	// HeadSeq its seq.
	Head    ID
	HeadSeq uint64
	// Recovered is true only when nothing after the cursor was trimmed and
	// the cursor belongs to this epoch and stream.
	Recovered bool
	// Missed, when MissedKnown, is exactly how many events after the
	// cursor were trimmed away: known only when some may have been (the
	// first retained event follows the cursor), the cursor came with its
	// seq, and it belongs to this epoch and this life of the topic's
	// sequence. Recovered is then Missed == 0.
	Missed      uint64
	MissedKnown bool
	// WentBack is true when the cursor's ID is in this epoch and life of
	// the sequence but its seq does not lead to what follows it: Redis
	// lost the newest events and new ones took their seqs (or the client
	// sent a seq that is not its cursor's). Recovered is false.
	WentBack bool
	// Acked has the acknowledged cursor of each subject Resume was asked
	// for, read in the same transaction as the head.
	Acked map[string]Acked
	// Events is the first page of events after the cursor (or of everything
	// retained when the cursor cannot be trusted).
	Events []Event
	// More is true when Events ended at one of the page's bounds rather
	// than at the newest event; read on with ReadPage.
	More bool
}

// Page bounds one read of history: at most Events events and, when Bytes
// is positive, no event more once their data would pass Bytes. The first
// event comes whatever its size, so a page is never empty while history
// has more.
//
// A bound in events alone lets the size of a page follow the size of the
// events: 500 events of 64 KiB are 32 MiB, held twice by a gateway (the
// reply and the frames) for every resume reading at once. Bytes bounds
// what Redis sends; Redis reads at most a chunk of events past the page
// (page.lua).
type Page struct {
	Events int
	Bytes  int
}

// History reads topic history streams.
//
// A history stream starts its sequence at 1 whenever it is created anew
// (the first event of a topic, or the first after its idle history
// expired). The owner then marks where the sequence began by setting the
// stream's max-deleted-entry-id to that first entry's ID (see
// bus/lua/apply.lua). Trimming never moves that mark, and XDEL
// moves it forward, so a cursor below it is from an earlier life of the
// topic (or from before an entry deleted by hand): nothing can be proved
// about what it missed.
type History struct {
	rdb  redis.Cmdable
	keys Keys
	n    int
}

// NewHistory returns a History for a bus of n partitions.
func NewHistory(rdb redis.Cmdable, keys Keys, n int) *History {
	return &History{rdb: rdb, keys: keys, n: n}
}

// Resume answers a subscription to topic that resumes from cursor c. It
// reads the first page of events after it, and the acknowledged cursors
// of subjects in the same round trip (two more when Redis has not cached
// the page script).
func (h *History) Resume(ctx context.Context, topic string, c Cursor, page Page, subjects ...string) (Resume, error) {
	r, err := h.resume(ctx, topic, c, page, subjects)
	if isNoScript(err) {
		// Redis has not cached the page script (it restarted, or failed
		// over): a pipeline cannot load it. Loaded, the whole read is
		// done again, so that the page is read with the head it is
		// judged against, not a round trip later.
		if err = pageScript.Load(ctx, h.rdb).Err(); err != nil {
			return Resume{}, fmt.Errorf("loading the history page script: %w", err)
		}
		r, err = h.resume(ctx, topic, c, page, subjects)
	}
	return r, err
}

func (h *History) resume(ctx context.Context, topic string, c Cursor, page Page, subjects []string) (Resume, error) {
	after, err := ParseID(c.Since)
	if err != nil {
		return Resume{}, err
	}
	p := Partition(topic, h.n)
	key := h.keys.Topic(p, topic)
	pipe := h.pipeline(subjects)
	epochCmd := pipe.HGet(ctx, h.keys.PartitionMeta(p), "epoch")
	infoCmd := pipe.XInfoStream(ctx, key)
	pageCmd := queuePage(ctx, pipe, key, "("+after.String(), page)
	ackedCmds := h.ackedCmds(ctx, pipe, p, topic, subjects)
	_, _ = pipe.Exec(ctx) // each command's error is read below

	var r Resume
	if r.Epoch, err = epochCmd.Result(); err != nil && !errors.Is(err, redis.Nil) {
		return Resume{}, fmt.Errorf("reading epoch of %s: %w", topic, err)
	}
	sameEpoch := c.Epoch == "" || c.Epoch == r.Epoch
	info, err := infoCmd.Result()
	if isNoSuchKey(err) {
		// Nothing retained. Only a cursor of "0" can be sure it missed nothing.
		r.Recovered = after.IsZero() && sameEpoch
		r.Acked, err = h.readAcked(ctx, key, subjects, ackedCmds, nil)
		return r, err
	}
	if err != nil {
		return Resume{}, fmt.Errorf("reading history of %s: %w", topic, err)
	}
	if r.Acked, err = h.readAcked(ctx, key, subjects, ackedCmds, info); err != nil {
		return Resume{}, err
	}
	r.Head = MustParseID(info.LastGeneratedID)
	r.HeadSeq = headSeq(info)
	// A zero cursor asks for everything retained: it belongs to every life
	// of the sequence.
	thisLife := after.IsZero() || !after.Less(MustParseID(info.MaxDeletedEntryID))
	trusted := sameEpoch && !r.Head.Less(after)
	r.Recovered = trusted && thisLife && nothingTrimmedAfter(info, after, r.Head)
	if !r.Recovered && trusted && thisLife && c.HasSeq {
		r.Missed, r.MissedKnown = missed(info.Length, c.Seq, r.HeadSeq)
		// A cursor right before the first retained event lost nothing,
		// which only its seq can show (IDs have gaps).
		r.Recovered = r.MissedKnown && r.Missed == 0
	}
	msgs, more, err := pageCmd.result()
	if isNoScript(err) {
		return Resume{}, err // as is: Resume loads the script and reads again
	}
	if err == nil && trusted && thisLife && !connects(c, msgs, r.HeadSeq) {
		// The cursor's ID is in this life, but its seq does not lead to
		// what history holds after it: Redis lost the newest events and
		// new ones took their seqs (a failover that an owner's epoch check
		// did not see), or the client sent a seq that is not its cursor's.
		// Either way nothing proves the events after it are the ones it
		// missed. Only the client's claim shows it, so the epoch is left
		// alone (a client must not be able to renew it); the events after
		// the cursor are sent as for any recovered:false.
		r.Recovered, r.Missed, r.MissedKnown, r.WentBack = false, 0, false, true
	}
	if !trusted {
		// The cursor belongs to data that was lost: send what is retained.
		msgs, more, err = readPage(ctx, h.rdb, key, "-", page)
	}
	if err != nil {
		return Resume{}, fmt.Errorf("reading history of %s: %w", topic, err)
	}
	r.Events, r.More = toEvents(msgs), more
	return r, nil
}

// missed counts the events after a cursor of this life of the sequence
// (with seq) that are gone: all that followed it (head - seq) but those
// still retained. It is asked only when nothing proved the cursor
// recovered, so the cursor is before the first retained entry and every
// retained entry follows it. It is false when the numbers do not add up
// (a seq that is not the cursor's).
// connects reports whether a cursor with a seq leads to what history
// holds after it: the first event after it has the next seq, or, when none
// follows, the head is the cursor's own event. Without seqs (a cursor
// without one, events written before seqs existed) it cannot tell, and
// says yes.
func connects(c Cursor, after []redis.XMessage, headSeq uint64) bool {
	if !c.HasSeq || c.Seq == 0 {
		return true
	}
	if len(after) == 0 {
		return headSeq == 0 || headSeq == c.Seq
	}
	seq, ok := entrySeq(after[0].Values)
	return !ok || seq == 0 || seq == c.Seq+1 || seq > c.Seq+1 // a skip ahead is a trim, which missed counts
}

func missed(retained int64, seq, head uint64) (uint64, bool) {
	followed := head - seq
	if seq > head || uint64(retained) > followed {
		return 0, false
	}
	return followed - uint64(retained), true
}

// headSeq returns the seq of a history stream's newest event: the seq
// field of its last entry, or, when that is gone (a stream emptied by
// hand) or has none (written before wsbus numbered events), the count of
// entries ever added, which the sequence equals (it starts at 1 with the
// stream and grows by one per entry).
func headSeq(info *redis.XInfoStream) uint64 {
	if info.LastEntry.ID == info.LastGeneratedID {
		if seq, ok := entrySeq(info.LastEntry.Values); ok {
			return seq
		}
	}
	return uint64(max(info.EntriesAdded, 0))
}

func entrySeq(values map[string]any) (uint64, bool) {
	s, ok := values["seq"].(string)
	if !ok {
		return 0, false
	}
	seq, err := strconv.ParseUint(s, 10, 64)
	return seq, err == nil
}

// Range reads up to count events of topic after the ID after.
func (h *History) Range(ctx context.Context, topic string, after ID, count int) ([]Event, error) {
	key := h.keys.Topic(Partition(topic, h.n), topic)
	msgs, err := h.rdb.XRangeN(ctx, key, "("+after.String(), "+", int64(count)).Result()
	if err != nil {
		return nil, fmt.Errorf("reading history of %s: %w", topic, err)
	}
	return toEvents(msgs), nil
}

// nothingTrimmedAfter reports whether trimming, which removes the oldest
// entries (and, unlike XDEL, does not move max-deleted-entry-id), left
// every entry after the cursor in place.
func nothingTrimmedAfter(info *redis.XInfoStream, after, last ID) bool {
	switch {
	case info.EntriesAdded == info.Length:
		return true // nothing was ever removed
	case !after.Less(last):
		return true // nothing was ever added after the cursor
	case info.Length > 0:
		return !after.Less(MustParseID(info.FirstEntry.ID))
	}
	return false
}

// ReadPage reads a page of topic's events after the ID after; more is true
// when the page ended at one of its bounds rather than at the newest event.
func (h *History) ReadPage(ctx context.Context, topic string, after ID, page Page) ([]Event, bool, error) {
	key := h.keys.Topic(Partition(topic, h.n), topic)
	msgs, more, err := readPage(ctx, h.rdb, key, "("+after.String(), page)
	if err != nil {
		return nil, false, fmt.Errorf("reading history of %s: %w", topic, err)
	}
	return toEvents(msgs), more, nil
}

// pageScript reads a page bounded in bytes: page.lua.
var pageScript = redis.NewScript(pageLua)

//go:embed page.lua
var pageLua string

// pageCmd is a page read queued in a pipeline: an XRANGE when the page is
// bounded in events alone, else pageScript by EVALSHA (which a pipeline
// cannot fall back from: see Resume).
type pageCmd struct {
	xrange *redis.XMessageSliceCmd
	script *redis.Cmd
	events int
}

func queuePage(ctx context.Context, pipe redis.Pipeliner, key, start string, p Page) pageCmd {
	if p.Bytes <= 0 {
		return pageCmd{xrange: pipe.XRangeN(ctx, key, start, "+", int64(p.Events)), events: p.Events}
	}
	return pageCmd{script: pageScript.EvalSha(ctx, pipe, []string{key}, start, p.Events, p.Bytes), events: p.Events}
}

// result returns the page read; more is true when it ended at one of its
// bounds.
func (pc pageCmd) result() (msgs []redis.XMessage, more bool, err error) {
	if pc.xrange != nil {
		msgs, err = pc.xrange.Result()
		return msgs, err == nil && len(msgs) == pc.events, err
	}
	res, err := pc.script.Result()
	if err != nil {
		return nil, false, err
	}
	return parsePage(res)
}

// readPage reads a page in a round trip of its own (the script loaded
// first if Redis has not cached it).
func readPage(ctx context.Context, rdb redis.Cmdable, key, start string, p Page) ([]redis.XMessage, bool, error) {
	if p.Bytes <= 0 {
		msgs, err := rdb.XRangeN(ctx, key, start, "+", int64(p.Events)).Result()
		return msgs, err == nil && len(msgs) == p.Events, err
	}
	res, err := pageScript.Run(ctx, rdb, []string{key}, start, p.Events, p.Bytes).Result()
	if err != nil {
		return nil, false, err
	}
	return parsePage(res)
}

func isNoScript(err error) bool { return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") }

// parsePage reads page.lua's {more, entries}.
func parsePage(res any) (msgs []redis.XMessage, more bool, err error) {
	reply, ok := res.([]any)
	if !ok || len(reply) != 2 {
		return nil, false, fmt.Errorf("history page: unexpected reply %T", res)
	}
	flag, ok := reply[0].(int64)
	if !ok {
		return nil, false, fmt.Errorf("history page: unexpected flag %T", reply[0])
	}
	entries, ok := reply[1].([]any)
	if !ok {
		return nil, false, fmt.Errorf("history page: unexpected entries %T", reply[1])
	}
	msgs = make([]redis.XMessage, len(entries))
	for i, e := range entries {
		entry, ok := e.([]any)
		if !ok || len(entry) != 2 {
			return nil, false, fmt.Errorf("history page: unexpected entry %v", e)
		}
		id, ok := entry[0].(string)
		if _, err := ParseID(id); !ok || err != nil {
			return nil, false, fmt.Errorf("history page: unexpected entry ID %v", entry[0])
		}
		fields, _ := entry[1].([]any)
		values := make(map[string]any, len(fields)/2)
		for j := 0; j+1 < len(fields); j += 2 {
			if k, ok := fields[j].(string); ok {
				values[k] = fields[j+1]
			}
		}
		msgs[i] = redis.XMessage{ID: id, Values: values}
	}
	return msgs, flag == 1, nil
}

func toEvents(msgs []redis.XMessage) []Event {
	events := make([]Event, len(msgs))
	for i, m := range msgs {
		data, _ := m.Values["data"].(string)
		seq, _ := entrySeq(m.Values)
		events[i] = Event{ID: m.ID, Seq: seq, Data: data}
	}
	return events
}

func isNoSuchKey(err error) bool {
	return err != nil && strings.Contains(err.Error(), "no such key")
}

// Head is a topic's newest event when a subscription takes effect: the
// cursor of a subscription that wants only new events.
type Head struct {
	Epoch string // the partition's epoch
	ID    ID     // the newest event ID the history stream ever had; zero when none
	Seq   uint64 // its seq; 0 when none
	// Acked has the acknowledged cursor of each subject Head was asked
	// for, read in the same transaction.
	Acked map[string]Acked
}

// pipeline is the pipeline of a head or resume read: a transaction when
// it reads acknowledged cursors too, so that their unread counts agree
// with the head it reads (all its keys are in the topic's slot).
func (h *History) pipeline(subjects []string) redis.Pipeliner {
	if len(subjects) > 0 {
		return h.rdb.TxPipeline()
	}
	return h.rdb.Pipeline()
}

// Epochs returns every partition's epoch, "" for a partition whose meta
// is missing, read in one pipeline.
func (h *History) Epochs(ctx context.Context) ([]string, error) {
	pipe := h.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, h.n)
	for p := range cmds {
		cmds[p] = pipe.HGet(ctx, h.keys.PartitionMeta(p), "epoch")
	}
	_, _ = pipe.Exec(ctx) // each command's error is read below
	epochs := make([]string, h.n)
	for p, cmd := range cmds {
		epoch, err := cmd.Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("reading the epoch of partition %d: %w", p, err)
		}
		epochs[p] = epoch
	}
	return epochs, nil
}

// Head returns the head of topic, and the acknowledged cursors of
// subjects in the same round trip.
func (h *History) Head(ctx context.Context, topic string, subjects ...string) (Head, error) {
	p := Partition(topic, h.n)
	key := h.keys.Topic(p, topic)
	pipe := h.pipeline(subjects)
	epochCmd := pipe.HGet(ctx, h.keys.PartitionMeta(p), "epoch")
	infoCmd := pipe.XInfoStream(ctx, key)
	ackedCmds := h.ackedCmds(ctx, pipe, p, topic, subjects)
	_, _ = pipe.Exec(ctx) // each command's error is read below
	epoch, err := epochCmd.Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return Head{}, fmt.Errorf("reading epoch of %s: %w", topic, err)
	}
	info, err := infoCmd.Result()
	if isNoSuchKey(err) {
		acked, err := h.readAcked(ctx, key, subjects, ackedCmds, nil)
		return Head{Epoch: epoch, Acked: acked}, err
	}
	if err != nil {
		return Head{}, fmt.Errorf("reading history of %s: %w", topic, err)
	}
	acked, err := h.readAcked(ctx, key, subjects, ackedCmds, info)
	if err != nil {
		return Head{}, err
	}
	return Head{Epoch: epoch, ID: MustParseID(info.LastGeneratedID), Seq: headSeq(info), Acked: acked}, nil
}
