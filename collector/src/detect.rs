//! The detector: finds 502 patterns specific to one region or one egress
//! prefix, and global 502 outages, and keeps the `incidents` table current.
//!
//! The decision is a pure function over counts ([`segment_failing`],
//! [`global_failing`]) so the statistics can be made rigorous without
//! touching the I/O around them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::{NewIncident, SegmentCounts, Store, StoreError};

/// 502s out of probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub status_502: u64,
    pub probes: u64,
}

impl Counts {
    pub fn rate(self) -> f64 {
        if self.probes == 0 {
            0.0
        } else {
            self.status_502 as f64 / self.probes as f64
        }
    }

    fn minus(self, other: Counts) -> Counts {
        Counts {
            status_502: self.status_502.saturating_sub(other.status_502),
            probes: self.probes.saturating_sub(other.probes),
        }
    }
}

/// Thresholds of the decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Fewer probes than this in a segment (or in the rest) decide nothing.
    pub min_probes: u64,
    /// A segment whose 502 rate reaches this is failing.
    pub open_rate: f64,
    /// The rest counts as healthy at or below this 502 rate.
    pub healthy_rate: f64,
    /// An open incident resolves once its rate falls below this (hysteresis:
    /// below `open_rate`, so a rate hovering at the threshold does not flap).
    pub close_rate: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            min_probes: 5,
            open_rate: 0.5,
            healthy_rate: 0.05,
            close_rate: 0.1,
        }
    }
}

/// Whether a segment (one value of one dimension) has a 502 pattern of its
/// own: it fails while everything else is healthy. `is_open` says whether
/// an incident for it is open already, which applies the hysteresis.
pub fn segment_failing(segment: Counts, rest: Counts, t: &Thresholds, is_open: bool) -> bool {
    if is_open {
        return segment.probes > 0 && segment.rate() >= t.close_rate;
    }
    segment.probes >= t.min_probes
        && segment.rate() >= t.open_rate
        && rest.probes >= t.min_probes
        && rest.rate() <= t.healthy_rate
}

/// Whether a target has a global 502 outage: every region that probed it
/// has enough probes and a high 502 rate. A region with too few probes
/// defers the verdict (at start-up, the first region to report must not be
/// mistaken for everyone).
pub fn global_failing(all: Counts, regions: &[Counts], t: &Thresholds, is_open: bool) -> bool {
    if is_open {
        return all.probes > 0 && all.rate() >= t.close_rate;
    }
    all.probes >= t.min_probes
        && all.rate() >= t.open_rate
        && regions
            .iter()
            .all(|r| r.probes >= t.min_probes && r.rate() >= t.open_rate)
}

/// Dimensions in which a segment-specific pattern is looked for.
pub const DIMENSIONS: &[&str] = &["region", "egress_prefix"];

/// Periodically evaluates the window and opens, refreshes and resolves
/// incidents.
pub struct Detector {
    store: Arc<Store>,
    interval: Duration,
    window: Duration,
    thresholds: Thresholds,
    /// Woken when an incident opened or resolved, for the alerter.
    changed: Arc<Notify>,
}

/// One evaluation's verdict for one (target, dimension, value).
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    target: String,
    kind: &'static str,
    dimension: String,
    value: String,
    failing: bool,
    segment: Counts,
    rest: Counts,
}

impl Detector {
    pub fn new(
        store: Arc<Store>,
        interval: Duration,
        window: Duration,
        thresholds: Thresholds,
        changed: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            interval,
            window,
            thresholds,
            changed,
        }
    }

    /// Evaluates every `interval` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(error) = self.evaluate().await {
                tracing::warn!(%error, "Detection pass failed; retrying next interval.");
            }
        }
    }

    /// One pass: counts → verdicts → incident table.
    pub async fn evaluate(&self) -> Result<(), StoreError> {
        let counts = self.store.segment_counts(self.window).await?;
        let open = self.store.open_incidents().await?;
        let open_by_key: HashMap<(String, String, String), i64> = open
            .iter()
            .map(|i| {
                (
                    (i.target.clone(), i.dimension.clone(), i.value.clone()),
                    i.id,
                )
            })
            .collect();
        let verdicts = verdicts(&counts, &self.thresholds, |t, d, v| {
            open_by_key.contains_key(&(t.to_owned(), d.to_owned(), v.to_owned()))
        });
        let window_seconds = i32::try_from(self.window.as_secs()).unwrap_or(i32::MAX);
        let mut changed = false;
        let mut seen = std::collections::HashSet::new();
        for v in &verdicts {
            let key = (v.target.clone(), v.dimension.clone(), v.value.clone());
            seen.insert(key.clone());
            let counts = [
                to_i64(v.segment.status_502),
                to_i64(v.segment.probes),
                to_i64(v.rest.status_502),
                to_i64(v.rest.probes),
            ];
            match (open_by_key.get(&key), v.failing) {
                (None, true) => {
                    let new = NewIncident {
                        target: &v.target,
                        kind: v.kind,
                        dimension: &v.dimension,
                        value: &v.value,
                        counts,
                        window_seconds,
                    };
                    if let Some(id) = self.store.open_incident(&new).await? {
                        tracing::warn!(
                            id, target = %v.target, dimension = %v.dimension, value = %v.value,
                            segment_502 = counts[0], segment_probes = counts[1],
                            rest_502 = counts[2], rest_probes = counts[3],
                            "Incident opened."
                        );
                        changed = true;
                    }
                }
                (Some(id), true) => self.store.touch_incident(*id, counts).await?,
                (Some(id), false) => {
                    self.store.resolve_incident(*id).await?;
                    tracing::info!(id, target = %v.target, dimension = %v.dimension, value = %v.value, "Incident resolved.");
                    changed = true;
                }
                (None, false) => {}
            }
        }
        // Open incidents whose segment had no probe at all in the window:
        // nothing says they still fail.
        for incident in open {
            let key = (incident.target, incident.dimension, incident.value);
            if !seen.contains(&key) {
                self.store.resolve_incident(incident.id).await?;
                tracing::info!(id = incident.id, target = %key.0, "Incident resolved: no probes in the window.");
                changed = true;
            }
        }
        if changed {
            self.changed.notify_one();
        }
        Ok(())
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Applies the decision to every segment of every target.
fn verdicts(
    counts: &[SegmentCounts],
    t: &Thresholds,
    is_open: impl Fn(&str, &str, &str) -> bool,
) -> Vec<Verdict> {
    let mut totals: HashMap<&str, Counts> = HashMap::new();
    let mut regions: HashMap<&str, Vec<Counts>> = HashMap::new();
    for c in counts {
        let n = Counts {
            status_502: c.status_502,
            probes: c.probes,
        };
        match c.dimension.as_str() {
            "all" => {
                totals.insert(&c.target, n);
            }
            "region" => regions.entry(&c.target).or_default().push(n),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (target, all) in &totals {
        let open = is_open(target, "global", "*");
        let region_counts = regions.get(target).map_or(&[][..], Vec::as_slice);
        out.push(Verdict {
            target: (*target).to_owned(),
            kind: "global",
            dimension: "global".into(),
            value: "*".into(),
            failing: global_failing(*all, region_counts, t, open),
            segment: *all,
            rest: Counts::default(),
        });
    }
    for c in counts
        .iter()
        .filter(|c| DIMENSIONS.contains(&c.dimension.as_str()))
    {
        let Some(all) = totals.get(c.target.as_str()) else {
            continue;
        };
        let segment = Counts {
            status_502: c.status_502,
            probes: c.probes,
        };
        let rest = all.minus(segment);
        let open = is_open(&c.target, &c.dimension, &c.value);
        out.push(Verdict {
            target: c.target.clone(),
            kind: "segment",
            dimension: c.dimension.clone(),
            value: c.value.clone(),
            failing: segment_failing(segment, rest, t, open),
            segment,
            rest,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(status_502: u64, probes: u64) -> Counts {
        Counts { status_502, probes }
    }

    #[test]
    fn one_failing_region_with_healthy_rest_is_a_segment_pattern() {
        let t = Thresholds::default();
        assert!(segment_failing(c(41, 43), c(0, 380), &t, false));
    }

    #[test]
    fn failing_everywhere_is_not_a_segment_pattern_but_global() {
        let t = Thresholds::default();
        assert!(!segment_failing(c(40, 40), c(80, 80), &t, false));
        assert!(global_failing(
            c(120, 120),
            &[c(40, 40), c(80, 80)],
            &t,
            false
        ));
    }

    #[test]
    fn one_healthy_region_rules_out_global() {
        let t = Thresholds::default();
        assert!(!global_failing(
            c(80, 120),
            &[c(0, 40), c(80, 80)],
            &t,
            false
        ));
    }

    #[test]
    fn region_without_enough_probes_defers_global() {
        let t = Thresholds::default();
        assert!(!global_failing(c(40, 42), &[c(40, 40), c(0, 2)], &t, false));
    }

    #[test]
    fn too_few_probes_decide_nothing() {
        let t = Thresholds::default();
        assert!(!segment_failing(c(2, 2), c(0, 100), &t, false));
        assert!(!segment_failing(c(20, 20), c(0, 2), &t, false));
    }

    #[test]
    fn open_incident_stays_open_between_close_and_open_rate() {
        let t = Thresholds::default();
        assert!(segment_failing(c(3, 10), c(0, 100), &t, true));
        assert!(!segment_failing(c(3, 10), c(0, 100), &t, false));
        assert!(!segment_failing(c(0, 10), c(0, 100), &t, true));
    }

    #[test]
    fn verdicts_name_the_failing_prefix_and_region() {
        let seg = |d: &str, v: &str, bad, total| SegmentCounts {
            target: "http://shop.test/".into(),
            dimension: d.into(),
            value: v.into(),
            status_502: bad,
            probes: total,
        };
        let counts = vec![
            seg("all", "*", 20, 60),
            seg("region", "eu", 20, 20),
            seg("region", "us", 0, 40),
            seg("egress_prefix", "127.0.2.0/24", 20, 20),
            seg("egress_prefix", "127.0.1.0/24", 0, 40),
        ];
        let v = verdicts(&counts, &Thresholds::default(), |_, _, _| false);
        let failing: Vec<(&str, &str)> = v
            .iter()
            .filter(|v| v.failing)
            .map(|v| (v.dimension.as_str(), v.value.as_str()))
            .collect();
        assert_eq!(failing.len(), 2, "{failing:?}");
        assert!(failing.contains(&("region", "eu")));
        assert!(failing.contains(&("egress_prefix", "127.0.2.0/24")));
    }

    proptest! {
        #[test]
        fn a_segment_and_its_rest_never_both_open(a in 0u64..200, b in 0u64..200, x in 0u64..200, y in 0u64..200) {
            let (seg, rest) = (c(a.min(b), b), c(x.min(y), y));
            let t = Thresholds::default();
            prop_assert!(!(segment_failing(seg, rest, &t, false) && segment_failing(rest, seg, &t, false)));
        }

        #[test]
        fn opening_implies_staying_open(bad in 0u64..200, probes in 1u64..200, rest_probes in 0u64..400) {
            let t = Thresholds::default();
            let seg = c(bad.min(probes), probes);
            if segment_failing(seg, c(0, rest_probes), &t, false) {
                prop_assert!(segment_failing(seg, c(0, rest_probes), &t, true));
            }
        }
    }
}
