package proxy

import (
	"context"
	"time"

	"github.com/stagely-dev/stagely/tunnel"
)

// publishBatch is how many agents one route table write carries.
const publishBatch = 500

func (p *Proxy) publication(s *tunnel.Session) Publication {
	id := s.Identity()
	return Publication{Agent: id.Agent, Environment: id.Environment, Hosts: id.Hostnames,
		Node: p.node, Generation: s.Generation()}
}

// sessionUp publishes a new session's route before any request can reach
// it, and drops cached answers that would hide it.
func (p *Proxy) sessionUp(s *tunnel.Session) {
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	pub := p.publication(s)
	if err := p.routes.Publish(ctx, []Publication{pub}, p.cfg.AgentTTL, p.cfg.HostTTL); err != nil {
		// The refresh loop tries again within RefreshInterval.
		p.log.Error().Err(err).Str("agent", pub.Agent).Msg("publish route")
	}
	p.res.forgetAgent(pub.Agent, pub.Hosts)
}

// sessionDown withdraws an ended session's location (only if it is still
// the recorded one) and drops cached answers naming it.
func (p *Proxy) sessionDown(s *tunnel.Session) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(p.ctx), 5*time.Second)
	defer cancel()
	id := s.Identity()
	if err := p.routes.Withdraw(ctx, id.Agent, s.Generation()); err != nil {
		p.log.Error().Err(err).Str("agent", id.Agent).Msg("withdraw route")
	}
	p.res.forgetAgent(id.Agent, id.Hostnames)
}

// refreshLoop re-publishes every session's route each RefreshInterval, so
// routes of this node expire within AgentTTL after it dies.
func (p *Proxy) refreshLoop() {
	t := time.NewTicker(p.cfg.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
		p.tr.sweep()
		p.refresh()
	}
}

func (p *Proxy) refresh() {
	sessions := p.tun.Sessions()
	for i := 0; i < len(sessions); i += publishBatch {
		end := min(i+publishBatch, len(sessions))
		pubs := make([]Publication, 0, end-i)
		for _, s := range sessions[i:end] {
			pub := p.publication(s)
			pub.Refresh = true
			pubs = append(pubs, pub)
		}
		ctx, cancel := context.WithTimeout(p.ctx, p.cfg.RefreshInterval)
		err := p.routes.Publish(ctx, pubs, p.cfg.AgentTTL, p.cfg.HostTTL)
		cancel()
		if err != nil {
			p.log.Error().Err(err).Int("agents", len(pubs)).Msg("refresh routes")
		}
	}
}
