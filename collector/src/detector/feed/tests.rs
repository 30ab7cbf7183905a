//! The feed's bookkeeping: when a batch counts, when it is read back.

use super::*;
use vantage_proto::v1 as pb;

fn results(n: u64) -> Vec<StoredResult> {
    let now = Utc::now();
    (1..=n)
        .map(|seq| {
            let r = pb::ProbeResult {
                seq,
                started_at: Some(prost_types::Timestamp {
                    seconds: now.timestamp(),
                    nanos: 0,
                }),
                check: "c".into(),
                url: "http://t/".into(),
                outcome: pb::Outcome::Ok as i32,
                http_status: Some(200),
                ..Default::default()
            };
            crate::wire::stored_result(r, [127, 0, 0, 1].into()).unwrap()
        })
        .collect()
}

fn probes(rows: &[SlotRow]) -> i64 {
    rows.iter().map(|r| r.counts.probes).sum()
}

#[test]
fn a_batch_counts_once_its_transaction_shows_committed_and_not_before() {
    let feed = Arc::new(Feed::default());
    feed.start(&super::super::dimensions::sources(), 30_000);
    let batch = results(5);
    let mut ticket = feed.prepare("a", "eu", &batch).unwrap();
    ticket.register(100);
    assert_eq!(feed.excluded().xids, vec![100]);
    // Registered, not yet handed over: left out, not counted.
    assert!(
        feed.take_visible("101:101:", &[], DateTime::UNIX_EPOCH)
            .is_empty()
    );
    ticket.committed();
    // A snapshot taken before it committed does not count it...
    assert!(
        feed.take_visible("100:101:100", &[], DateTime::UNIX_EPOCH)
            .is_empty()
    );
    assert!(
        feed.take_visible("90:95:", &[], DateTime::UNIX_EPOCH)
            .is_empty()
    );
    assert_eq!(feed.pending(), 1);
    // ...the next one does, once.
    assert_eq!(
        probes(&feed.take_visible("101:101:", &[], DateTime::UNIX_EPOCH)),
        5
    );
    assert!(
        feed.take_visible("101:101:", &[], DateTime::UNIX_EPOCH)
            .is_empty()
    );
    assert_eq!(feed.pending(), 0);
    assert!(feed.excluded().xids.is_empty());
}

#[test]
fn a_batch_across_the_windows_start_is_read_back_and_one_before_it_dropped() {
    let feed = Arc::new(Feed::default());
    feed.start(&super::super::dimensions::sources(), 30_000);
    let mut batch = results(4);
    let now = batch[0].started_at;
    batch[0].started_at = now - chrono::Duration::seconds(400);
    let mut across = feed.prepare("a", "eu", &batch).unwrap();
    across.register(20);
    across.committed();
    let mut inside = feed.prepare("a", "eu", &results(2)).unwrap();
    inside.register(21);
    inside.committed();
    let start = now - chrono::Duration::seconds(300);
    assert_eq!(probes(&feed.take_visible("22:22:", &[], start)), 2);
    assert_eq!(feed.excluded().read_back, vec![20]);
    // Wholly before a later window's start: nothing to count.
    let mut old = feed.prepare("a", "eu", &results(2)).unwrap();
    old.register(23);
    old.committed();
    let later = now + chrono::Duration::seconds(1);
    assert!(feed.take_visible("24:24:", &[20], later).is_empty());
    let excluded = feed.excluded();
    assert!(excluded.xids.is_empty() && excluded.read_back.is_empty());
}

#[test]
fn an_unknown_commit_is_read_back_and_a_restart_forgets_the_old_tickets() {
    let feed = Arc::new(Feed::default());
    let sources = super::super::dimensions::sources();
    feed.start(&sources, 30_000);
    let batch = results(3);
    let mut lost = feed.prepare("a", "eu", &batch).unwrap();
    lost.register(7);
    drop(lost);
    let excluded = feed.excluded();
    assert_eq!(
        (excluded.xids, excluded.read_back.clone()),
        (vec![7], vec![7])
    );
    assert!(
        feed.take_visible("8:8:", &excluded.read_back, DateTime::UNIX_EPOCH)
            .is_empty()
    );
    assert!(feed.excluded().xids.is_empty());

    // A ticket from before a restart registers nothing.
    let mut old = feed.prepare("a", "eu", &batch).unwrap();
    feed.start(&sources, 30_000);
    old.register(9);
    old.committed();
    assert!(feed.excluded().xids.is_empty());
    assert!(
        feed.take_visible("10:10:", &[], DateTime::UNIX_EPOCH)
            .is_empty()
    );
}
