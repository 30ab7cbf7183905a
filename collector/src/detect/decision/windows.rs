//! Windows ending now, in probe rounds: the age buckets the window query
//! groups by (powers of two of rounds), the windows tested, and how many
//! rounds a bucket spans.

use super::Window;

/// The bucket boundaries, in rounds of age, for windows up to
/// `max_rounds`: 1, 2, 4, 8, ... (each below `max_rounds`). Bucket 0 holds
/// the last round, bucket `i` ages `[t[i-1], t[i])`, the last bucket
/// everything older (PostgreSQL's `width_bucket` over these thresholds).
pub fn bucket_thresholds(max_rounds: u32) -> Vec<u32> {
    std::iter::successors(Some(1u32), |t| t.checked_mul(2))
        .take_while(|t| *t < max_rounds)
        .collect()
}

/// The windows of a target whose detection window holds `rounds` rounds:
/// the last 2, 4, 8, ... rounds (fewer than `rounds`), then all of it.
pub fn windows_for(rounds: u32) -> Vec<Window> {
    let rounds = rounds.max(1);
    // No window of one round: an incident opens only on failures seen in
    // two rounds or more, so a one-round test could only add to the
    // multiple-testing family.
    let mut out: Vec<Window> = bucket_thresholds(rounds)
        .into_iter()
        .enumerate()
        .filter(|(_, t)| *t >= 2)
        .map(|(i, t)| Window {
            buckets: i + 1,
            rounds: t,
        })
        .collect();
    out.push(Window {
        buckets: usize::MAX,
        rounds,
    });
    out
}

/// The rounds bucket `b` spans in a window of `window_rounds`: 1 for the
/// last round, then 1, 2, 4... (the last bucket, holding everything older,
/// ends with the window).
pub fn bucket_width(b: usize, window_rounds: u32) -> u32 {
    let (start, nominal) = match b {
        0 => (0, 1),
        b => {
            let w = 1u32
                .checked_shl(u32::try_from(b - 1).unwrap_or(u32::MAX))
                .unwrap_or(u32::MAX);
            (w, w)
        }
    };
    nominal.min(window_rounds.saturating_sub(start)).max(1)
}

/// The bucket of a probe `age` rounds old (see [`bucket_thresholds`]).
pub fn bucket_of(age: u32, thresholds: &[u32]) -> usize {
    thresholds.iter().take_while(|t| **t <= age).count()
}
