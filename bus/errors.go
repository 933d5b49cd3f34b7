package bus

import "errors"

// ErrLeaseLost means a partition's lease is no longer this node's: its
// fenced writes were refused and its pipeline stops.
var ErrLeaseLost = errors.New("bus: partition lease lost")
