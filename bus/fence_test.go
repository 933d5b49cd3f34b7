package bus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsbus/wsbus/internal/bustest"
	"github.com/wsbus/wsbus/internal/redistest"
	"github.com/wsbus/wsbus/internal/testutil"
	"github.com/wsbus/wsbus/migrations"
	"github.com/wsbus/wsbus/streams"
)

// testBus migrates a bus of n partitions on a redis-server of its own.
func testBus(tb testing.TB, n int) (*redis.Client, streams.Keys) {
	tb.Helper()
	b := bustest.Start(tb, n)
	return b.Redis.(*redis.Client), b.Keys
}

// testOwner returns an Owner of node on the bus, logging nowhere.
func testOwner(tb testing.TB, rdb *redis.Client, keys streams.Keys, n int, node string, block time.Duration) *Owner {
	tb.Helper()
	o, err := NewOwner(OwnerConfig{Redis: rdb, Keys: keys, Partitions: n, Node: node, Block: block, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		tb.Fatal(err)
	}
	return o
}

// holdPartition returns a bus of n partitions, an Owner of it (node "n")
// not running, and the lease of partition 0 it holds, ensured.
func holdPartition(tb testing.TB, n int) (*redis.Client, streams.Keys, *Owner, *lease) {
	tb.Helper()
	rdb, keys := testBus(tb, n)
	o := testOwner(tb, rdb, keys, n, "n", 0)
	l := &lease{p: 0, value: "n 1"}
	rdb.Set(context.Background(), keys.Owner(0), l.value, 0)
	if err := o.ensure(context.Background(), l); err != nil {
		tb.Fatal(err)
	}
	return rdb, keys, o, l
}

// heldPartition returns a one-partition bus, an Owner of it (node "n")
// not running, and the lease it holds, ensured; count entries of topic
// "t" are in its ingress, their IDs returned.
func heldPartition(tb testing.TB, count int) (*redis.Client, streams.Keys, *Owner, *lease, []string) {
	tb.Helper()
	ctx := context.Background()
	rdb, keys, o, l := holdPartition(tb, 1)
	var ids []string
	for i := range count {
		ids = append(ids, rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(0), Values: []any{"topic", "t", "data", strconv.Itoa(i)}}).Val())
	}
	return rdb, keys, o, l, ids
}

// TestFencedWritesOfAStaleOwner: once another node holds a partition's
// lease, every write of the old owner is refused and changes nothing.
func TestFencedWritesOfAStaleOwner(t *testing.T) {
	ctx := context.Background()
	rdb, keys := testBus(t, 4)
	o := testOwner(t, rdb, keys, 4, "old", 0)
	topic := "fenced"
	p := streams.Partition(topic, 4)
	wrong := (p + 1) % 4
	id := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(p), Values: []any{"topic", topic, "data", "1"}}).Val()
	misrouted := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(wrong), Values: []any{"topic", topic, "data", "2"}}).Val()
	stale := &lease{p: p, value: "old 1"}
	staleWrong := &lease{p: wrong, value: "old 1"}
	// Another node took both partitions with newer tokens.
	rdb.Set(ctx, keys.Owner(p), "new 2", 0)
	rdb.Set(ctx, keys.Owner(wrong), "new 2", 0)

	msgs := []redis.XMessage{{ID: id, Values: map[string]any{"topic": topic, "data": "1"}}}
	if err := o.apply(ctx, stale, msgs, ""); classify(err) != kindLeaseLost {
		t.Fatalf("apply by a stale owner = %v, want lease lost", err)
	}
	other := []redis.XMessage{{ID: misrouted, Values: map[string]any{"topic": topic, "data": "2"}}}
	if err := o.apply(ctx, staleWrong, other, ""); classify(err) != kindLeaseLost {
		t.Fatalf("forward by a stale owner = %v, want lease lost", err)
	}
	if err := o.trim(ctx, stale); classify(err) != kindLeaseLost {
		t.Fatalf("trim by a stale owner = %v, want lease lost", err)
	}
	if n := rdb.Exists(ctx, keys.Topic(p, topic)).Val(); n != 0 {
		t.Fatal("a stale owner wrote history")
	}
	if n := rdb.XLen(ctx, keys.Ingress(p)).Val(); n != 1 {
		t.Fatalf("ingress of %d holds %d entries, want only the original (no forward)", p, n)
	}
	if err := o.ensure(ctx, stale); classify(err) != kindLeaseLost {
		t.Fatalf("ensure by a stale owner = %v, want lease lost", err)
	}
	if msgs, _, err := o.readPending(ctx, stale); classify(err) != kindLeaseLost || len(msgs) > 0 {
		t.Fatalf("read by a stale owner = %v, %v; want lease lost", msgs, err)
	}
	if err := o.apply(ctx, stale, msgs, "0-0"); classify(err) != kindLeaseLost {
		t.Fatalf("apply of new entries by a stale owner = %v, want lease lost", err)
	}
	if err := o.claim(ctx, stale); classify(err) != kindLeaseLost {
		t.Fatalf("claim by a stale owner = %v, want lease lost", err)
	}
	if n := rdb.XPending(ctx, keys.Ingress(p), streams.Group).Val().Count; n != 0 {
		t.Fatalf("%d entries pending after a stale owner's read, want none taken", n)
	}
}

// TestStaleReaderTakesNothing: an owner whose lease was lost while its
// pipeline waited for new entries (a pause, a Redis failover) must not take
// the next entry from the partition's new owner. Redis hands a new entry to
// the reader that has waited longest, so the stale one is waiting first.
func TestStaleReaderTakesNothing(t *testing.T) {
	ctx := context.Background()
	rdb, keys := testBus(t, 4)
	owner := func(node string) *Owner { return testOwner(t, rdb, keys, 4, node, 10*time.Second) }
	waiting := func(n int) {
		t.Helper()
		testutil.Eventually(t, 5*time.Second, func() error {
			info := rdb.Info(ctx, "clients").Val()
			if !strings.Contains(info, "blocked_clients:"+strconv.Itoa(n)+"\r\n") {
				return fmt.Errorf("want %d readers waiting: %s", n, info)
			}
			return nil
		})
	}
	topic := "stale-reader"
	p := streams.Partition(topic, 4)

	rdb.Set(ctx, keys.Owner(p), "old 1", 0)
	oldCtx, stopOld := context.WithCancel(ctx)
	defer stopOld()
	old := owner("old")
	old.start(oldCtx, p, "old 1")
	waiting(1)

	// The old lease is gone (expired in a failover, say) and a new owner
	// holds the partition; the old pipeline is still waiting in Redis.
	rdb.Set(ctx, keys.Owner(p), "new 2", 0)
	newCtx, stopNew := context.WithCancel(ctx)
	defer stopNew()
	owner("new").start(newCtx, p, "new 2")
	waiting(2)

	id := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(p), Values: []any{"topic", topic, "data", "1"}}).Val()
	testutil.Eventually(t, 5*time.Second, func() error {
		got, err := rdb.XRange(ctx, keys.Topic(p, topic), "-", "+").Result()
		if err != nil || len(got) != 1 || got[0].ID != id {
			pending := rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: keys.Ingress(p), Group: streams.Group, Start: "-", End: "+", Count: 10}).Val()
			return fmt.Errorf("history of %s = %v, %v; want %s; pending %+v", topic, got, err, id, pending)
		}
		return nil
	})
}

// TestTakeChecksTheEntries: a batch read outside the consumer group is
// applied only if the group is where it was read from and the batch starts
// with the group's next entry; otherwise nothing is done, and reading goes
// on from the group's position. Applied entries are never left pending,
// and the group's count of entries read (its lag) stays right.
func TestTakeChecksTheEntries(t *testing.T) {
	ctx := context.Background()
	rdb, keys, o, l, ids := heldPartition(t, 3)
	msgs, err := o.readNew(ctx, 0, "0", o.cfg.Block)
	if err != nil || len(msgs) != 3 {
		t.Fatalf("readNew = %v, %v; want the three entries", msgs, err)
	}
	// Read after the first, but the group has delivered nothing yet.
	if err := o.apply(ctx, l, msgs[1:], msgs[0].ID); classify(err) != kindTakeRefused {
		t.Fatalf("apply of entries read after %s = %v, want refused", msgs[0].ID, err)
	}
	// The group's next entry is the first, not the second.
	if err := o.apply(ctx, l, msgs[1:], "0-0"); classify(err) != kindTakeRefused {
		t.Fatalf("apply of the second entry alone = %v, want refused", err)
	}
	if n := rdb.XLen(ctx, keys.Topic(0, "t")).Val(); n != 0 {
		t.Fatalf("history holds %d entries after refused takes, want 0", n)
	}
	pending, after, err := o.readPending(ctx, l)
	if err != nil || len(pending) != 0 || after != "0-0" {
		t.Fatalf("readPending = %v, %q, %v; want nothing pending, the group at 0-0", pending, after, err)
	}
	for _, batch := range [][]redis.XMessage{msgs[:2], msgs[2:]} {
		if err := o.apply(ctx, l, batch, after); err != nil {
			t.Fatalf("apply after %s: %v", after, err)
		}
		if _, after, err = o.readPending(ctx, l); err != nil || after != batch[len(batch)-1].ID {
			t.Fatalf("readPending = %q, %v; want the group at %s", after, err, batch[len(batch)-1].ID)
		}
	}
	got := rdb.XRange(ctx, keys.Topic(0, "t"), "-", "+").Val()
	if len(got) != 3 || got[0].ID != ids[0] || got[1].ID != ids[1] || got[2].ID != ids[2] {
		t.Fatalf("history = %v, want the three entries in order", got)
	}
	groups := rdb.XInfoGroups(ctx, keys.Ingress(0)).Val()
	if len(groups) != 1 || groups[0].Pending != 0 || groups[0].EntriesRead != 3 || groups[0].Lag != 0 {
		t.Fatalf("group %+v, want nothing pending, 3 entries read, lag 0", groups)
	}
}

// TestEpochRenewedWhenDataGoesBack: Redis loses the newest writes (here a
// restart from an older snapshot: SAVE, then DEBUG RELOAD NOSAVE; a
// failover before replication does the same) under a running owner. An
// event it had applied and clients may have seen is gone, so the owner
// renews the partition's epoch: cursors of the old one cannot be trusted.
// Events after the loss still flow.
func TestEpochRenewedWhenDataGoesBack(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t, "--enable-debug-command", "yes").Client(t)
	keys := streams.Keys{Prefix: "back"}
	if _, err := migrations.Run(ctx, rdb, keys, 1); err != nil {
		t.Fatal(err)
	}
	o := testOwner(t, rdb, keys, 1, "n", 100*time.Millisecond)
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = o.Run(rctx) }()
	topic := "back"
	sub := rdb.SSubscribe(ctx, keys.Live(0, topic))
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	live := sub.Channel()
	publish := func(data string) string {
		t.Helper()
		id := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(0), Values: []any{"topic", topic, "data", data}}).Val()
		select {
		case m := <-live:
			if !strings.Contains(m.Payload, id) {
				t.Fatalf("live event %s, want %s", m.Payload, id)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("event %s (data %s) not published within 5 s; owner %+v", id, data, o.Stats())
		}
		return id
	}
	epoch := func() string { return rdb.HGet(ctx, keys.PartitionMeta(0), "epoch").Val() }

	kept := publish("1")
	before := epoch()
	if err := rdb.Save(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	publish("2") // applied and published, then lost
	if err := rdb.Do(ctx, "DEBUG", "RELOAD", "NOSAVE").Err(); err != nil {
		t.Fatal(err)
	}
	after := publish("3")
	if e := epoch(); e == before || e == "" {
		t.Fatalf("epoch %q after the loss, want a new one (was %q)", e, before)
	}
	if n := o.Stats().Epochs; n != 1 {
		t.Fatalf("%d epochs renewed, want 1", n)
	}
	got := rdb.XRange(ctx, keys.Topic(0, topic), "-", "+").Val()
	if len(got) != 2 || got[0].ID != kept || got[1].ID != after {
		t.Fatalf("history %v, want %s and %s", got, kept, after)
	}
}

// TestTakeOfAGroupWithoutCount: where Redis does not know how many entries
// the group has read (a new group), the take reads the batch with
// XREADGROUP; if the group then holds other entries than those read (one
// was deleted meanwhile), nothing is applied and they are read back from
// the pending list, not lost.
func TestTakeOfAGroupWithoutCount(t *testing.T) {
	ctx := context.Background()
	rdb, keys, o, l, ids := heldPartition(t, 3)
	msgs, err := o.readNew(ctx, 0, "0", o.cfg.Block)
	if err != nil || len(msgs) != 3 {
		t.Fatalf("readNew = %v, %v; want the three entries", msgs, err)
	}
	rdb.XDel(ctx, keys.Ingress(0), ids[1])
	if err := o.apply(ctx, l, msgs, "0-0"); classify(err) != kindTakeRefused {
		t.Fatalf("apply with an entry deleted after the read = %v, want refused", err)
	}
	pending, _, err := o.readPending(ctx, l)
	if err != nil || len(pending) != 2 || pending[0].ID != ids[0] || pending[1].ID != ids[2] {
		t.Fatalf("readPending = %v, %v; want %s and %s", pending, err, ids[0], ids[2])
	}
	if err := o.apply(ctx, l, pending, ""); err != nil {
		t.Fatal(err)
	}
	got := rdb.XRange(ctx, keys.Topic(0, "t"), "-", "+").Val()
	if len(got) != 2 || got[0].ID != ids[0] || got[1].ID != ids[2] {
		t.Fatalf("history = %v, want %s and %s", got, ids[0], ids[2])
	}
	if n := rdb.XPending(ctx, keys.Ingress(0), streams.Group).Val().Count; n != 0 {
		t.Fatalf("%d entries still pending, want none", n)
	}
}

// TestGroupBackRenewsEpoch: the consumer group found below what this
// node applied (a Redis that went back in time, here set back by hand) is
// noticed by the pending read, the epoch is renewed once, and the entries
// after the group's position are applied again, in order.
func TestGroupBackRenewsEpoch(t *testing.T) {
	ctx := context.Background()
	rdb, keys, o, l, ids := heldPartition(t, 2)
	before := l.epoch
	msgs, err := o.readNew(ctx, 0, "0-0", o.cfg.Block)
	if err != nil || len(msgs) != 2 {
		t.Fatalf("readNew = %v, %v", msgs, err)
	}
	if err := o.apply(ctx, l, msgs, "0-0"); err != nil {
		t.Fatal(err)
	}
	_, at, err := o.readPending(ctx, l)
	if err != nil || at != ids[1] || o.behind(l, at) {
		t.Fatalf("readPending = %q, %v, behind %v; want the group at %s, not behind", at, err, o.behind(l, at), ids[1])
	}
	// The group and history go back; the ingress keeps both entries.
	rdb.XGroupSetID(ctx, keys.Ingress(0), streams.Group, "0-0")
	rdb.Del(ctx, keys.Topic(0, "t"))
	if _, at, err = o.readPending(ctx, l); err != nil || !o.behind(l, at) {
		t.Fatalf("readPending = %q, %v, behind %v; want the group at 0-0, behind", at, err, o.behind(l, at))
	}
	if err := o.ensure(ctx, l); err != nil {
		t.Fatal(err)
	}
	if l.epoch == before || o.Stats().Epochs != 1 {
		t.Fatalf("epoch %q (was %q), %d renewed: want a new one", l.epoch, before, o.Stats().Epochs)
	}
	if o.behind(l, at) {
		t.Fatal("still behind after ensure renewed the epoch: the pipeline would renew it again")
	}
	if err := o.ensure(ctx, l); err != nil || o.Stats().Epochs != 1 {
		t.Fatalf("ensure again: %v, %d renewed; want still 1", err, o.Stats().Epochs)
	}
	msgs, err = o.readNew(ctx, 0, at, o.cfg.Block)
	if err == nil {
		err = o.apply(ctx, l, msgs, at)
	}
	if err != nil {
		t.Fatal(err)
	}
	got := rdb.XRange(ctx, keys.Topic(0, "t"), "-", "+").Val()
	if len(got) != 2 || got[0].ID != ids[0] || got[1].ID != ids[1] {
		t.Fatalf("history %v, want %v again", got, ids)
	}
}

// TestPendingEntryDeleted: an entry deleted while pending (XDEL by hand)
// comes back from the pending read without fields; it is dead-lettered
// and acknowledged, and blocks nothing.
func TestPendingEntryDeleted(t *testing.T) {
	ctx := context.Background()
	rdb, keys, o, l, ids := heldPartition(t, 1)
	if err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: streams.Group, Consumer: "n", Streams: []string{keys.Ingress(0), ">"}}).Err(); err != nil {
		t.Fatal(err)
	}
	rdb.XDel(ctx, keys.Ingress(0), ids[0])
	msgs, _, err := o.readPending(ctx, l)
	if err != nil || len(msgs) != 1 || msgs[0].ID != ids[0] || len(msgs[0].Values) != 0 {
		t.Fatalf("readPending = %+v, %v; want %s without fields", msgs, err, ids[0])
	}
	if err := o.apply(ctx, l, msgs, ""); err != nil {
		t.Fatal(err)
	}
	dead := rdb.XRange(ctx, keys.Dead(0), "-", "+").Val()
	if len(dead) != 1 || dead[0].Values["id"] != ids[0] || o.Stats().DeadLettered != 1 {
		t.Fatalf("dead letters %v, %d counted; want %s", dead, o.Stats().DeadLettered, ids[0])
	}
	if _, after, err := o.readPending(ctx, l); err != nil || after != ids[0] {
		t.Fatalf("readPending after = %q, %v; want nothing pending, the group at %s", after, err, ids[0])
	}
}

// TestTrimKeepsWhatWasNotRead: entries older than the retention that the
// group has not delivered yet (a backlog from while no owner ran) are not
// trimmed; delivered and acknowledged ones before them are.
func TestTrimKeepsWhatWasNotRead(t *testing.T) {
	ctx := context.Background()
	rdb, keys, o, l, _ := heldPartition(t, 0)
	old := time.Now().Add(-48 * time.Hour).UnixMilli()
	add := func(from, n int) {
		for i := range n {
			id := strconv.FormatInt(old, 10) + "-" + strconv.Itoa(from+i)
			if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(0), ID: id, Values: []any{"topic", "t", "data", "x"}}).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// 300 entries read and acknowledged, then 300 never read; all older
	// than the 24 h retention. (XTRIM ~ drops whole nodes of 100.)
	add(0, 300)
	after := "0-0"
	for range 3 { // batches of 100
		msgs, err := o.readNew(ctx, 0, after, o.cfg.Block)
		if err == nil {
			err = o.apply(ctx, l, msgs, after)
		}
		if err != nil || len(msgs) == 0 {
			t.Fatalf("reading and applying after %s: %d entries, %v", after, len(msgs), err)
		}
		after = msgs[len(msgs)-1].ID
	}
	add(300, 300)
	if err := o.trim(ctx, l); err != nil {
		t.Fatal(err)
	}
	unread := rdb.XRange(ctx, keys.Ingress(0), strconv.FormatInt(old, 10)+"-300", "+").Val()
	if len(unread) != 300 {
		t.Fatalf("%d of the 300 unread entries left after trimming, want all", len(unread))
	}
	if n := rdb.XLen(ctx, keys.Ingress(0)).Val(); n >= 600 {
		t.Fatalf("ingress holds %d entries after trimming, want the read ones (some) gone", n)
	}
}

// nextBatch reads partition 0's next batch as its pipeline would: the
// entries pending (a batch refused after the group delivered it), else
// the new ones after where the group is, with the ID they follow ("" for
// pending ones).
func nextBatch(t *testing.T, o *Owner, l *lease) ([]redis.XMessage, string) {
	t.Helper()
	msgs, after, err := o.readPending(context.Background(), l)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) > 0 {
		return msgs, ""
	}
	if msgs, err = o.readNew(context.Background(), 0, after, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	return msgs, after
}

// TestApplyDeadLettersAWrongTypeKey: a topic whose history key holds a
// string gets its events dead-lettered with the reason, and the other
// events of the batch, before and after them, are applied; no entry is
// lost. With the dead-letter stream a string too, the batch is refused and
// stays unread for the next try, which adds nothing twice.
func TestApplyDeadLettersAWrongTypeKey(t *testing.T) {
	ctx := context.Background()
	rdb, keys, o, l, _ := heldPartition(t, 0)
	rdb.Set(ctx, keys.Topic(0, "bad"), "x", 0)
	var ids []string
	for i, topic := range []string{"good", "bad", "good", "bad", "good"} {
		ids = append(ids, rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(0), Values: []any{"topic", topic, "data", strconv.Itoa(i)}}).Val())
	}
	read := func() ([]redis.XMessage, string) { return nextBatch(t, o, l) }

	rdb.Set(ctx, keys.Dead(0), "x", 0)
	msgs, after := read()
	if err := o.apply(ctx, l, msgs, after); err == nil || !strings.Contains(err.Error(), "WSBUSKEY") {
		t.Fatalf("apply with the dead-letter stream a string: %v, want WSBUSKEY", err)
	}

	rdb.Del(ctx, keys.Dead(0))
	msgs, after = read()
	if len(msgs) != len(ids) {
		t.Fatalf("the refused batch reads back as %d entries, want %d", len(msgs), len(ids))
	}
	if err := o.apply(ctx, l, msgs, after); err != nil {
		t.Fatal(err)
	}
	var good []string
	for _, m := range rdb.XRange(ctx, keys.Topic(0, "good"), "-", "+").Val() {
		good = append(good, m.ID)
	}
	if want := []string{ids[0], ids[2], ids[4]}; !slices.Equal(good, want) {
		t.Errorf("history of good = %v, want %v", good, want)
	}
	dead := rdb.XRange(ctx, keys.Dead(0), "-", "+").Val()
	if len(dead) != 2 || dead[0].Values["id"] != ids[1] || dead[1].Values["id"] != ids[3] ||
		dead[0].Values["topic"] != "bad" || !strings.Contains(dead[0].Values["reason"].(string), "holds a string") {
		t.Fatalf("dead letters %v, want %s and %s of topic bad, with the reason", dead, ids[1], ids[3])
	}
	if n := o.Stats().DeadLettered; n != 2 {
		t.Errorf("%d dead letters counted, want 2", n)
	}
	if msgs, _ := read(); len(msgs) != 0 {
		t.Errorf("%d entries left unread after the batch was applied", len(msgs))
	}
}

// TestRefusedBatchForwardsOnce: a batch holding a misrouted entry and one
// to dead-letter is refused while the dead-letter stream is unwritable
// (WSBUSKEY), twice; the misrouted entry reaches its partition once, not
// once per try.
func TestRefusedBatchForwardsOnce(t *testing.T) {
	ctx := context.Background()
	rdb, keys, o, l := holdPartition(t, 2)
	misrouted := "m"
	for streams.Partition(misrouted, 2) != 1 {
		misrouted += "m"
	}
	rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(0), Values: []any{"topic", misrouted, "data", "1"}})
	rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.Ingress(0), Values: []any{"data", "no topic"}})
	rdb.Set(ctx, keys.Dead(0), "x", 0)
	apply := func() error {
		msgs, after := nextBatch(t, o, l)
		if len(msgs) != 2 {
			t.Fatalf("read %d entries, want 2", len(msgs))
		}
		return o.apply(ctx, l, msgs, after)
	}
	for range 2 {
		if err := apply(); err == nil || !strings.Contains(err.Error(), "WSBUSKEY") {
			t.Fatalf("apply with the dead-letter stream a string: %v, want WSBUSKEY", err)
		}
	}
	rdb.Del(ctx, keys.Dead(0))
	if err := apply(); err != nil {
		t.Fatal(err)
	}
	if n := rdb.XLen(ctx, keys.Ingress(1)).Val(); n != 1 {
		t.Fatalf("the misrouted entry reached its partition %d times over 3 tries, want once", n)
	}
}

// TestOutOfMemoryTakesNothing: with Redis out of memory (maxmemory reached,
// noeviction), a batch of pending entries is refused, not acknowledged
// with nothing written; once memory is back it is applied.
func TestOutOfMemoryTakesNothing(t *testing.T) {
	ctx := context.Background()
	rdb, keys, o, l, ids := heldPartition(t, 2)
	if err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: streams.Group, Consumer: "n", Streams: []string{keys.Ingress(0), ">"}}).Err(); err != nil {
		t.Fatal(err)
	}
	msgs, _, err := o.readPending(ctx, l)
	if err != nil || len(msgs) != 2 {
		t.Fatalf("readPending = %d entries, %v; want 2", len(msgs), err)
	}
	rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction")
	rdb.ConfigSet(ctx, "maxmemory", "1")
	err = o.apply(ctx, l, msgs, "")
	rdb.ConfigSet(ctx, "maxmemory", "0")
	if err == nil || !strings.Contains(err.Error(), "OOM") {
		t.Fatalf("apply out of memory: %v, want the OOM refusal", err)
	}
	if n := rdb.XPending(ctx, keys.Ingress(0), streams.Group).Val().Count; n != 2 {
		t.Fatalf("%d entries pending after the refused batch, want the 2 still there", n)
	}
	if err := o.apply(ctx, l, msgs, ""); err != nil {
		t.Fatal(err)
	}
	if h := rdb.XRange(ctx, keys.Topic(0, "t"), "-", "+").Val(); len(h) != 2 || h[1].ID != ids[1] {
		t.Fatalf("history %v after memory came back, want %v", h, ids)
	}
}

// TestRunReleasesEveryLease: when Run's context is done it releases every
// lease it holds, those of pipelines that stopped for it before Run got
// to releasing included (the test holds Run until all have).
func TestRunReleasesEveryLease(t *testing.T) {
	const n = 8
	rdb, keys := testBus(t, n)
	o := testOwner(t, rdb, keys, n, "n", 10*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- o.Run(ctx) }()
	testutil.Eventually(t, testutil.Wait, func() error {
		if got := o.Owned(); got != n {
			return fmt.Errorf("%d of %d partitions held", got, n)
		}
		return nil
	})
	o.mu.Lock()
	var leases []*lease
	for _, l := range o.owned {
		leases = append(leases, l)
	}
	o.mu.Unlock()
	o.testHookStopping = func() {
		for _, l := range leases {
			<-l.done
		}
	}
	cancel()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	if got := o.Owned(); got != 0 {
		t.Errorf("Owned = %d after Run returned, want 0", got)
	}
	for p := range n {
		if v, err := rdb.Get(context.Background(), keys.Owner(p)).Result(); err != redis.Nil {
			t.Errorf("partition %d: lease %q (%v) left after Run returned, want it released", p, v, err)
		}
	}
}

// TestRenewalsDoNotWaitForThePool: with LeaseRedis, a node's renewals go
// on while its Redis pool is taken by other work (a resume storm's
// history reads), and no lease lapses. The control, the same node with
// one pool, loses its leases: its renewals wait behind the reads.
func TestRenewalsDoNotWaitForThePool(t *testing.T) {
	const n, poolSize = 2, 4
	for _, dedicated := range []bool{true, false} {
		name := map[bool]string{true: "lease client", false: "one pool"}[dedicated]
		t.Run(name, func(t *testing.T) {
			rdb, keys := testBus(t, n)
			// go-redis runs pipelines (renewals, and the gateway's head
			// and resume reads) on a pool of their own, and on the main
			// pool once that is full, as in a storm. Here they run on
			// the main pool from the start, which BLPOPs take below.
			opts := *rdb.Options()
			opts.PoolSize, opts.PipelinePoolSize, opts.PoolTimeout = poolSize, -1, 20*time.Second
			pool := redis.NewClient(&opts)
			defer pool.Close()
			cfg := OwnerConfig{Redis: pool, Keys: keys, Partitions: n, Node: "n", LeaseTTL: 2 * time.Second,
				Block: 50 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
			if dedicated {
				lopts := *rdb.Options()
				lopts.PoolSize, lopts.PipelinePoolSize = 2, -1 // as the gateway's
				leases := redis.NewClient(&lopts)
				defer leases.Close()
				cfg.LeaseRedis = leases
			}
			o, err := NewOwner(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			ran := make(chan error, 1)
			go func() { ran <- o.Run(ctx) }()
			defer func() {
				cancel()
				if err := <-ran; err != nil {
					t.Error(err)
				}
			}()
			testutil.Eventually(t, testutil.Wait, func() error {
				if got := o.Owned(); got != n {
					return fmt.Errorf("%d of %d partitions held", got, n)
				}
				return nil
			})
			// Twice the pool's connections, each held 2.5 s in turn: the
			// pool is taken for about 5 s, two and a half lease TTLs.
			var wg sync.WaitGroup
			for range 2 * poolSize {
				wg.Go(func() {
					if err := pool.BLPop(ctx, 2500*time.Millisecond, keys.Prefix+":nothing").Err(); !errors.Is(err, redis.Nil) {
						t.Errorf("BLPOP of an empty list = %v, want a timeout (redis.Nil)", err)
					}
				})
			}
			wg.Wait()
			if !dedicated {
				// The renewals that waited find their leases gone.
				testutil.Eventually(t, testutil.Wait, func() error {
					if o.Stats().Lost == 0 {
						return errors.New("no lease lost with renewals in the taken pool: the test does not take it")
					}
					return nil
				})
				t.Logf("one pool: %d leases lost while the pool was taken", o.Stats().Lost)
				return
			}
			time.Sleep(2 * cfg.LeaseTTL) // for any renewal that waited
			if lost := o.Stats().Lost; lost != 0 {
				t.Errorf("%d leases lost with a lease client of their own, want 0", lost)
			}
		})
	}
}
