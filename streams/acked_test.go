package streams

import (
	"testing"

	"github.com/redis/go-redis/v9"
)

// TestUnread: how many events follow a stored cursor, from the stream's
// info alone where the numbers allow it.
func TestUnread(t *testing.T) {
	// A stream whose sequence began at 100-0 (its max-deleted-entry-id
	// mark), now at 200-0 with seq 50.
	info := &redis.XInfoStream{
		LastGeneratedID:   "200-0",
		MaxDeletedEntryID: "100-0",
		EntriesAdded:      50,
		LastEntry:         redis.XMessage{ID: "200-0", Values: map[string]any{"seq": "50"}},
	}
	old := &redis.XInfoStream{LastGeneratedID: "200-0", MaxDeletedEntryID: "0-0", EntriesAdded: 50,
		LastEntry: redis.XMessage{ID: "200-0", Values: map[string]any{"data": "x"}}} // no seq field
	tests := []struct {
		name   string
		stored string
		info   *redis.XInfoStream
		want   Acked
		count  bool
	}{
		{"never acknowledged", "", info, Acked{Unread: 50}, false},
		{"in this life", "150-0 20", info, Acked{ID: ID{150, 0}, Seq: 20, Unread: 30}, false},
		{"at the head", "200-0 50", info, Acked{ID: ID{200, 0}, Seq: 50}, false},
		{"past the head", "300-0 70", info, Acked{ID: ID{300, 0}, Seq: 70}, false},
		{"of an earlier life", "90-0 7", info, Acked{ID: ID{90, 0}, Seq: 7, Unread: 50}, false},
		{"seq beyond the head's", "150-0 80", info, Acked{ID: ID{150, 0}, Seq: 80}, true},
		{"seq unknown", "150-0 0", info, Acked{ID: ID{150, 0}}, true},
		{"garbage", "x y", info, Acked{Unread: 50}, false},
		{"no stream", "150-0 20", nil, Acked{ID: ID{150, 0}, Seq: 20}, false},
		{"unnumbered stream", "", old, Acked{Unread: 50}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, count := unread(tt.stored, tt.info)
			if got != tt.want || count != tt.count {
				t.Fatalf("unread(%q) = %+v, count %v; want %+v, count %v", tt.stored, got, count, tt.want, tt.count)
			}
		})
	}
}
