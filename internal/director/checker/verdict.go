package checker

import (
	"context"

	"github.com/lvsha/lvsha/healthcheck"
)

// The verdicts the child reports, and their delivery to the daemon.

// Verdicts returns the verdict of every target by ID: true for UP, false
// for DOWN. A target is UP or DOWN from its Update on (its initial state
// until the child reports otherwise); an ID that is not a target is absent.
func (c *Client) Verdicts() map[string]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]bool, len(c.verdict))
	for id, v := range c.verdict {
		out[id] = v.Up
	}
	return out
}

// Verdict returns one target's verdict; known is false if id is not a
// target (any more).
func (c *Client) Verdict(id string) (up, known bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, known := c.verdict[id]
	return v.Up, known
}

// transition records a state change and queues it for Transitions.
func (c *Client) transition(tr healthcheck.Transition) {
	c.mu.Lock()
	_, known := c.verdict[tr.ID]
	if known {
		c.verdict[tr.ID] = healthcheck.Resume{Up: tr.Up, Since: tr.At}
	}
	c.mu.Unlock()
	if !known {
		return // removed by an update since
	}
	c.qmu.Lock()
	if _, ok := c.queued[tr.ID]; !ok {
		c.queue = append(c.queue, tr.ID)
	}
	c.queued[tr.ID] = tr
	c.qmu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// forward delivers queued transitions to Transitions. The reader never
// waits for the daemon, so a daemon busy in Update (which waits for the
// reader) cannot deadlock with it.
func (c *Client) forward(ctx context.Context) {
	for {
		c.qmu.Lock()
		var tr healthcheck.Transition
		have := len(c.queue) > 0
		if have {
			tr = c.queued[c.queue[0]]
			delete(c.queued, c.queue[0])
			c.queue = c.queue[1:]
		}
		c.qmu.Unlock()
		if !have {
			select {
			case <-c.kick:
				continue
			case <-ctx.Done():
				return
			}
		}
		select {
		case c.out <- tr:
		case <-ctx.Done():
			return
		}
	}
}
