package streams

import (
	"hash/crc32"
	"strconv"
	"strings"
)

// DefaultPrefix is the key prefix when none is configured.
const DefaultPrefix = "wsbus"

// Group is the consumer group that partition owners read ingress with.
const Group = "wsbus"

// Keys builds the Redis keys of one bus. Every key of partition p carries
// the hash tag {p}, so a partition lives in one Redis Cluster slot.
type Keys struct {
	// Prefix starts every key. Zero value means DefaultPrefix.
	Prefix string
}

func (k Keys) prefix() string {
	if k.Prefix == "" {
		return DefaultPrefix
	}
	return k.Prefix
}

func (k Keys) part(p int, suffix string) string {
	return k.prefix() + ":{" + strconv.Itoa(p) + "}:" + suffix
}

// Meta is the bus-wide hash with the partition count and schema version.
func (k Keys) Meta() string { return k.prefix() + ":meta" }

// Nodes is the sorted set of live gateway nodes, scored by the unix
// milliseconds when their heartbeat expires.
func (k Keys) Nodes() string { return k.prefix() + ":nodes" }

// Ingress is the stream services append to for partition p.
func (k Keys) Ingress(p int) string { return k.part(p, "in") }

// Topic is the history stream of one topic.
func (k Keys) Topic(p int, topic string) string { return k.part(p, "topic:"+topic) }

// Live is the sharded pub/sub channel of one topic.
func (k Keys) Live(p int, topic string) string { return k.part(p, "live:"+topic) }

// LiveTopic returns the partition and topic of a channel Live made; ok is
// false for any other name. It allocates nothing: it runs for every live
// event a gateway receives.
func (k Keys) LiveTopic(channel string) (p int, topic string, ok bool) {
	rest, ok := strings.CutPrefix(channel, k.prefix())
	if !ok {
		return 0, "", false
	}
	if rest, ok = strings.CutPrefix(rest, ":{"); !ok {
		return 0, "", false
	}
	num, rest, ok := strings.Cut(rest, "}:live:")
	if !ok || num == "" || len(num) > 1 && num[0] == '0' {
		return 0, "", false // as Live writes p: no sign, no leading zero
	}
	p, err := strconv.Atoi(num)
	if err != nil || p < 0 || num[0] == '+' {
		return 0, "", false
	}
	return p, rest, true
}

// PartitionMeta is the hash holding partition p's epoch and fencing counter.
func (k Keys) PartitionMeta(p int) string { return k.part(p, "meta") }

// Owner is the lease of partition p.
func (k Keys) Owner(p int) string { return k.part(p, "owner") }

// Dead is the dead-letter stream of partition p.
func (k Keys) Dead(p int) string { return k.part(p, "dead") }

// Acked is the hash of acknowledged cursors of one topic: field "s:<subject>"
// holds "<id> <seq>", the subject's cursor, and field "max" the highest ID
// any subject acknowledged (what a deadline is checked against). It lives
// as long as the topic's history, longer for a deadline still to be
// checked (see bus/ack.go).
func (k Keys) Acked(p int, topic string) string { return k.part(p, "acked:"+topic) }

// Deadlines is the sorted set of partition p's events with a deadline not
// yet checked, scored by when they are due (unix ms): see bus/deadline.go.
func (k Keys) Deadlines(p int) string { return k.part(p, "deadlines") }

// Escalations is the bus-wide stream of events with a deadline that no
// subject acknowledged in time.
func (k Keys) Escalations() string { return k.prefix() + ":escalations" }

// EscalationsSent remembers, in the slot of Escalations (its hash tag is
// that key's whole name), which events were escalated, so an owner that
// repeats an escalation on Redis Cluster adds nothing twice.
func (k Keys) EscalationsSent() string { return "{" + k.Escalations() + "}:sent" }

// Partition returns the partition of topic among n: crc32_ieee(topic) % n,
// the same as zlib.crc32 or java.util.zip.CRC32.
func Partition(topic string, n int) int {
	// A table loop over the string: crc32.ChecksumIEEE would need a []byte
	// copy of the topic, an allocation per entry and per subscribe.
	crc := ^uint32(0)
	for i := 0; i < len(topic); i++ {
		crc = ieee[byte(crc)^topic[i]] ^ crc>>8
	}
	return int(^crc % uint32(n))
}

var ieee = crc32.MakeTable(crc32.IEEE)
