package streams

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Event is one retained event of a topic.
type Event struct {
	ID   string
	Data string
}

// Resume is the answer to a client that subscribes with a cursor.
type Resume struct {
	// Epoch is the partition's current epoch, for the client to send back.
	Epoch string
	// Recovered is true only when nothing after the cursor was trimmed and
	// the cursor belongs to this epoch and stream.
	Recovered bool
	// Events is the first page of events after the cursor (or of everything
	// retained when the cursor cannot be trusted).
	Events []Event
	// More is true when Events is a full page; read on with Range.
	More bool
}

// History reads topic history streams.
type History struct {
	rdb  redis.Cmdable
	keys Keys
	n    int
}

// NewHistory returns a History for a bus of n partitions.
func NewHistory(rdb redis.Cmdable, keys Keys, n int) *History {
	return &History{rdb: rdb, keys: keys, n: n}
}

// Resume answers a subscription to topic that resumes after since, with the
// epoch the client was given (empty when it has none). since is "0" for
// everything retained. It reads up to page events.
func (h *History) Resume(ctx context.Context, topic, since, epoch string, page int) (Resume, error) {
	after, err := ParseID(since)
	if err != nil {
		return Resume{}, err
	}
	p := Partition(topic, h.n)
	key := h.keys.Topic(p, topic)
	pipe := h.rdb.Pipeline()
	epochCmd := pipe.HGet(ctx, h.keys.PartitionMeta(p), "epoch")
	infoCmd := pipe.XInfoStream(ctx, key)
	rangeCmd := pipe.XRangeN(ctx, key, "("+after.String(), "+", int64(page))
	_, _ = pipe.Exec(ctx) // each command's error is read below

	var r Resume
	if r.Epoch, err = epochCmd.Result(); err != nil && !errors.Is(err, redis.Nil) {
		return Resume{}, fmt.Errorf("reading epoch of %s: %w", topic, err)
	}
	info, err := infoCmd.Result()
	if isNoSuchKey(err) {
		// Nothing retained. Only a cursor of "0" can be sure it missed nothing.
		r.Recovered = after.IsZero() && (epoch == "" || epoch == r.Epoch)
		return r, nil
	}
	if err != nil {
		return Resume{}, fmt.Errorf("reading history of %s: %w", topic, err)
	}
	last := MustParseID(info.LastGeneratedID)
	maxDeleted := MustParseID(info.MaxDeletedEntryID)
	trusted := (epoch == "" || epoch == r.Epoch) && !last.Less(after)
	r.Recovered = trusted && !after.Less(maxDeleted) && nothingTrimmedAfter(info, after, last)
	msgs, err := rangeCmd.Result()
	if !trusted {
		// The cursor belongs to data that was lost: send what is retained.
		msgs, err = h.rdb.XRangeN(ctx, key, "-", "+", int64(page)).Result()
	}
	if err != nil {
		return Resume{}, fmt.Errorf("reading history of %s: %w", topic, err)
	}
	r.Events = toEvents(msgs)
	r.More = len(msgs) == page
	return r, nil
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

func toEvents(msgs []redis.XMessage) []Event {
	events := make([]Event, len(msgs))
	for i, m := range msgs {
		data, _ := m.Values["data"].(string)
		events[i] = Event{ID: m.ID, Data: data}
	}
	return events
}

func isNoSuchKey(err error) bool {
	return err != nil && strings.Contains(err.Error(), "no such key")
}

// Head returns the epoch of topic's partition and the last ID its history
// stream ever had (zero when it has none): the cursor of a subscription
// that wants only new events.
func (h *History) Head(ctx context.Context, topic string) (string, ID, error) {
	p := Partition(topic, h.n)
	pipe := h.rdb.Pipeline()
	epochCmd := pipe.HGet(ctx, h.keys.PartitionMeta(p), "epoch")
	infoCmd := pipe.XInfoStream(ctx, h.keys.Topic(p, topic))
	_, _ = pipe.Exec(ctx) // each command's error is read below
	epoch, err := epochCmd.Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", ID{}, fmt.Errorf("reading epoch of %s: %w", topic, err)
	}
	info, err := infoCmd.Result()
	if isNoSuchKey(err) {
		return epoch, ID{}, nil
	}
	if err != nil {
		return "", ID{}, fmt.Errorf("reading history of %s: %w", topic, err)
	}
	return epoch, MustParseID(info.LastGeneratedID), nil
}
