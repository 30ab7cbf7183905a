//! The counts table of an incident's evidence: the rows an on-call
//! engineer checks the explanation against.

use serde_json::{Value, json};

use crate::detect::decision::Assessment;
use crate::detect::dimensions::{DIMENSIONS, Role};

/// The counts table of an incident's evidence: every value of the winning
/// dimension (most failures first, at most 10), then the runners-up of the
/// other cause dimensions (best explanation score first, at most 5).
pub fn counts_table(a: &Assessment, winner: Option<usize>) -> Vec<Value> {
    let row = |i: usize, role: &str| {
        let s = &a.segments[i];
        json!({
            "role": role,
            "dimension": DIMENSIONS[s.dimension].name,
            "value": s.value,
            "probes": s.segment.probes,
            "failures": s.segment.failures,
            "rest_probes": s.rest.probes,
            "rest_failures": s.rest.failures,
            "vantages": s.failing_vantages,
            "p_value": s.p_value,
            "flagged": s.flagged,
        })
    };
    let mut out = Vec::new();
    let winning_dimension = winner.map(|w| a.segments[w].dimension);
    // The whole population's segments, the winner as its finding tested
    // it (a later cause's lead is tested on the residual) instead of the
    // same value's base row.
    let winning_value = winner.map(|w| a.segments[w].value.as_str());
    let rows: Vec<usize> = (0..a.base_segments)
        .filter(|i| {
            winner.is_none_or(|w| *i == w || w < a.base_segments)
                || (
                    Some(a.segments[*i].dimension),
                    Some(a.segments[*i].value.as_str()),
                ) != (winning_dimension, winning_value)
        })
        .chain(winner.filter(|w| *w >= a.base_segments))
        .collect();
    if let Some(d) = winning_dimension {
        let mut same: Vec<usize> = rows
            .iter()
            .copied()
            .filter(|i| a.segments[*i].dimension == d)
            .collect();
        same.sort_by(|x, y| {
            a.segments[*y]
                .segment
                .failures
                .cmp(&a.segments[*x].segment.failures)
        });
        for i in same.into_iter().take(10) {
            out.push(row(
                i,
                if Some(i) == winner {
                    "winner"
                } else {
                    "same dimension"
                },
            ));
        }
    }
    let mut others: Vec<usize> = rows
        .iter()
        .copied()
        .filter(|i| {
            let s = &a.segments[*i];
            Some(s.dimension) != winning_dimension
                && DIMENSIONS[s.dimension].role == Role::Cause
                && s.segment.failures > 0
        })
        .collect();
    others.sort_by(|x, y| {
        a.segments[*y]
            .score(&a.totals)
            .total_cmp(&a.segments[*x].score(&a.totals))
    });
    for i in others.into_iter().take(5) {
        out.push(row(i, "runner-up"));
    }
    out
}
