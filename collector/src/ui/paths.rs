//! The incident page's paths: the routes the detector's confirmation
//! probes traced from the failing and the healthy vantages, side by side,
//! hop by hop (a node per hop, its address and best RTT), the hop where
//! the failing paths part from the healthy ones marked, and the one-line
//! reading beside them.

use maud::{Markup, html};

use crate::path_evidence::divergence;
use crate::store::{PathHop, TracedPath};

/// The latest trace of each (agent, vantage), failing ones first.
fn latest(paths: &[TracedPath]) -> Vec<&TracedPath> {
    let mut out: Vec<&TracedPath> = Vec::new();
    for p in paths {
        match out
            .iter_mut()
            .find(|o| o.agent_id == p.agent_id && o.vantage == p.vantage)
        {
            Some(o) if o.started_at < p.started_at => *o = p,
            Some(_) => {}
            None => out.push(p),
        }
    }
    out.sort_by_key(|p| (!p.failing(), p.agent_id.clone(), p.vantage.clone()));
    out
}

/// The paths section, empty without traces.
pub fn section(paths: &[TracedPath]) -> Markup {
    let shown = latest(paths);
    if shown.is_empty() {
        return html! {};
    }
    let reading = divergence(shown.iter().copied());
    let hops: Vec<Vec<PathHop>> = shown.iter().map(|p| p.hops()).collect();
    let rows = hops.iter().map(Vec::len).max().unwrap_or(0);
    html! {
        h2 { "Paths" }
        p.muted { "Traced from each vantage the detector asked, right after its confirmation probe, to the address that probe dialled." }
        @if let Some(summary) = reading.summary() {
            p.path-summary { (summary) "." }
        }
        table.paths {
            thead { tr {
                th.num { "hop" }
                @for p in &shown {
                    th class=(if p.failing() { "failing" } else { "healthy" }) {
                        (p.agent_id) "/" (p.vantage) br;
                        span.muted { (p.http_status.map_or_else(|| p.outcome.clone(), |s| format!("{s} {}", p.outcome))) }
                    }
                }
            } }
            tbody {
                @for row in 0..rows { tr {
                    td.num { (row + 1) }
                    @for (i, p) in shown.iter().enumerate() {
                        @match hops[i].get(row).map(|h| (h.ttl, h.address, h.best_rtt_us)) {
                            Some((ttl, Some(address), rtt)) => {
                                @let divergent = reading.divergent_hop.is_some_and(|(_, a)| a == address) && p.failing();
                                @let intercepted = p.path.port_answered_at == Some(ttl)
                                    && p.path.hop_count().is_some_and(|h| h > ttl);
                                td.hop.divergent[divergent].intercepted[intercepted] {
                                    span.node { code { (address) } }
                                    " " span.muted { (rtt.map_or_else(|| "*".to_owned(), |us| format!("{:.2} ms", us as f64 / 1000.0))) }
                                    @if divergent { " " span.badge.open { "diverges" } }
                                    @if intercepted { " " span.badge.open { "answers the port" } }
                                }
                            }
                            Some((_, None, _)) => { td.hop.silent { "*" } }
                            None => { td {} }
                        }
                    }
                } }
                tr {
                    td {}
                    @for p in &shown {
                        td.muted {
                            @match p.path.end_reason {
                                "reached" => { "reached in " (p.path.hop_count().unwrap_or(0)) " hops" }
                                end => { (end.replace('_', " ")) @if let Some(e) = &p.path.error { ": " (e) } }
                            }
                            @if let Some(mtu) = p.path.path_mtu { br; "path MTU " (mtu) @if let Some(from) = p.path.mtu_from { " (from " (from) ")" } }
                            @if let (Some(after), Some(passed), Some(lost)) = (p.path.black_hole_after_ttl, p.path.black_hole_largest_passed, p.path.black_hole_smallest_lost) {
                                br; "black hole after hop " (after) ": " (passed) " B cross, " (lost) " B do not"
                            }
                            @if p.path.via_proxy { br; "to the vantage's proxy only" }
                        }
                    }
                }
            }
        }
    }
}
