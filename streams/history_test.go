package streams_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/streams"
)

// historyOf writes events of the given data sizes to topic's history, as
// the owner does (fields data and seq), and returns their IDs.
func historyOf(t *testing.T, rdb *redis.Client, keys streams.Keys, topic string, sizes ...int) []string {
	t.Helper()
	ctx := context.Background()
	ids := make([]string, len(sizes))
	for i, n := range sizes {
		data := strings.Repeat("x", n)
		id, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Topic(streams.Partition(topic, 1), topic),
			Values: []any{"data", data, "seq", strconv.Itoa(i + 1)}}).Result()
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	return ids
}

func repeat(size, n int) []int {
	sizes := make([]int, n)
	for i := range sizes {
		sizes[i] = size
	}
	return sizes
}

// readAll reads topic's history from the start, page after page, as the
// gateway does, checks every page's bounds, and returns the IDs read and
// the number of pages.
func readAll(t *testing.T, h *streams.History, topic string, p streams.Page) (ids []string, pages int) {
	t.Helper()
	ctx := context.Background()
	r, err := h.Resume(ctx, topic, streams.Cursor{Since: "0"}, p)
	if err != nil {
		t.Fatal(err)
	}
	events, more := r.Events, r.More
	for {
		pages++
		size := 0
		for _, e := range events {
			size += len(e.Data)
			ids = append(ids, e.ID)
		}
		if len(events) > p.Events || p.Bytes > 0 && size > p.Bytes && len(events) > 1 {
			t.Fatalf("page %d: %d events, %d bytes: past its bounds %+v", pages, len(events), size, p)
		}
		if !more {
			return ids, pages
		}
		if len(events) == 0 {
			t.Fatalf("page %d: empty but more", pages)
		}
		last, err := streams.ParseID(events[len(events)-1].ID)
		if err != nil {
			t.Fatal(err)
		}
		if events, more, err = h.ReadPage(ctx, topic, last, p); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPageBytes: a page bounded in bytes ends before the event that
// would pass the bound (one event always comes, whatever its size), says
// more until the newest event, and the pages together hold every event
// once, in order: on the pipelined first page (Resume) and the pages read
// on (ReadPage), with the script cached or not.
func TestPageBytes(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	keys := streams.Keys{Prefix: "pagebytes"}
	h := streams.NewHistory(rdb, keys, 1)
	big := []int{100_000, 100_000, 100_000, 10, 10, 300_000, 10, 60_000, 200_000, 10}
	for _, tc := range []struct {
		name  string
		sizes []int
		page  streams.Page
		pages int
	}{
		// 200k | 100k 10 10 | 300k (alone, past the bound) | 10 60k | 200k 10
		{"big events", big, streams.Page{Events: 500, Bytes: 250_000}, 5},
		// 500 | 100: past the script's first chunks (4, then up to 128).
		{"small events", make([]int, 600), streams.Page{Events: 500, Bytes: 256 << 10}, 2},
		// 262 | 262 | 76: the bytes cut a later chunk (4, 128, 128, 3).
		{"a cut in a later chunk", repeat(1000, 600), streams.Page{Events: 500, Bytes: 256 << 10}, 3},
		// 4 | 1: four fill the bytes exactly; the fifth does not fit.
		{"bytes filled exactly", repeat(250, 5), streams.Page{Events: 500, Bytes: 1000}, 2},
		// A full page says more; the next is empty.
		{"a page exactly", make([]int, 16), streams.Page{Events: 16, Bytes: 256 << 10}, 2},
		// Bytes 0: a bound in events only (XRANGE).
		{"events only", big, streams.Page{Events: 3}, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, flush := range []bool{false, true} {
				topic := fmt.Sprintf("%s-%v", strings.ReplaceAll(tc.name, " ", "-"), flush)
				want := historyOf(t, rdb, keys, topic, tc.sizes...)
				if flush {
					// NOSCRIPT: a pipeline cannot load a script; the read
					// must load it and go on.
					if err := rdb.ScriptFlush(context.Background()).Err(); err != nil {
						t.Fatal(err)
					}
				}
				got, pages := readAll(t, h, topic, tc.page)
				if strings.Join(got, " ") != strings.Join(want, " ") {
					t.Fatalf("flushed %v: read %d events %v, want %d %v", flush, len(got), got, len(want), want)
				}
				if pages != tc.pages {
					t.Errorf("flushed %v: %d pages, want %d", flush, pages, tc.pages)
				}
			}
		})
	}
}

// TestPageBytesUntrusted: a cursor history cannot vouch for gets what is
// retained from the oldest event, bounded as any page.
func TestPageBytesUntrusted(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	keys := streams.Keys{Prefix: "pageuntrusted"}
	h := streams.NewHistory(rdb, keys, 1)
	ids := historyOf(t, rdb, keys, "t", 100_000, 100_000, 100_000)
	r, err := h.Resume(context.Background(), "t", streams.Cursor{Since: ids[0], Epoch: "another"}, streams.Page{Events: 500, Bytes: 250_000})
	if err != nil {
		t.Fatal(err)
	}
	if r.Recovered || !r.More || len(r.Events) != 2 || r.Events[0].ID != ids[0] {
		first := ""
		if len(r.Events) > 0 {
			first = r.Events[0].ID
		}
		t.Fatalf("recovered %v, more %v, %d events from %s: want not recovered, more, 2 events from %s", r.Recovered, r.More, len(r.Events), first, ids[0])
	}
}

// BenchmarkResumePage is the cost of a resume's first read with the page
// bounded in bytes (page.lua) beside the same page bounded in events only
// (XRANGE), for a cursor that missed one event and one that missed 100:
//
//	go test ./streams -run '^$' -bench ResumePage -count 5
func BenchmarkResumePage(b *testing.B) {
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	keys := streams.Keys{Prefix: "pagebench"}
	h := streams.NewHistory(rdb, keys, 1)
	ctx := context.Background()
	key := keys.Topic(0, "t")
	var ids []string
	for i := range 101 {
		id, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []any{"data", `{"n":` + strconv.Itoa(i) + `,"text":"a notification of about a hundred bytes, as most are"}`, "seq", strconv.Itoa(i + 1)}}).Result()
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, id)
	}
	for _, missed := range []int{1, 100} {
		cursor := streams.Cursor{Since: ids[len(ids)-1-missed], Seq: uint64(len(ids) - missed), HasSeq: true}
		for _, p := range []struct {
			name string
			page streams.Page
		}{{"events", streams.Page{Events: 500}}, {"bytes", streams.Page{Events: 500, Bytes: 256 << 10}}} {
			b.Run(fmt.Sprintf("missed=%d/%s", missed, p.name), func(b *testing.B) {
				for b.Loop() {
					r, err := h.Resume(ctx, "t", cursor, p.page)
					if err != nil || len(r.Events) != missed || !r.Recovered {
						b.Fatalf("%d events, recovered %v, err %v", len(r.Events), r.Recovered, err)
					}
				}
			})
		}
	}
}
