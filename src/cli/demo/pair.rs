//! The pair demo's [`Scene`]: two gateways joined by one simulated QKD
//! link ([`AgentPair`]), the tunnel keyed straight from its pool.

use std::net::IpAddr;

use anyhow::bail;

use super::live::Scene;
use super::view::{self, Frame, LiveFigures};
use crate::ops::BoardSnapshot;
use crate::testbed::{AgentPair, Side};
use crate::xfrm::Prefix;

pub struct PairScene {
    pair: AgentPair,
    length_km: f64,
    /// The latest status of gw-a and gw-b.
    last: [Option<BoardSnapshot>; 2],
}

impl PairScene {
    pub fn new(pair: AgentPair) -> Self {
        let length_km = pair.options().length_km;
        Self {
            pair,
            length_km,
            last: [None, None],
        }
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

impl Scene for PairScene {
    fn gateway_namespaces(&self) -> Vec<String> {
        Side::BOTH
            .iter()
            .map(|&s| self.pair.netns_name(s).to_string())
            .collect()
    }

    fn sites(&self) -> [Prefix; 2] {
        let bed = self.pair.bed();
        [bed.gw_a.site, bed.gw_b.site]
    }

    fn ping_route(&self) -> (String, IpAddr) {
        let bed = self.pair.bed();
        (bed.host_a.name.clone(), bed.host_b.addr)
    }

    fn refresh(&mut self) -> anyhow::Result<()> {
        for side in Side::BOTH {
            if !self.pair.agent_running(side) {
                bail!(
                    "{side}'s agent stopped; the end of its log:\n{}",
                    self.pair.log_tail(side, 30)
                );
            }
            self.last[side_index(side)] = self.pair.status(side).ok();
        }
        Ok(())
    }

    fn keyed(&self) -> bool {
        self.last
            .iter()
            .all(|s| view::tunnel(s.as_ref()).is_some_and(|t| t.generation > 0))
    }

    fn render(&self, live: &LiveFigures) -> String {
        view::render(&Frame {
            length_km: self.length_km,
            a: self.last[0].as_ref(),
            b: self.last[1].as_ref(),
            live,
        })
    }

    fn summary(&self, live: &LiveFigures) -> String {
        summary(&self.last, live)
    }

    fn teardown(self) -> anyhow::Result<()> {
        for side in Side::BOTH {
            self.pair.stop_agent(side);
        }
        Ok(self.pair.teardown()?)
    }
}

/// One `key=value` line a script (and the demo's test) can read.
fn summary(last: &[Option<BoardSnapshot>; 2], live: &LiveFigures) -> String {
    let tunnel = |i: usize| view::tunnel(last[i].as_ref());
    let generation = |i: usize| tunnel(i).map_or(0, |t| t.generation);
    let rekeys = |i: usize| tunnel(i).map_or(0, |t| t.rekeys_done());
    let blocks = last[0]
        .as_ref()
        .and_then(|s| s.peers.first())
        .map_or(0, |p| p.qkd.blocks_ok);
    let sa_key = last[0].as_ref().map_or(0, view::sa_key_bytes);
    let ping = &live.ping;
    format!(
        "demo summary: seconds={} blocks_ok={blocks} generation_a={} generation_b={} \
         rekeys_a={} rekeys_b={} sa_key_bytes_a={sa_key} ping_sent={} ping_answered={} \
         ping_unanswered={} clear_on_wan={}",
        live.elapsed_s,
        generation(0),
        generation(1),
        rekeys(0),
        rekeys(1),
        ping.sent,
        ping.received,
        ping.unanswered,
        live.clear_total()
            .map_or("unknown".into(), |c| c.to_string())
    )
}
