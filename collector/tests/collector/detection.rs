//! Detection scenarios over generated result sets: rows written straight
//! into a real PostgreSQL, the real detector's passes over them, and the
//! incidents an operator would read in `v_incidents`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::Notify;
use vantage_collector::detect::DetectorSettings;
use vantage_collector::detect::lifecycle::Hysteresis;
use vantage_collector::detector::{Detector, PassSummary};
use vantage_collector::store::Store;

const TARGET: &str = "http://shop.test/";
const WINDOW: Duration = Duration::from_secs(300);

/// One vantage point of a generated fleet.
#[derive(Debug, Clone)]
struct Vantage {
    agent: String,
    region: String,
    egress: IpAddr,
    resolver: String,
    resolver_egress: IpAddr,
}

fn vantage(agent: &str, region: &str, egress: &str, resolver: &str) -> Vantage {
    Vantage {
        agent: agent.into(),
        region: region.into(),
        egress: egress.parse().unwrap(),
        resolver: format!("udp://{resolver}:53"),
        // Each resolver leaves from its own address, as the agents learn it.
        resolver_egress: resolver.replace("127.0.0.", "127.0.9.").parse().unwrap(),
    }
}

/// What one probe got.
#[derive(Debug, Clone)]
struct Outcome {
    dialed: IpAddr,
    status: Option<i16>,
    outcome: &'static str,
}

fn http(dialed: &str, status: i16) -> Outcome {
    Outcome {
        dialed: dialed.parse().unwrap(),
        status: Some(status),
        outcome: if status >= 400 { "http" } else { "ok" },
    }
}

const GOOD: &str = "127.0.0.10";

/// Writes `per_vantage` probes for every vantage, evenly spread over the
/// window ending at `end`; `decide(vantage, i)` says what probe `i` got.
async fn write_probes(
    pool: &PgPool,
    fleet: &[Vantage],
    per_vantage: usize,
    end: DateTime<Utc>,
    decide: impl FnMut(&Vantage, usize) -> Outcome,
) {
    write_probes_over(pool, fleet, per_vantage, end, WINDOW, decide).await;
}

/// [`write_probes`] over `span` instead of the default window.
async fn write_probes_over(
    pool: &PgPool,
    fleet: &[Vantage],
    per_vantage: usize,
    end: DateTime<Utc>,
    span: Duration,
    decide: impl FnMut(&Vantage, usize) -> Outcome,
) {
    write_probes_of(pool, TARGET, fleet, per_vantage, end, span, decide).await;
}

/// [`write_probes_over`] for another target (check `shop` still).
async fn write_probes_of(
    pool: &PgPool,
    target: &str,
    fleet: &[Vantage],
    per_vantage: usize,
    end: DateTime<Utc>,
    span: Duration,
    mut decide: impl FnMut(&Vantage, usize) -> Outcome,
) {
    let mut cols: HashMap<&str, Vec<Option<String>>> = HashMap::new();
    let mut seqs = Vec::new();
    let mut times = Vec::new();
    let mut statuses = Vec::new();
    let step = span.as_secs_f64() / (per_vantage as f64 + 1.0);
    // One probe per vantage per round: the round is the spacing.
    let interval_ms = (step * 1000.0) as i32;
    for v in fleet {
        for i in 0..per_vantage {
            let o = decide(v, i);
            let at =
                end - chrono::Duration::milliseconds(((i as f64 + 0.5) * step * 1000.0) as i64);
            // Unique per target too: several targets share the agents.
            seqs.push(at.timestamp_micros() * 4 + i64::from(target != TARGET));
            times.push(at);
            statuses.push(o.status);
            let mut push =
                |k: &'static str, val: Option<String>| cols.entry(k).or_default().push(val);
            push("agent", Some(v.agent.clone()));
            push("region", Some(v.region.clone()));
            push("outcome", Some(o.outcome.into()));
            push("resolver", Some(v.resolver.clone()));
            push("resolver_egress", Some(v.resolver_egress.to_string()));
            push("dialed", Some(o.dialed.to_string()));
            push("local", Some(v.egress.to_string()));
            push("gateway", (o.status == Some(502)).then(|| "nginx".into()));
            push("version", o.status.map(|_| "HTTP/1.1".into()));
        }
    }
    let col = |k: &str| cols.get(k).cloned().unwrap_or_default();
    let seq_list = seqs.clone();
    sqlx::query(
        "INSERT INTO probe_results (agent_id, seq, started_at, region, check_name, url, method,
                                    outcome, http_status, resolver, resolver_egress_ip, dialed_ip,
                                    local_ip, gateway, http_version, interval_ms)
         SELECT a, s, t, r, 'shop', $1, 'GET', o, st, res, re::inet, d::inet, l::inet, g, v, $14
         FROM UNNEST($2::text[], $3::int8[], $4::timestamptz[], $5::text[], $6::text[],
                     $7::int2[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                     $13::text[])
              AS x(a, s, t, r, o, st, res, re, d, l, g, v)",
    )
    .bind(target)
    .bind(col("agent"))
    .bind(&seqs)
    .bind(times)
    .bind(col("region"))
    .bind(col("outcome"))
    .bind(statuses)
    .bind(col("resolver"))
    .bind(col("resolver_egress"))
    .bind(col("dialed"))
    .bind(col("local"))
    .bind(col("gateway"))
    .bind(col("version"))
    .bind(interval_ms)
    .execute(pool)
    .await
    .unwrap();
    let agents: Vec<String> = col("agent").into_iter().flatten().collect();
    crate::cells_sql::write_cells_of(pool, crate::cells_sql::StoredRows::Of(&agents, &seq_list))
        .await;
}

/// A detector over a migrated database with partitions around `now`.
async fn detector(pool: &PgPool, settings: DetectorSettings) -> (Arc<Store>, Detector) {
    let store = Arc::new(Store::new(pool.clone()));
    store.migrate().await.unwrap();
    store
        .ensure_partitions_around(Utc::now(), 2, 1)
        .await
        .unwrap();
    let detector = Detector::new(store.clone(), settings, Arc::new(Notify::new()));
    (store, detector)
}

fn settings() -> DetectorSettings {
    DetectorSettings {
        window: WINDOW,
        hysteresis: Hysteresis {
            open_after: 2,
            resolve_after: 3,
            resolve_quiet: Duration::from_secs(60),
            update_after: 2,
            reopen_within: Duration::from_secs(120),
        },
        ..DetectorSettings::default()
    }
}

/// Two passes 15 s apart, the second at `end`; what both opened,
/// re-explained and resolved (an incident opens at the second pass that
/// holds).
async fn two_passes(d: &Detector, end: DateTime<Utc>) -> PassSummary {
    let first = d
        .evaluate_at(end - chrono::Duration::seconds(15))
        .await
        .unwrap();
    let mut second = d.evaluate_at(end).await.unwrap();
    assert!(
        first.ran && second.ran,
        "the test's detector holds the lease"
    );
    second.opened.splice(0..0, first.opened);
    second.updated.splice(0..0, first.updated);
    second.resolved.splice(0..0, first.resolved);
    second
}

/// The usual scenario: the default fleet with `per_vantage` probes each in
/// the window ending now, then two passes of a detector with the default
/// test settings.
async fn detect_over_fleet(
    pool: &PgPool,
    per_vantage: usize,
    decide: impl FnMut(&Vantage, usize) -> Outcome,
) -> PassSummary {
    let (_, d) = detector(pool, settings()).await;
    let now = Utc::now();
    write_probes(pool, &fleet(), per_vantage, now, decide).await;
    two_passes(&d, now).await
}

/// (kind, pattern, dimension, value, narrowed_value, correlated, explanation)
type IncidentRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Value,
    String,
);

async fn incidents(pool: &PgPool) -> Vec<IncidentRow> {
    sqlx::query_as(
        "SELECT kind, pattern, dimension, value, narrowed_value, correlated, explanation
         FROM v_incidents ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

fn correlated(row: &IncidentRow) -> Vec<(String, String)> {
    row.5
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["dimension"].as_str().unwrap().to_owned(),
                c["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// eu: three agents on 127.10.1.0/24 and three on 127.10.2.0/24; us:
/// three on 127.20.1.0/24 and three on 127.20.2.0/24. Resolvers alternate.
fn fleet() -> Vec<Vantage> {
    let mut out = Vec::new();
    for (region, nets) in [
        ("eu", ["127.10.1", "127.10.2"]),
        ("us", ["127.20.1", "127.20.2"]),
    ] {
        for net in nets {
            for host in 1..=3 {
                let resolver = if host % 2 == 0 {
                    "127.0.0.53"
                } else {
                    "127.0.0.54"
                };
                out.push(vantage(
                    &format!("{region}-{net}.{host}"),
                    region,
                    &format!("{net}.{host}"),
                    resolver,
                ));
            }
        }
    }
    out
}

/// Every vantage on 127.10.1.0/24 (in region eu, whose other /24 is
/// healthy) gets 502.
fn one_failing_slash_24(v: &Vantage, _: usize) -> Outcome {
    let failing = v.egress.to_string().starts_with("127.10.1.");
    http(GOOD, if failing { 502 } else { 200 })
}

#[sqlx::test(migrations = false)]
async fn one_failing_slash_24_inside_a_healthy_region_is_the_prefix(pool: PgPool) {
    let summary = detect_over_fleet(&pool, 20, one_failing_slash_24).await;
    assert_eq!(summary.opened.len(), 1, "{summary:?}");
    let rows = incidents(&pool).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let row = &rows[0];
    assert_eq!(
        (
            row.0.as_str(),
            row.1.as_str(),
            row.2.as_str(),
            row.3.as_str()
        ),
        ("segment", "status", "egress_prefix", "127.10.1.0/24")
    );
    // Agents .1, .2, .3: the narrowest prefix covering all three.
    assert_eq!(row.4.as_deref(), Some("127.10.1.0/30"));
    assert!(
        correlated(row).contains(&("region".into(), "eu".into())),
        "{row:#?}"
    );
    assert!(
        row.6.starts_with(
            "60 of 60 probes of http://shop.test/ from egress prefix 127.10.1.0/24 got 502 in \
             the whole window (5m); 0 of 180 from everywhere else"
        ),
        "{}",
        row.6
    );
    assert!(
        row.6.contains("All failing probes also share region eu"),
        "{}",
        row.6
    );
}

#[sqlx::test(migrations = false)]
async fn a_whole_region_across_prefixes_is_the_region(pool: PgPool) {
    detect_over_fleet(&pool, 20, |v, _| {
        http(GOOD, if v.region == "eu" { 502 } else { 200 })
    })
    .await;
    let rows = incidents(&pool).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!((rows[0].2.as_str(), rows[0].3.as_str()), ("region", "eu"));
    let corr = correlated(&rows[0]);
    assert!(
        corr.contains(&("egress_prefix".into(), "127.10.1.0/24".into())),
        "{corr:?}"
    );
    assert!(
        corr.contains(&("egress_prefix".into(), "127.10.2.0/24".into())),
        "{corr:?}"
    );
}

#[sqlx::test(migrations = false)]
async fn a_resolver_handing_out_a_stale_address_is_the_resolver_and_the_address(pool: PgPool) {
    // 127.0.0.54 still answers the old address 127.0.0.99, which 502s.
    detect_over_fleet(&pool, 20, |v, _| {
        if v.resolver.contains("127.0.0.54") {
            http("127.0.0.99", 502)
        } else {
            http(GOOD, 200)
        }
    })
    .await;
    let rows = incidents(&pool).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(
        (rows[0].2.as_str(), rows[0].3.as_str()),
        ("resolver", "udp://127.0.0.54:53")
    );
    let corr = correlated(&rows[0]);
    assert!(
        corr.contains(&("address".into(), "127.0.0.99".into())),
        "{corr:?}"
    );
    assert!(
        corr.contains(&("resolver_egress".into(), "127.0.9.54".into())),
        "{corr:?}"
    );
    assert!(
        rows[0].6.contains("All failing probes also share")
            && rows[0].6.contains("address 127.0.0.99"),
        "{}",
        rows[0].6
    );
}

#[sqlx::test(migrations = false)]
async fn one_bad_address_among_several_records_is_the_address(pool: PgPool) {
    // Every resolver answers three records; each client rotates over them
    // (from where its own rotation stands); the backend behind .11 is
    // broken.
    let records = ["127.0.0.10", "127.0.0.11", "127.0.0.12"];
    detect_over_fleet(&pool, 30, |v, i| {
        let IpAddr::V4(egress) = v.egress else {
            unreachable!("the fleet is IPv4")
        };
        let dialed = records[(i + usize::from(egress.octets()[3])) % 3];
        http(dialed, if dialed == "127.0.0.11" { 502 } else { 200 })
    })
    .await;
    let rows = incidents(&pool).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(
        (rows[0].2.as_str(), rows[0].3.as_str()),
        ("address", "127.0.0.11")
    );
    assert!(correlated(&rows[0]).is_empty(), "{rows:#?}");
}

#[sqlx::test(migrations = false)]
async fn failing_everywhere_is_global(pool: PgPool) {
    detect_over_fleet(&pool, 20, |_, i| {
        http(GOOD, if i % 10 == 5 { 200 } else { 502 })
    })
    .await;
    let rows = incidents(&pool).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(
        (rows[0].0.as_str(), rows[0].2.as_str()),
        ("global", "global")
    );
    assert!(rows[0].6.contains("the failure is global"), "{}", rows[0].6);
}

#[sqlx::test(migrations = false)]
async fn a_segment_then_a_global_outage_says_which_came_first(pool: PgPool) {
    let (_, d) = detector(&pool, settings()).await;
    let t0 = Utc::now() - chrono::Duration::minutes(20);
    write_probes(&pool, &fleet(), 20, t0, |v, _| {
        http(GOOD, if v.region == "eu" { 502 } else { 200 })
    })
    .await;
    two_passes(&d, t0).await;
    let t1 = t0 + chrono::Duration::minutes(10);
    write_probes(&pool, &fleet(), 20, t1, |_, _| http(GOOD, 502)).await;
    two_passes(&d, t1).await;
    let rows = incidents(&pool).await;
    let global = rows
        .iter()
        .find(|r| r.0 == "global")
        .expect("a global incident");
    assert!(
        global.6.contains("It came second: segment incident #")
            && global.6.contains("(region eu) opened 10m"),
        "{}",
        global.6
    );
}

#[sqlx::test(migrations = false)]
async fn two_percent_random_failures_open_nothing(pool: PgPool) {
    let (_, d) = detector(&pool, settings()).await;
    let windows = 24;
    let start = Utc::now() - chrono::Duration::hours(2) - chrono::Duration::minutes(5);
    let mut rng = StdRng::seed_from_u64(502);
    let (mut flagged, mut tested) = (0usize, 0usize);
    let mut opened = 0;
    for w in 0..windows {
        let end = start + chrono::Duration::minutes(5 * w);
        write_probes(&pool, &fleet(), 30, end, |_, _| {
            http(GOOD, if rng.random_bool(0.02) { 502 } else { 200 })
        })
        .await;
        opened += d.evaluate_at(end).await.unwrap().opened.len();
        let (f, t): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE flagged), count(*) FROM v_segment_rates
             WHERE pattern = 'status' AND probes >= 20 AND rest_probes >= 20",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        flagged += f as usize;
        tested += t as usize;
    }
    println!(
        "2% random failures, {windows} windows of {} probes: {flagged} segments flagged of {tested} \
         tested (false-positive rate {:.4}), {opened} incidents opened",
        fleet().len() * 30,
        flagged as f64 / tested.max(1) as f64
    );
    assert!(
        tested > windows as usize * 20,
        "segments were tested: {tested}"
    );
    assert_eq!(opened, 0);
    assert!(incidents(&pool).await.is_empty());
}

#[sqlx::test(migrations = false)]
async fn one_failing_round_of_two_vantages_opens_nothing_and_a_second_round_opens(pool: PgPool) {
    let (_, d) = detector(&pool, settings()).await;
    // Ten 30 s rounds ending at `end`; the three vantages of 127.10.1.0/24
    // fail in the last two (the other nine vantages do not).
    let end = Utc::now() - chrono::Duration::minutes(30);
    let failing = |v: &Vantage| v.agent.starts_with("eu-127.10.1.");
    write_probes_over(
        &pool,
        &fleet(),
        10,
        end,
        Duration::from_secs(330),
        |v, i| http(GOOD, if failing(v) && i < 2 { 502 } else { 200 }),
    )
    .await;
    // One round of failures in sight: 3 of 12 probes, not yet a pattern.
    let one = d
        .evaluate_at(end - chrono::Duration::seconds(30))
        .await
        .unwrap();
    assert!(one.opened.is_empty(), "{one:?}");
    assert!(incidents(&pool).await.is_empty());
    // The second round: 6 of 6 against 0 of 18, confirmed by the next
    // pass.
    let two = d
        .evaluate_at(end - chrono::Duration::seconds(10))
        .await
        .unwrap();
    assert!(two.opened.is_empty(), "{two:?}");
    let confirmed = d.evaluate_at(end).await.unwrap();
    assert_eq!(confirmed.opened.len(), 1, "{confirmed:?}");
    let rows = incidents(&pool).await;
    assert_eq!(
        (rows[0].2.as_str(), rows[0].3.as_str()),
        ("egress_prefix", "127.10.1.0/24"),
        "{rows:#?}"
    );
    assert!(
        rows[0].6.starts_with(
            "6 of 6 probes of http://shop.test/ from egress prefix 127.10.1.0/24 got 502 in the \
             last 2 probe rounds (1m); 0 of 18 from everywhere else"
        ),
        "{}",
        rows[0].6
    );
}

#[sqlx::test(migrations = false)]
async fn one_rogue_agent_is_not_a_regional_incident(pool: PgPool) {
    detect_over_fleet(&pool, 40, |v, _| {
        http(GOOD, if v.agent == "eu-127.10.1.1" { 502 } else { 200 })
    })
    .await;
    assert!(incidents(&pool).await.is_empty());
    // The segments were tested and failed only the vantage gate.
    let (region_rate, vantages): (f64, i32) = sqlx::query_as(
        "SELECT rate::float8, vantages FROM v_segment_rates
         WHERE pattern = 'status' AND dimension = 'region' AND value = 'eu'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        region_rate > 0.15 && vantages == 1,
        "{region_rate} {vantages}"
    );
}

#[sqlx::test(migrations = false)]
async fn recovery_resolves_once_and_a_restart_neither_reopens_nor_forgets(pool: PgPool) {
    let window = Duration::from_secs(60);
    let settings = DetectorSettings {
        window,
        ..settings()
    };
    let (store, d) = detector(&pool, settings.clone()).await;
    // Whole microseconds: PostgreSQL's precision.
    let start = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
        - chrono::Duration::minutes(30);
    // 12 minutes of one-minute windows: failing for 4, healthy after.
    let mut d = Some(d);
    let (mut opened, mut resolved) = (Vec::new(), Vec::new());
    for minute in 1..=12 {
        let end = start + chrono::Duration::minutes(minute);
        let failing = minute <= 4;
        write_probes_over(&pool, &fleet(), 10, end, window, |v, _| {
            http(
                GOOD,
                if failing && v.region == "eu" {
                    502
                } else {
                    200
                },
            )
        })
        .await;
        if minute == 3 || minute == 6 {
            // A restart: a new detector over the same database.
            d.as_ref().unwrap().release_lease().await;
            d = Some(Detector::new(
                store.clone(),
                settings.clone(),
                Arc::new(Notify::new()),
            ));
        }
        let pass = d.as_ref().unwrap().evaluate_at(end).await.unwrap();
        opened.extend(pass.opened.iter().map(|id| (minute, *id)));
        resolved.extend(pass.resolved.iter().map(|id| (minute, *id)));
    }
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(opened[0].1, resolved[0].1);
    // Opens at the second pass that holds; the last failing window is
    // minute 4, so 3 clear evaluations end at minute 7 (and 3 min >= the
    // 60 s quiet).
    assert_eq!((opened[0].0, resolved[0].0), (2, 7));
    let (state, resolved_at): (String, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT state, resolved_at FROM v_incidents")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(state, "resolved");
    assert_eq!(resolved_at, Some(start + chrono::Duration::minutes(7)));
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM detector_state")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(held, 0, "idle candidates are not kept");
}

/// A fault that comes back soon after its incident resolved reopens that
/// incident (`incident.reopened`, the version moved on) instead of paging
/// a new one; one that comes back later is a new incident.
#[sqlx::test(migrations = false)]
async fn a_fault_back_within_reopen_within_reopens_its_incident(pool: PgPool) {
    let window = Duration::from_secs(60);
    let mut settings = DetectorSettings {
        window,
        ..settings()
    };
    settings.hysteresis.reopen_within = Duration::from_secs(300);
    let (_, d) = detector(&pool, settings).await;
    let start = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
        - chrono::Duration::minutes(60);
    // Failing in minutes 1-4, 9-12 and 30-33; healthy otherwise.
    let failing = |minute: i64| {
        (1..=4).contains(&minute) || (9..=12).contains(&minute) || (30..=33).contains(&minute)
    };
    let mut events = Vec::new();
    for minute in 1..=40 {
        let end = start + chrono::Duration::minutes(minute);
        write_probes_over(&pool, &fleet(), 10, end, window, |v, _| {
            http(
                GOOD,
                if failing(minute) && v.region == "eu" {
                    502
                } else {
                    200
                },
            )
        })
        .await;
        let pass = d.evaluate_at(end).await.unwrap();
        events.extend(pass.opened.iter().map(|id| (minute, "opened", *id)));
        events.extend(pass.reopened.iter().map(|id| (minute, "reopened", *id)));
        events.extend(pass.resolved.iter().map(|id| (minute, "resolved", *id)));
    }
    let kinds: Vec<(&str, i64)> = events.iter().map(|e| (e.1, e.2)).collect();
    let (first, second) = (events[0].2, events[4].2);
    assert_eq!(
        kinds,
        [
            ("opened", first),
            ("resolved", first),
            ("reopened", first),
            ("resolved", first),
            ("opened", second),
            ("resolved", second),
        ],
        "{events:?}"
    );
    assert_ne!(first, second, "back 18 minutes later: a new incident");
    let stored: Vec<(String, i32)> = sqlx::query_as(
        "SELECT event, version FROM incident_events WHERE incident_id = $1 ORDER BY id",
    )
    .bind(first)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        stored,
        [
            ("incident.opened".to_owned(), 1),
            ("incident.resolved".to_owned(), 1),
            ("incident.reopened".to_owned(), 2),
            ("incident.resolved".to_owned(), 2),
        ]
    );
}

#[sqlx::test(migrations = false)]
async fn connection_failures_are_their_own_pattern(pool: PgPool) {
    detect_over_fleet(&pool, 20, |v, _| {
        if v.region == "us" {
            Outcome {
                dialed: GOOD.parse().unwrap(),
                status: None,
                outcome: "connect",
            }
        } else {
            http(GOOD, 200)
        }
    })
    .await;
    let rows = incidents(&pool).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(
        (rows[0].1.as_str(), rows[0].2.as_str(), rows[0].3.as_str()),
        ("connection", "region", "us")
    );
    // Not one of them counts toward the 502 rate.
    let status_failures: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(failures), 0)::int8 FROM v_segment_rates
         WHERE pattern = 'status' AND dimension = 'region'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(status_failures, 0);
}

#[sqlx::test(migrations = false)]
async fn statuses_are_configurable_per_check(pool: PgPool) {
    let now = Utc::now();
    let eu_503 = |v: &Vantage, _| http(GOOD, if v.region == "eu" { 503 } else { 200 });
    // Default (502 only): a 503 is not a failure.
    let (_, d) = detector(&pool, settings()).await;
    write_probes(&pool, &fleet(), 20, now, eu_503).await;
    two_passes(&d, now).await;
    assert!(incidents(&pool).await.is_empty());
    // The check "shop" counts 502 and 503 (a restarted collector).
    d.release_lease().await;
    let mut s = settings();
    s.check_statuses.insert("shop".into(), vec![502, 503]);
    let (_, d) = detector(&pool, s).await;
    two_passes(&d, now).await;
    let rows = incidents(&pool).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert!(rows[0].6.contains("got 502/503 in"), "{}", rows[0].6);
}

#[sqlx::test(migrations = false)]
async fn an_asn_spanning_regions_and_prefixes_is_the_network(pool: PgPool) {
    let (store, d) = detector(&pool, settings()).await;
    let ranges =
        vantage_collector::detect::asn::parse("asn-loopback.tsv", vantage_demo::DEMO_ASN_TABLE)
            .unwrap();
    store.load_asn("asn-loopback.tsv", &ranges).await.unwrap();
    // AS64503 holds 127.0.3.0/24 and 127.0.4.0/24; its vantages sit in two
    // regions, each of which also has healthy vantages elsewhere.
    let mut fleet = Vec::new();
    for (agent, region, ip) in [
        ("eu-transit", "eu", "127.0.3.1"),
        ("us-transit", "us", "127.0.4.1"),
        ("eu-isp-1", "eu", "127.0.1.1"),
        ("eu-isp-2", "eu", "127.0.1.2"),
        ("us-vpn-1", "us", "127.0.2.1"),
        ("us-vpn-2", "us", "127.0.2.2"),
    ] {
        fleet.push(vantage(agent, region, ip, "127.0.0.53"));
    }
    write_probes(&pool, &fleet, 30, Utc::now(), |v, _| {
        http(
            GOOD,
            if v.agent.ends_with("transit") {
                502
            } else {
                200
            },
        )
    })
    .await;
    two_passes(&d, Utc::now()).await;
    let rows = incidents(&pool).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(
        (rows[0].2.as_str(), rows[0].3.as_str()),
        ("asn", "AS64503 EXAMPLE-TRANSIT")
    );
    assert!(
        rows[0]
            .6
            .contains("from network AS64503 EXAMPLE-TRANSIT got 502"),
        "{}",
        rows[0].6
    );
}

#[sqlx::test(migrations = false)]
async fn incidents_store_their_evidence(pool: PgPool) {
    detect_over_fleet(&pool, 20, one_failing_slash_24).await;
    type Evidence = (
        Value,
        Vec<String>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<f64>,
        i32,
    );
    let (evidence, gateways, first, last, p, vantages): Evidence = sqlx::query_as(
        "SELECT evidence, gateways, first_failure_at, last_failure_at, p_value, failing_vantages
         FROM v_incidents",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(gateways, ["nginx"]);
    assert!(first.unwrap() < last.unwrap());
    assert!(p.unwrap() < 1e-10, "{p:?}");
    assert_eq!(vantages, 3);
    let counts = evidence["counts"].as_array().unwrap();
    assert_eq!(counts[0]["role"], "winner");
    assert_eq!(counts[0]["value"], "127.10.1.0/24");
    assert!(
        counts
            .iter()
            .any(|c| c["role"] == "same dimension" && c["value"] == "127.10.2.0/24"),
        "{counts:#?}"
    );
    assert!(
        counts.iter().any(|c| c["role"] == "runner-up"),
        "{counts:#?}"
    );
    // The walk: /24, then narrower while all failures stay inside.
    let walk: Vec<&str> = evidence["walk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["prefix"].as_str().unwrap())
        .collect();
    assert_eq!(
        walk[..4],
        [
            "127.10.1.0/24",
            "127.10.1.0/25",
            "127.10.1.0/26",
            "127.10.1.0/27"
        ]
    );
    // Sample result ids point at real failing rows.
    let samples = evidence["samples"].as_array().unwrap();
    assert!(!samples.is_empty());
    for s in samples {
        let status: i16 = sqlx::query_scalar(
            "SELECT http_status FROM probe_results WHERE agent_id = $1 AND seq = $2",
        )
        .bind(s["agent_id"].as_str().unwrap())
        .bind(s["seq"].as_i64().unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(status, 502);
    }
}

/// `vantage-collector asn load <file>` against the test's database: the
/// fixture loads; a broken file is refused with its line and field, and
/// the table loaded before stays as it was.
#[sqlx::test(migrations = false)]
async fn asn_load_cli_loads_the_fixture_and_names_bad_lines(pool: PgPool) {
    let url = crate::database_url(&pool);
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_vantage-collector"))
            .args(args)
            .env("DATABASE_URL", &url)
            .output()
            .unwrap()
    };
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/asn-loopback.tsv");
    let loaded = cli(&["asn", "load", fixture]);
    assert!(loaded.status.success(), "{loaded:?}");
    assert!(
        String::from_utf8_lossy(&loaded.stdout).contains("Loaded 5 ranges"),
        "{loaded:?}"
    );
    let name: String = sqlx::query_scalar(
        "SELECT name FROM asn_ranges WHERE '127.0.2.9'::inet BETWEEN first_ip AND last_ip",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(name, "EXAMPLE-VPN");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.tsv");
    std::fs::write(
        &bad,
        "1.0.0.0\t1.0.0.255\t13335\tUS\tX\n1.0.1.0\t1.0.1.255\tAS?\tUS\tY\n",
    )
    .unwrap();
    let refused = cli(&["asn", "load", bad.to_str().unwrap()]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("bad.tsv:2: field asn"), "{stderr}");
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM asn_ranges")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, 5);
}

#[sqlx::test(migrations = false)]
async fn an_enormous_window_and_retention_run_instead_of_panicking(pool: PgPool) {
    let forever = Duration::from_secs(100_000_000 * 365 * 24 * 3600);
    let settings = DetectorSettings {
        window: forever,
        rates_retention: forever,
        ..settings()
    };
    let (_, d) = detector(&pool, settings).await;
    let pass = d.evaluate_at(Utc::now()).await.unwrap();
    assert!(pass.ran && pass.opened.is_empty(), "{pass:?}");
}

#[sqlx::test(migrations = false)]
async fn a_fault_spreading_to_its_region_is_re_explained_in_place(pool: PgPool) {
    let (_, d) = detector(&pool, settings()).await;
    let round = Duration::from_secs(30);
    let t1 = Utc::now() - chrono::Duration::minutes(30);
    // 127.10.1.0/24 fails in the last four of eleven rounds.
    write_probes_over(&pool, &fleet(), 10, t1, round * 11, |v, i| {
        http(
            GOOD,
            if v.agent.starts_with("eu-127.10.1.") && i < 4 {
                502
            } else {
                200
            },
        )
    })
    .await;
    let opened = two_passes(&d, t1).await.opened;
    assert_eq!(opened.len(), 1);
    // Two more rounds: now all of eu fails.
    let t2 = t1 + chrono::Duration::seconds(60);
    write_probes_over(&pool, &fleet(), 2, t2, round * 3, |v, _| {
        http(GOOD, if v.region == "eu" { 502 } else { 200 })
    })
    .await;
    let first = d
        .evaluate_at(t2 - chrono::Duration::seconds(10))
        .await
        .unwrap();
    assert!(
        first.updated.is_empty(),
        "one pass is not enough: {first:?}"
    );
    let second = d.evaluate_at(t2).await.unwrap();
    assert_eq!(second.updated, opened, "{second:?}");
    assert!(second.opened.is_empty(), "{second:?}");
    let history: Vec<(i32, String, String, bool)> = sqlx::query_as(
        "SELECT version, dimension, value, current FROM v_incident_history
         WHERE incident_id = $1 ORDER BY version",
    )
    .bind(opened[0])
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        history,
        [
            (1, "egress_prefix".into(), "127.10.1.0/24".into(), false),
            (2, "region".into(), "eu".into(), true)
        ]
    );
    let rows = incidents(&pool).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!((rows[0].2.as_str(), rows[0].3.as_str()), ("region", "eu"));
}

#[sqlx::test(migrations = false)]
async fn a_resolver_failing_for_two_targets_is_one_path_incident(pool: PgPool) {
    let (_, d) = detector(&pool, settings()).await;
    let now = Utc::now();
    let bad_resolver = |v: &Vantage, _| {
        http(
            GOOD,
            if v.resolver.contains("127.0.0.54") {
                502
            } else {
                200
            },
        )
    };
    let other = "http://other.test/";
    write_probes(&pool, &fleet(), 20, now, bad_resolver).await;
    write_probes_of(&pool, other, &fleet(), 20, now, WINDOW, bad_resolver).await;
    two_passes(&d, now).await;
    let rows: Vec<(String, String, String, String, Vec<String>, String)> = sqlx::query_as(
        "SELECT target, scope, dimension, value, targets, fault_side FROM v_incidents",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [(
            "*".to_owned(),
            "path".to_owned(),
            "resolver".to_owned(),
            "udp://127.0.0.54:53".to_owned(),
            vec![other.to_owned(), TARGET.to_owned()],
            "path".to_owned()
        )],
        "one incident about the path, none per target"
    );
}
