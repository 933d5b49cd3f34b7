//go:build !linux

package bench

import (
	"errors"
	"io"
)

// readHost reads nothing off a machine other than Linux: the kernel's
// figures are left out of the result there.
func readHost() Host { return Host{} }

func readProcMemory(int) (ProcMemory, bool) { return ProcMemory{}, false }

// PrepareHost is for Linux, where the million runs.
func PrepareHost(int, int, io.Writer) error {
	return errors.New("the million's host checks are for Linux")
}
