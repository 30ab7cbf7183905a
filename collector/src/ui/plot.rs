//! The pages' plots, as inline SVG (no script, no external file): an
//! incident's failure rate per round inside its segment and outside, and
//! a probe's phases as a waterfall.

use chrono::{DateTime, Utc};
use maud::{Markup, html};

/// One round of an incident's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    pub start: DateTime<Utc>,
    pub segment: (i64, i64),
    pub rest: (i64, i64),
}

/// Failures over probes, as a fraction; `None` without probes.
pub fn rate((failures, probes): (i64, i64)) -> Option<f64> {
    (probes > 0).then(|| failures as f64 / probes as f64)
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 28.0;

/// The failure rate per round, in the segment (red) and in the rest
/// (grey), 0–100 %, with the incident's opening (and resolution) marked.
pub fn timeline(
    rounds: &[Round],
    opened: DateTime<Utc>,
    resolved: Option<DateTime<Utc>>,
) -> Markup {
    let (Some(first), Some(last)) = (rounds.first(), rounds.last()) else {
        return html! { p.muted { "No probes of these targets are stored for this time." } };
    };
    let t0 = first.start.timestamp_millis() as f64;
    let t1 = (last.start.timestamp_millis() as f64).max(t0 + 1.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |t: DateTime<Utc>| {
        let f = ((t.timestamp_millis() as f64 - t0) / (t1 - t0)).clamp(0.0, 1.0);
        LEFT + f * plot_w
    };
    let y = |r: f64| TOP + (1.0 - r) * plot_h;
    let points = |pick: fn(&Round) -> (i64, i64)| -> String {
        rounds
            .iter()
            .filter_map(|r| rate(pick(r)).map(|v| format!("{:.1},{:.1}", x(r.start), y(v))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let label = |t: DateTime<Utc>| t.format("%H:%M:%S").to_string();
    let marks: Vec<(DateTime<Utc>, &str)> = std::iter::once((opened, "opened"))
        .chain(resolved.map(|r| (r, "resolved")))
        .filter(|(t, _)| *t >= first.start && *t <= last.start)
        .collect();
    html! {
        svg.timeline xmlns="http://www.w3.org/2000/svg" role="img"
            viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } width=(WIDTH) height=(HEIGHT) {
            title { "Failure rate per round: in the segment and everywhere else" }
            @for pct in [0, 50, 100] {
                @let gy = y(f64::from(pct) / 100.0);
                line.grid x1=(LEFT) x2=(WIDTH - RIGHT) y1=(gy) y2=(gy) {}
                text.axis x=(LEFT - 6.0) y=(gy + 4.0) text-anchor="end" { (pct) "%" }
            }
            text.axis x=(LEFT) y=(HEIGHT - 8.0) { (label(first.start)) }
            text.axis x=(WIDTH - RIGHT) y=(HEIGHT - 8.0) text-anchor="end" { (label(last.start)) " UTC" }
            @for (t, what) in &marks {
                line.mark x1=(x(*t)) x2=(x(*t)) y1=(TOP) y2=(TOP + plot_h) {}
                text.axis x=(x(*t) + 4.0) y=(TOP + 12.0) { (what) }
            }
            polyline.rest points=(points(|r| r.rest)) {}
            polyline.segment points=(points(|r| r.segment)) {}
        }
        p.legend {
            span.key.segment-key {} "in the segment "
            span.key.rest-key {} "everywhere else"
        }
    }
}

/// One probe's phases, as a waterfall scaled to `scale_us` (the slowest
/// probe shown beside it, so rows compare): DNS, connect, proxy, TLS, time
/// to first byte, each after the previous; the remainder to the total.
pub fn waterfall(phases: &[(&str, Option<i64>)], total_us: Option<i64>, scale_us: i64) -> Markup {
    const W: f64 = 220.0;
    const H: f64 = 14.0;
    let scale = scale_us.max(1) as f64;
    let mut at = 0i64;
    let mut bars = Vec::new();
    for (name, us) in phases {
        if let Some(us) = us.filter(|us| *us > 0) {
            bars.push((*name, at, us));
            at += us;
        }
    }
    let total = total_us.unwrap_or(at);
    html! {
        svg.waterfall xmlns="http://www.w3.org/2000/svg" role="img"
            viewBox={ "0 0 " (W) " " (H) } width=(W) height=(H) {
            title {
                @for (name, _, us) in &bars { (name) " " (ms(*us)) "; " }
                "total " (ms(total))
            }
            rect.total x="0" y="5" height="4" width=(format!("{:.1}", total as f64 / scale * W)) {}
            @for (name, start, us) in &bars {
                rect class={ "phase " (name) } y="1" height="12"
                    x=(format!("{:.1}", *start as f64 / scale * W))
                    width=(format!("{:.1}", (*us as f64 / scale * W).max(1.0))) {}
            }
        }
    }
}

/// Microseconds as milliseconds, for people.
pub fn ms(us: i64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_need_probes() {
        assert_eq!(rate((3, 4)), Some(0.75));
        assert_eq!(rate((0, 0)), None);
    }

    #[test]
    fn the_timeline_draws_both_lines_within_the_plot() {
        let t = |s: i64| DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let rounds: Vec<Round> = (0..10)
            .map(|i| Round {
                start: t(i * 2),
                segment: (if i >= 5 { 4 } else { 0 }, 4),
                rest: (0, 6),
            })
            .collect();
        let svg = timeline(&rounds, t(12), None).into_string();
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert!(svg.contains(">opened<"), "{svg}");
        // The segment at 100 % from round 5 on: its points sit on the top line.
        assert!(svg.contains(&format!("{:.1}", TOP)), "{svg}");
        let empty = timeline(&[], t(0), None).into_string();
        assert!(empty.contains("No probes"));
    }

    #[test]
    fn the_waterfall_lays_phases_end_to_end() {
        let svg = waterfall(
            &[
                ("dns", Some(1000)),
                ("connect", Some(2000)),
                ("tls", None),
                ("ttfb", Some(1000)),
            ],
            Some(5000),
            10_000,
        )
        .into_string();
        assert!(
            svg.contains(r#"class="phase dns" y="1" height="12" x="0.0" width="22.0""#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"class="phase connect" y="1" height="12" x="22.0" width="44.0""#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"class="phase ttfb" y="1" height="12" x="66.0""#),
            "{svg}"
        );
        assert!(!svg.contains("phase tls"), "{svg}");
    }
}
