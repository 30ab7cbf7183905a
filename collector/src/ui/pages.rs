//! The pages' HTML (maud): the layout, the incident list, one incident,
//! the vantage list. Pure functions of what the handlers read, so what a
//! page says is decided here and nowhere else.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;

use super::plot::{self, Round};
use crate::detect::dimensions::DIMENSIONS;
use crate::detect::records::{FaultSide, IncidentKind, IncidentScope};
use crate::store::{Incident, ResultPath, VantageRow};

const CSS: &str = r#"
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header { background: #1d2330; color: #fff; padding: 10px 24px; display: flex; gap: 24px; align-items: baseline; }
header a { color: #cfd6e4; text-decoration: none; } header a.brand { color: #fff; font-weight: 700; }
main { padding: 16px 24px 40px; max-width: 1400px; }
h1 { font-size: 20px; margin: 8px 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
table { border-collapse: collapse; background: #fff; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e3e6ec; vertical-align: top; }
th { background: #eef0f4; font-weight: 600; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.explanation { font-size: 16px; background: #fff; border-left: 4px solid #c62828; padding: 10px 14px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.badge.open { background: #fde2e1; color: #a31515; } .badge.resolved { background: #dff3e4; color: #1b6b34; }
.muted { color: #6b7385; } tr.winner td { background: #fff4f3; font-weight: 600; }
code { font-size: 12px; }
svg.timeline { background: #fff; border: 1px solid #e3e6ec; }
svg .grid { stroke: #e3e6ec; } svg .mark { stroke: #1d2330; stroke-dasharray: 4 3; }
svg .axis { font-size: 11px; fill: #6b7385; }
svg polyline { fill: none; stroke-width: 2; } svg polyline.segment { stroke: #c62828; } svg polyline.rest { stroke: #8a93a6; }
.legend .key { display: inline-block; width: 14px; height: 3px; margin: 0 4px 3px 12px; }
.segment-key { background: #c62828; } .rest-key { background: #8a93a6; }
svg.waterfall .total { fill: #d5d9e2; } svg .phase.dns { fill: #6a4c93; } svg .phase.connect { fill: #1982c4; }
table.paths td.hop .node { border: 1px solid #8a93a6; border-radius: 10px; padding: 0 6px; background: #f6f7f9; }
table.paths td.divergent .node, table.paths td.intercepted .node { border-color: #c62828; background: #fde2e1; }
table.paths th.failing { color: #a31515; } table.paths th.healthy { color: #1b6b34; }
.path-summary { background: #fff; border-left: 4px solid #1982c4; padding: 6px 12px; }
svg .phase.proxy { fill: #8ac926; } svg .phase.tls { fill: #ffca3a; } svg .phase.ttfb { fill: #ff595e; }
"#;

/// Every page's frame.
pub fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // No favicon request: the pages load nothing but themselves.
                link rel="icon" href="data:,";
                title { (title) " · Vantage" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    a.brand href="/" { "Vantage" }
                    a href="/" { "Incidents" }
                    a href="/vantages" { "Vantages" }
                }
                main { (body) }
            }
        }
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds().max(0);
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86400 => format!("{} h {} min ago", s / 3600, s % 3600 / 60),
        _ => format!("{} d ago", s / 86400),
    }
}

/// How a dimension is named in text (`egress prefix`), or its name.
pub fn dimension_label(name: &str) -> &str {
    DIMENSIONS
        .iter()
        .find(|d| d.name == name)
        .map_or(name, |d| d.label)
}

fn percent(failures: i64, probes: i64) -> String {
    plot::rate((failures, probes)).map_or("–".into(), |r| format!("{:.0} %", r * 100.0))
}

fn fraction(failures: i64, probes: i64) -> Markup {
    html! { (failures) " of " (probes) " " span.muted { "(" (percent(failures, probes)) ")" } }
}

fn segment_of(i: &Incident) -> String {
    let value = i.narrowed_value.as_deref().unwrap_or(&i.value);
    if i.kind == IncidentKind::Global {
        "everywhere (global)".into()
    } else {
        format!("{} {value}", dimension_label(&i.dimension))
    }
}

fn targets_of(i: &Incident) -> String {
    if i.scope == IncidentScope::Path {
        format!("{} targets", i.targets.len())
    } else {
        i.target.clone()
    }
}

fn state_badge(i: &Incident) -> Markup {
    html! {
        @if i.resolved_at.is_some() { span.badge.resolved { "resolved" } }
        @else { span.badge.open { "open" } }
    }
}

fn incidents_table(incidents: &[&Incident], now: DateTime<Utc>) -> Markup {
    html! {
        table {
            thead { tr {
                th { "#" } th { "state" } th { "where" } th { "target" } th { "pattern" }
                th.num { "segment" } th.num { "everywhere else" } th { "opened" } th { "resolved" }
            } }
            tbody {
                @for i in incidents {
                    tr {
                        td { a href={ "/incidents/" (i.id) } { (i.id) } }
                        td { (state_badge(i)) }
                        td { a href={ "/incidents/" (i.id) } { (segment_of(i)) } }
                        td { code { (targets_of(i)) } }
                        td { (pattern_text(i)) }
                        td.num { (fraction(i.segment_failures, i.segment_probes)) }
                        td.num { (fraction(i.rest_failures, i.rest_probes)) }
                        td title=(time(i.opened_at)) { (ago(i.opened_at, now)) }
                        td { @if let Some(r) = i.resolved_at { span title=(time(r)) { (ago(r, now)) } } @else { "–" } }
                    }
                }
            }
        }
    }
}

fn pattern_text(i: &Incident) -> String {
    if i.pattern == "connection" {
        "connection failures".into()
    } else {
        let statuses: Vec<String> = i.statuses.iter().map(i16::to_string).collect();
        format!("HTTP {}", statuses.join(", "))
    }
}

/// `/`: open incidents, then the recently resolved.
pub fn index(incidents: &[Incident], recent_days: i64, now: DateTime<Utc>) -> Markup {
    let open: Vec<&Incident> = incidents
        .iter()
        .filter(|i| i.resolved_at.is_none())
        .collect();
    let resolved: Vec<&Incident> = incidents
        .iter()
        .filter(|i| i.resolved_at.is_some())
        .collect();
    layout(
        "Incidents",
        html! {
            h1 { "Open incidents" }
            @if open.is_empty() { p.muted { "None: no 502 pattern is open now." } }
            @else { (incidents_table(&open, now)) }
            h2 { "Resolved in the last " (recent_days) " days" }
            @if resolved.is_empty() { p.muted { "None." } }
            @else { (incidents_table(&resolved, now)) }
        },
    )
}

/// What the incident page shows besides the incident.
pub struct IncidentView<'a> {
    pub incident: &'a Incident,
    pub evidence: &'a Value,
    pub history: &'a [Value],
    pub rounds: &'a [Round],
    pub round_seconds: f64,
    pub samples: &'a [ResultPath],
    /// The paths the confirmation probes traced.
    pub paths: &'a [crate::store::TracedPath],
}

/// `/incidents/<id>`.
pub fn incident(v: &IncidentView<'_>) -> Markup {
    let i = v.incident;
    layout(
        &format!("Incident {}", i.id),
        html! {
            h1 { "Incident " (i.id) ": " (segment_of(i)) " " (state_badge(i)) }
            p.muted {
                (pattern_text(i)) " · " code { (targets_of(i)) } " · opened " (time(i.opened_at))
                @if let Some(r) = i.resolved_at { " · resolved " (time(r)) }
                " · explanation version " (i.version)
                " · fault in " (if i.fault_side == FaultSide::Path { "the vantages' own path" } else { "the site, for the vantages named" })
            }
            p.explanation { (i.explanation) }
            h2 { "Counts" }
            (counts_table(i, v.evidence))
            h2 { "Failure rate per round (" (format!("{:.0}", v.round_seconds)) " s)" }
            (plot::timeline(v.rounds, i.opened_at, i.resolved_at))
            (rounds_table(v.rounds))
            @if let Some(walk) = v.evidence.get("walk").and_then(Value::as_array).filter(|w| !w.is_empty()) {
                h2 { "Prefix walk" }
                p.muted { "From the configured prefix towards the most specific one that still holds every failure." }
                table {
                    thead { tr { th { "prefix" } th.num { "failures" } th.num { "probes" } } }
                    tbody { @for s in walk { tr {
                        td { code { (s["prefix"].as_str().unwrap_or("?")) } }
                        td.num { (s["failures"]) } td.num { (s["probes"]) }
                    } } }
                }
            }
            @if i.scope == IncidentScope::Path {
                h2 { "Targets" }
                ul { @for t in &i.targets { li { code { (t) } } } }
            }
            h2 { "Failing probes (samples)" }
            (samples_table(v.samples))
            @if let Some(confirmations) = v.evidence.get("confirmation_probes").and_then(Value::as_array).filter(|c| !c.is_empty()) {
                h2 { "Confirmation probes" }
                p.muted { "Asked by the detector of the failing vantages and of a matched set elsewhere, at once." }
                table.confirmations {
                    thead { tr { th { "asked" } th.num { "failing / probes inside" } th { "inside" } th.num { "failing / probes outside" } th { "outside" } } }
                    tbody { @for c in confirmations { tr {
                        td { (c["asked_at"].as_str().unwrap_or("")) }
                        td.num { (fraction(c["inside"]["failures"].as_i64().unwrap_or(0), c["inside"]["probes"].as_i64().unwrap_or(0))) }
                        td { (pairs(&c["inside"]["vantages"])) }
                        td.num { (fraction(c["outside"]["failures"].as_i64().unwrap_or(0), c["outside"]["probes"].as_i64().unwrap_or(0))) }
                        td { (pairs(&c["outside"]["vantages"])) }
                    } } }
                }
            }
            (super::paths::section(v.paths))
            h2 { "Explanation history" }
            (history_table(v.history))
            p.muted { "As JSON: " code { "curl -H 'Accept: application/json' …/incidents/" (i.id) } }
        },
    )
}

/// `[["east","v1"], …]` as `east/v1, …`.
fn pairs(vantages: &Value) -> String {
    vantages
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some(format!("{}/{}", p.get(0)?.as_str()?, p.get(1)?.as_str()?)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn counts_table(i: &Incident, evidence: &Value) -> Markup {
    let rows = evidence
        .get("counts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    html! {
        table.counts {
            thead { tr {
                th { "" } th { "dimension" } th { "value" } th.num { "failing / probes in it" }
                th.num { "failing / probes elsewhere" } th.num { "failing vantages" } th.num { "p (Holm)" }
            } }
            tbody {
                tr.winner {
                    td { "this incident" } td { (dimension_label(&i.dimension)) }
                    td { code { (i.narrowed_value.as_deref().unwrap_or(&i.value)) } }
                    td.num { (fraction(i.segment_failures, i.segment_probes)) }
                    td.num { (fraction(i.rest_failures, i.rest_probes)) }
                    td.num { (i.failing_vantages) }
                    td.num { (i.p_value.map_or("–".into(), |p| format!("{p:.2e}"))) }
                }
                @for r in &rows {
                    tr {
                        td.muted { (r["role"].as_str().unwrap_or("")) }
                        td { (dimension_label(r["dimension"].as_str().unwrap_or(""))) }
                        td { code { (r["value"].as_str().unwrap_or("")) } }
                        td.num { (fraction(n(&r["failures"]), n(&r["probes"]))) }
                        td.num { (fraction(n(&r["rest_failures"]), n(&r["rest_probes"]))) }
                        td.num { (n(&r["vantages"])) }
                        td.num { (r["p_value"].as_f64().map_or("–".into(), |p| format!("{p:.2e}"))) }
                    }
                }
            }
        }
    }
}

fn rounds_table(rounds: &[Round]) -> Markup {
    html! {
        details {
            summary { "The rounds as numbers" }
            table.rounds {
                thead { tr { th { "round" } th.num { "in the segment" } th.num { "everywhere else" } } }
                tbody { @for r in rounds { tr {
                    td { (time(r.start)) }
                    td.num { (fraction(r.segment.0, r.segment.1)) }
                    td.num { (fraction(r.rest.0, r.rest.1)) }
                } } }
            }
        }
    }
}

fn samples_table(samples: &[ResultPath]) -> Markup {
    let scale = samples.iter().filter_map(|s| s.total_us).max().unwrap_or(1);
    html! {
        @if samples.is_empty() { p.muted { "No sample is stored any more (its raw partition was dropped)." } }
        @else {
            table.samples {
                thead { tr {
                    th { "probe" } th { "vantage" } th { "region" } th { "egress" } th { "resolver → answer" }
                    th { "dialled" } th { "result" } th { "gateway · edge" } th { "phases" }
                } }
                tbody { @for s in samples { tr {
                    td { (time(s.started_at)) br; span.muted { "seq " (s.seq) } }
                    td { (s.agent_id) "/" (s.vantage) @if let Some(p) = &s.proxy { br; span.muted { "via " (p) } } }
                    td { (s.region) }
                    td { code { (s.egress_ip.as_deref().unwrap_or("–")) } }
                    td { code { (s.resolver.as_deref().unwrap_or("–")) } " → " code { (if s.resolved.is_empty() { "–".into() } else { s.resolved.join(", ") }) } }
                    td { code { (s.dialed.as_deref().unwrap_or("–")) } }
                    td {
                        @if let Some(status) = s.http_status { strong { (status) } " " }
                        (s.outcome)
                        @if !s.message.is_empty() { br; span.muted { (s.message) } }
                    }
                    td { (s.gateway.as_deref().unwrap_or("–")) " · " (s.edge_location.as_deref().unwrap_or("–")) }
                    td {
                        (plot::waterfall(&[("dns", s.dns_us), ("connect", s.connect_us), ("proxy", s.proxy_us),
                                           ("tls", s.tls_us), ("ttfb", s.ttfb_us)], s.total_us, scale))
                        br; span.muted { (s.total_us.map_or("–".into(), plot::ms)) }
                    }
                } } }
            }
        }
    }
}

fn history_table(history: &[Value]) -> Markup {
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    html! {
        table.history {
            thead { tr { th { "version" } th { "explained" } th { "where" } th { "explanation" } th.num { "segment" } th.num { "elsewhere" } } }
            tbody { @for h in history { tr {
                td { (n(&h["version"])) }
                td { (h["explained_at"].as_str().unwrap_or("")) }
                td { (dimension_label(h["dimension"].as_str().unwrap_or(""))) " " code { (h["narrowed_value"].as_str().or(h["value"].as_str()).unwrap_or("")) } }
                td { (h["explanation"].as_str().unwrap_or("")) }
                td.num { (fraction(n(&h["segment_failures"]), n(&h["segment_probes"]))) }
                td.num { (fraction(n(&h["rest_failures"]), n(&h["rest_probes"]))) }
            } } }
        }
    }
}

/// `/vantages`.
/// Which page of a listing is shown.
#[derive(Debug, Clone, Copy)]
pub struct Paged {
    /// From 1.
    pub page: i64,
    pub per_page: i64,
    /// Rows in all.
    pub total: i64,
}

impl Paged {
    fn last_page(&self) -> i64 {
        ((self.total + self.per_page - 1) / self.per_page).max(1)
    }
}

pub fn vantages(rows: &[VantageRow], paged: Paged, now: DateTime<Utc>) -> Markup {
    let first = (paged.page - 1) * paged.per_page + 1;
    layout(
        "Vantages",
        html! {
            h1 { "Vantages" }
            p.muted { "Every enrolled agent, and each vantage it probed from in the last 15 minutes, the failing first." }
            p.paging {
                @if rows.is_empty() { "No rows on page " (paged.page) " of " (paged.last_page()) ". " }
                @else { "Rows " (first) "–" (first + rows.len() as i64 - 1) " of " (paged.total) ". " }
                @if paged.page > 1 { a href={ "?page=" (paged.page - 1) } { "previous" } " " }
                @if paged.page < paged.last_page() { a href={ "?page=" (paged.page + 1) } { "next" } }
            }
            table.vantages {
                thead { tr {
                    th { "agent" } th { "vantage" } th { "region" } th { "stream last seen" } th { "last result" }
                    th.num { "delivery delay (spool backlog)" } th.num { "failing now" } th.num { "failed, last 5 min" }
                    th.num { "lost, last day" } th.num { "central checks" }
                } }
                tbody { @for r in rows { tr {
                    td { (r.agent_id) }
                    td { (r.vantage.as_deref().unwrap_or("–")) }
                    td { (r.region) }
                    td title=(time(r.last_seen)) { (ago(r.last_seen, now)) }
                    td { @if let Some(t) = r.last_result_at { span title=(time(t)) { (ago(t, now)) } } @else { "none in 15 min" } }
                    td.num { (r.delivery_delay_s.map_or("–".into(), |s| format!("{s:.1} s"))) }
                    td.num { @if r.failing_checks > 0 { strong { (r.failing_checks) } } @else { "0" } " of " (r.checks) " checks" }
                    td.num { (fraction(r.failures, r.probes)) }
                    td.num { (r.lost_last_day) }
                    td.num {
                        (r.central_running) " run"
                        @if r.central_refused > 0 {
                            ", " strong title=(r.central_refusals.as_deref().unwrap_or("")) { (r.central_refused) " refused" }
                            div.muted { (r.central_refusals.as_deref().unwrap_or("")) }
                        }
                    }
                } } }
            }
        },
    )
}
