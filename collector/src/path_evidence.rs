//! What the traced paths of failing and healthy vantages say together:
//! the first hop every failing path passes and no healthy path does (where
//! they part), a port answered before the destination, a path MTU or black
//! hole the failing paths share; in one line for pages and payloads, and
//! side by side for `probe --path`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::store::TracedPath;

/// The failing paths' shared difference from the healthy ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// Failing vantages (agent and vantage) traced: one traced in several
    /// confirmation rounds counts once.
    pub failing: usize,
    /// Healthy traces.
    pub healthy: usize,
    /// The first hop (TTL, address) that every failing path passes and no
    /// healthy path does.
    pub divergent_hop: Option<(i16, IpAddr)>,
    /// Every failing path's port answered before its destination, first
    /// at this hop.
    pub intercepted_at: Option<(i16, Option<IpAddr>)>,
    /// Every failing path has a path MTU below every healthy path's: the
    /// largest of the failing ones, and the smallest healthy one.
    pub mtu_below: Option<i32>,
    pub healthy_mtu: Option<i32>,
    /// Every failing path loses large packets (a black hole).
    pub black_hole: bool,
}

/// Reads the failing against the healthy traces.
pub fn divergence<'a>(paths: impl IntoIterator<Item = &'a TracedPath>) -> Divergence {
    let (failing, healthy): (Vec<&TracedPath>, Vec<&TracedPath>) = paths
        .into_iter()
        .filter(|p| !p.path.probes.is_empty())
        .partition(|p| p.failing());
    // Each trace's answering hops, read once.
    let addresses = |p: &TracedPath| -> Vec<(i16, IpAddr)> {
        p.hops()
            .into_iter()
            .filter_map(|h| h.address.map(|a| (h.ttl, a)))
            .collect()
    };
    let failing_hops: Vec<Vec<(i16, IpAddr)>> = failing.iter().map(|p| addresses(p)).collect();
    let healthy_passes: BTreeSet<IpAddr> = healthy
        .iter()
        .flat_map(|p| addresses(p).into_iter().map(|(_, a)| a))
        .collect();
    let divergent_hop = failing_hops.first().and_then(|first| {
        first.iter().copied().find(|(_, a)| {
            !healthy_passes.contains(a)
                && failing_hops
                    .iter()
                    .all(|hops| hops.iter().any(|(_, b)| b == a))
        })
    });
    let intercepted = |p: &TracedPath| match (p.path.port_answered_at, p.path.hop_count()) {
        (Some(at), Some(hops)) if at < hops => Some(at),
        _ => None,
    };
    let intercepted_at = if !failing.is_empty() && failing.iter().all(|p| intercepted(p).is_some())
    {
        failing
            .iter()
            .filter_map(|p| intercepted(p))
            .min()
            .map(|ttl| {
                let at = failing
                    .iter()
                    .find_map(|p| p.hops().into_iter().find(|h| h.ttl == ttl))
                    .and_then(|h| h.address);
                (ttl, at)
            })
    } else {
        None
    };
    let failing_mtu: Vec<i32> = failing.iter().filter_map(|p| p.path.path_mtu).collect();
    let healthy_mtu: Option<i32> = healthy.iter().filter_map(|p| p.path.path_mtu).min();
    let mtu_below = (!failing.is_empty() && failing_mtu.len() == failing.len())
        .then(|| {
            let worst_failing = failing_mtu.iter().copied().max()?;
            (worst_failing < healthy_mtu?).then_some(worst_failing)
        })
        .flatten();
    let black_hole = !failing.is_empty()
        && failing
            .iter()
            .all(|p| p.path.black_hole_after_ttl.is_some())
        && healthy
            .iter()
            .all(|p| p.path.black_hole_after_ttl.is_none());
    Divergence {
        failing: failing
            .iter()
            .map(|p| (&p.agent_id, &p.vantage))
            .collect::<BTreeSet<_>>()
            .len(),
        healthy: healthy.len(),
        divergent_hop,
        intercepted_at,
        mtu_below,
        healthy_mtu,
        black_hole,
    }
}

impl Divergence {
    /// One line for a page: what the failing paths share that the healthy
    /// ones do not; `None` without traces.
    pub fn summary(&self) -> Option<String> {
        if self.failing + self.healthy == 0 {
            return None;
        }
        if self.failing == 0 {
            return Some(format!(
                "{} traced paths, none from a failing vantage",
                self.healthy
            ));
        }
        let mut parts = Vec::new();
        let (all, passes, shares) = if self.failing == 1 {
            ("the failing vantage's path".to_owned(), "passes", "shares")
        } else {
            (
                format!("the {} failing vantages' paths all", self.failing),
                "pass",
                "share",
            )
        };
        match (self.divergent_hop, self.healthy) {
            (Some((ttl, address)), 0) => parts.push(format!(
                "{all} {passes} {address} (hop {ttl}); no healthy path was traced"
            )),
            (Some((ttl, address)), healthy) => parts.push(format!(
                "{all} {passes} {address} (hop {ttl}); none of the {healthy} healthy paths does"
            )),
            (None, 0) => parts.push(format!("{all}: no healthy path was traced to compare")),
            (None, _) => parts.push(format!(
                "{all} {shares} no hop that the healthy paths avoid"
            )),
        }
        if let Some((ttl, address)) = self.intercepted_at {
            let who = address.map_or_else(String::new, |a| format!(" ({a})"));
            parts.push(format!(
                "the target port answers at hop {ttl}{who}, before the destination: something on the way answers for it"
            ));
        }
        if self.black_hole {
            parts.push("large packets vanish on the way (a path-MTU black hole)".to_owned());
        }
        if let (Some(mtu), Some(healthy)) = (self.mtu_below, self.healthy_mtu) {
            parts.push(format!(
                "path MTU at most {mtu} on the failing paths, {healthy} on the healthy ones"
            ));
        }
        Some(parts.join("; "))
    }
}

fn ms(us: Option<i64>) -> String {
    us.map_or_else(|| "*".to_owned(), |us| format!("{:.2}", us as f64 / 1000.0))
}

/// Each trace as its hops, side by side (one column per vantage), its
/// end, MTU and port check below, then the summary line.
pub fn render_side_by_side(paths: &[TracedPath]) -> String {
    let mut out = String::new();
    if paths.is_empty() {
        let _ = writeln!(
            out,
            "No path was traced (agents too old to trace, or no result)."
        );
        return out;
    }
    let columns: Vec<(String, Vec<String>)> = paths
        .iter()
        .map(|t| {
            let mut cells = Vec::new();
            for hop in t.hops() {
                let ttl = hop.ttl;
                cells.push(match hop.address {
                    Some(a) => format!("{ttl:>2} {a} {} ms", ms(hop.best_rtt_us)),
                    None => format!("{ttl:>2} *"),
                });
            }
            let p = &t.path;
            cells.push(match (p.end_reason, p.error.as_deref()) {
                ("reached", _) => format!("reached in {} hops", p.hop_count().unwrap_or(0)),
                (end, Some(error)) => format!("{end}: {error}"),
                (end, None) => end.replace('_', " "),
            });
            if let Some(mtu) = p.path_mtu {
                cells.push(match p.mtu_from {
                    Some(from) => format!("pmtu {mtu} (from {from})"),
                    None => format!("pmtu {mtu}"),
                });
            }
            if let (Some(after), Some(passed), Some(lost)) = (
                p.black_hole_after_ttl,
                p.black_hole_largest_passed,
                p.black_hole_smallest_lost,
            ) {
                cells.push(format!(
                    "black hole after hop {after}: {passed} B pass, {lost} B lost"
                ));
            }
            if let (Some(at), Some(hops)) = (p.port_answered_at, p.hop_count())
                && at < hops
            {
                cells.push(format!("port answered at hop {at}, before the destination"));
            }
            if p.via_proxy {
                cells.push("traced to the vantage's proxy only".to_owned());
            }
            let status = t
                .http_status
                .map_or_else(|| t.outcome.clone(), |s| format!("{s} {}", t.outcome));
            (format!("{}/{} ({status})", t.agent_id, t.vantage), cells)
        })
        .collect();
    // One column per trace: its hops down the page.
    let header: Vec<&str> = columns.iter().map(|(h, _)| h.as_str()).collect();
    let depth = columns.iter().map(|(_, c)| c.len()).max().unwrap_or(0);
    let rows: Vec<Vec<String>> = (0..depth)
        .map(|i| {
            columns
                .iter()
                .map(|(_, c)| c.get(i).cloned().unwrap_or_default())
                .collect()
        })
        .collect();
    let _ = writeln!(out, "Paths:");
    out.push_str(&crate::table::aligned(&header, &rows));
    if let Some(summary) = divergence(paths).summary() {
        let _ = writeln!(out, "Where: {summary}.");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoredPath, StoredPathProbe};

    /// A trace of `agent`'s `vantage` through `hops`, its probe failing or not.
    fn trace(agent: &str, vantage: &str, seq: i64, failing: bool, hops: &[&str]) -> TracedPath {
        TracedPath {
            agent_id: agent.into(),
            vantage: vantage.into(),
            seq,
            started_at: chrono::DateTime::UNIX_EPOCH,
            outcome: if failing { "http" } else { "ok" }.into(),
            http_status: Some(if failing { 502 } else { 200 }),
            path: StoredPath {
                protocol: crate::store::PathProtocol::Udp,
                source_ip: None,
                destination_ip: None,
                destination_port: Some(443),
                via_proxy: false,
                end_reason: "reached",
                error: None,
                path_mtu: None,
                mtu_from: None,
                black_hole_after_ttl: None,
                black_hole_largest_passed: None,
                black_hole_smallest_lost: None,
                port_answered_at: None,
                port_reached: true,
                port_rtt_us: None,
                port_error: None,
                duration_us: 1000,
                probes: hops
                    .iter()
                    .enumerate()
                    .map(|(i, a)| StoredPathProbe {
                        ttl: i16::try_from(i + 1).unwrap_or(i16::MAX),
                        address: a.parse().ok(),
                        rtt_us: Some(100),
                        reply: Some("time_exceeded"),
                        size: 60,
                    })
                    .collect(),
            },
        }
    }

    #[test]
    fn a_vantage_traced_in_several_rounds_counts_once() {
        let paths = [
            trace("a", "direct", 1, true, &["10.1.0.1", "10.9.0.2"]),
            trace("a", "direct", 2, true, &["10.1.0.1", "10.9.0.2"]),
            trace("a", "direct", 3, true, &["10.1.0.1", "10.9.0.2"]),
            trace("b", "direct", 1, true, &["10.1.0.1", "10.9.0.2"]),
            trace("c", "direct", 1, false, &["10.2.0.1", "10.9.0.2"]),
        ];
        let d = divergence(&paths);
        assert_eq!(d.failing, 2);
        assert_eq!(d.healthy, 1);
        assert_eq!(d.divergent_hop, Some((1, "10.1.0.1".parse().unwrap())));
        assert!(
            d.summary()
                .unwrap()
                .starts_with("the 2 failing vantages' paths all pass 10.1.0.1 (hop 1)"),
            "{:?}",
            d.summary()
        );
    }
}
