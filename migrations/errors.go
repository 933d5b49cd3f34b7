package migrations

import "errors"

// ErrPartitionMismatch means the bus exists with another partition count.
// The count is fixed when a bus is first migrated: topics are hashed by it.
var ErrPartitionMismatch = errors.New("migrations: partition count differs from the existing bus")

// ErrTooNew means the bus was migrated by a newer wsbus than this one.
var ErrTooNew = errors.New("migrations: bus schema is newer than this binary")
