package bus

import "time"

// watchEpochs reads every partition's epoch each EpochCheck while the
// Gateway has topics, until it closes; only it uses Gateway.epochs and
// epochRecheck. An owner that finds its partition's
// data lost renews the epoch; the topics whose subscribers were served
// under the old one are then caught up from history, which closes those
// subscribers with 4001 (resetLocked) so that they resume and are told
// recovered:false. Without it they heard of the loss only when another
// client subscribed to their topic, or a live event did not follow.
func (g *Gateway) watchEpochs() {
	tick := time.NewTicker(g.cfg.EpochCheck)
	defer tick.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-tick.C:
			g.checkEpochs()
		}
	}
}

// checkEpochs reads the partitions' epochs once and has the topics of
// those whose epoch changed since the last read checked (checkEpoch). A
// topic that had no epoch yet (its first subscribe still reading) cannot
// be judged: its partition's topics are checked again at the next read,
// by when the subscribe has told it the epoch it read, perhaps the old
// one.
func (g *Gateway) checkEpochs() {
	g.mu.RLock()
	idle := len(g.topics) == 0
	g.mu.RUnlock()
	if idle {
		return
	}
	epochs, err := g.hist.Epochs(g.ctx)
	if err != nil {
		if g.ctx.Err() == nil {
			g.cfg.Logger.Debug("reading partition epochs", "err", err) // the next tick reads again
		}
		return
	}
	check := g.epochRecheck // the partitions left unjudged by the last read
	g.epochRecheck = make([]bool, len(epochs))
	any := false
	for p, epoch := range epochs {
		if epoch == "" {
			continue // the partition's meta is gone: its owner renews it
		}
		if g.epochs[p] != epoch {
			g.epochs[p] = epoch
			check[p] = true
		}
		any = any || check[p]
	}
	if !any {
		return
	}
	var topics []*topic
	g.mu.RLock()
	for _, t := range g.topics {
		if check[t.p] {
			topics = append(topics, t)
		}
	}
	g.mu.RUnlock()
	for _, t := range topics {
		if !g.checkEpoch(t, epochs[t.p]) {
			g.epochRecheck[t.p] = true
		}
	}
}

// checkEpoch holds t's live events for a catch-up from history when its
// subscribers were served under an epoch other than epoch; the catch-up
// reads the epoch again, and closes them if it has changed. It reports
// false when t has no epoch yet.
func (g *Gateway) checkEpoch(t *topic, epoch string) bool {
	t.mu.Lock()
	known := t.epoch != noEpoch
	stale := known && t.epoch.Value() != epoch
	if stale {
		t.holdLocked()
	}
	t.mu.Unlock()
	if stale {
		g.queueCatchUp(t)
	}
	return known
}
