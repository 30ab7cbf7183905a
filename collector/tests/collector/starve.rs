//! An enrolled agent gone wrong cannot starve the collector: the attack
//! of issue 30 (one stream, 20 batches of 5,000 results, each result a
//! different vantage name), against the real collector process, while a
//! real agent delivers and the pages are read.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::rig::Fleet;
use crate::{result, try_open_stream};

/// The collector's peak resident memory (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[sqlx::test(migrations = false)]
async fn an_agent_reporting_a_hundred_thousand_vantages_is_capped_and_starves_nothing(
    pool: PgPool,
) {
    let fleet = Fleet::start(
        pool.clone(),
        &[("agent-a", "eu-west"), ("agent-b", "us-east")],
        "",
    )
    .await;
    let check = format!(
        "[[check]]\nname = \"shop\"\nurl = \"{}\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
        fleet.url("/")
    );
    let _honest = fleet.start_agent("agent-b", "", &check);
    let honest_results = "SELECT count(*) FROM probe_results WHERE agent_id = 'agent-b'";
    let before = fleet
        .wait_for(
            "the honest agent's results",
            honest_results,
            1,
            Duration::from_secs(30),
        )
        .await;

    let pid = fleet.collector.as_ref().unwrap().0.id();
    let rss_before = peak_rss(pid);
    let token = fleet.tokens[0].1.clone();
    let mut attacker = try_open_stream(fleet.grpc, &token, "agent-a")
        .await
        .unwrap();
    let started = Instant::now();
    let mut seq = 0u64;
    for batch in 1..=20 {
        let results = (0..5000)
            .map(|_| {
                seq += 1;
                let mut r = result(seq, 200);
                r.vantage = format!("vantage-{seq}");
                r
            })
            .collect();
        attacker.send_batch(batch, results).await;
    }
    let (mut inserted, mut refused) = (0, 0);
    for _ in 1..=20 {
        let ack = attacker.next_ack(Duration::from_secs(60)).await.unwrap();
        inserted += ack.inserted;
        refused += ack.refused;
    }
    let acked_in = started.elapsed();
    assert_eq!((inserted, refused), (256, 100_000 - 256));
    let (gap_rows, gap_results): (i64, i64) = sqlx::query_as(
        "SELECT count(*), COALESCE(sum(count), 0)::int8 FROM delivery_gaps
         WHERE agent_id = 'agent-a' AND reason = 'cardinality'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        gap_results,
        100_000 - 256,
        "every refused result is a recorded gap"
    );
    assert!(
        gap_rows <= 20,
        "runs of refused results are one gap each: {gap_rows}"
    );

    // The pages, health and the honest agent are unaffected.
    let http = fleet.collector_http.unwrap();
    vantage_service::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let asked = Instant::now();
    let vantages = client
        .get(format!("http://{http}/vantages"))
        .send()
        .await
        .unwrap();
    let vantages_in = asked.elapsed();
    assert_eq!(vantages.status(), 200);
    assert!(vantages.text().await.unwrap().contains("vantage-256"));
    let health = client
        .get(format!("http://{http}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    fleet
        .wait_for(
            "the honest agent's results after the attack",
            honest_results,
            before + 3,
            Duration::from_secs(30),
        )
        .await;

    let rss = peak_rss(pid);
    println!(
        "cardinality attack: 100,000 results acked in {acked_in:?} (256 stored, {refused} \
         refused as {gap_rows} gaps); /vantages in {vantages_in:?}; collector peak RSS {} MB \
         (before the attack: {} MB)",
        rss / 1_000_000,
        rss_before / 1_000_000
    );
    println!(
        "figure: collector peak RSS after the cardinality attack: {} MiB (reference, before \
         it: {} MiB; target <= 256 MiB)",
        rss >> 20,
        rss_before >> 20
    );
    assert!(rss <= 256 * 1024 * 1024, "peak RSS {rss} bytes");
    let log = fleet.read_log("collector.log");
    assert_eq!(
        log.matches("Refused results of an agent reporting more than 256 distinct vantage names")
            .count(),
        1,
        "one ERROR line: {log}"
    );
}

/// Every node of `plan` (EXPLAIN ANALYZE's JSON): rows it produced over
/// all its loops, summed.
fn rows_processed(plan: &serde_json::Value) -> f64 {
    let own =
        plan["Actual Rows"].as_f64().unwrap_or(0.0) * plan["Actual Loops"].as_f64().unwrap_or(1.0);
    own + plan["Plans"]
        .as_array()
        .map_or(0.0, |children| children.iter().map(rows_processed).sum())
}

/// The vantage list at 100,000 vantage names of one agent (stored before
/// any cap, as by an older collector): its plan's work grows with the
/// results, not with their square, and the page is served 500 rows at a
/// time.
#[sqlx::test(migrations = false)]
async fn the_vantage_list_at_a_hundred_thousand_vantages_is_linear_and_paged(pool: PgPool) {
    const VANTAGES: i64 = 100_000;
    let fleet = Fleet::start(
        pool.clone(),
        &[("agent-a", "eu-west"), ("agent-b", "us-east")],
        "",
    )
    .await;
    let mut fill = Fill::new(&pool).await;
    sqlx::query(
        "INSERT INTO fill (agent_id, seq, started_at, region, check_name, url, method,
                           outcome, vantage)
         SELECT 'agent-a', g, now() - interval '1 minute', 'eu-west', 'shop',
                'http://shop.test/', 'GET', CASE WHEN g % 10 = 0 THEN 'http' ELSE 'ok' END,
                'vantage-' || g
         FROM generate_series(1, $1) g",
    )
    .bind(VANTAGES)
    .execute(&mut *fill.0)
    .await
    .unwrap();
    fill.store().await;

    let mut conn = pool.acquire().await.unwrap();
    // The quadratic plan ran for more than 9 minutes: fail instead.
    sqlx::query("SET statement_timeout = '60s'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let explained: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) {}",
        vantage_collector::store::VANTAGE_ROWS_SQL
    )))
    .bind(500i64)
    .bind(0i64)
    .fetch_one(&mut *conn)
    .await
    .expect("the vantage list's query finishes at 100,000 vantages");
    let plan = &explained[0]["Plan"];
    let processed = rows_processed(plan);
    println!(
        "vantage list at {VANTAGES} vantages: {processed} rows processed by the plan's nodes, \
         {} ms",
        explained[0]["Execution Time"]
    );
    assert!(
        processed <= 20.0 * VANTAGES as f64,
        "the plan's work is linear in the results: {processed} rows\n{plan:#}"
    );

    let http = fleet.collector_http.unwrap();
    vantage_service::install_crypto_provider();
    let client = reqwest::Client::new();
    let second = client
        .get(format!("http://{http}/vantages?page=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 200);
    let text = second.text().await.unwrap();
    // 100,000 vantages of agent-a and agent-b's row without results; the
    // failing (every tenth) first.
    assert!(text.contains("Rows 501–1000 of 100001."), "{text}");
    assert_eq!(text.matches("<tr>").count(), 501, "a header and 500 rows");
    assert!(text.contains("href=\"?page=1\"") && text.contains("href=\"?page=3\""));
    let bad = client
        .get(format!("http://{http}/vantages?page=abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(
        bad.text()
            .await
            .unwrap()
            .contains("page: expected a whole number")
    );
}

/// A reader who leaves a page whose query is still running in PostgreSQL
/// does not leave it running: its connection is closed instead of kept,
/// and PostgreSQL cancels the query (it would otherwise run to the pages'
/// 15 s statement timeout, holding one of their three connections).
#[sqlx::test(migrations = false)]
async fn a_page_query_ends_when_its_reader_leaves(pool: PgPool) {
    vantage_collector::store::Store::new(pool.clone())
        .migrate()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, http) = crate::process::start_collector_env(
        &pool,
        dir.path(),
        "collector",
        "",
        &[("FAILPOINTS", "vantage-rows-pg-sleep=return(60)")],
    );
    let sleeping = "SELECT count(*) FROM pg_stat_activity
                    WHERE query LIKE 'SELECT pg_sleep(%' AND state = 'active'
                      AND datname = current_database()";
    vantage_service::install_crypto_provider();
    let left = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap()
        .get(format!("http://{http}/vantages"))
        .send()
        .await;
    assert!(left.is_err(), "the reader gave up after 1 s");
    let running: i64 = sqlx::query_scalar(sleeping).fetch_one(&pool).await.unwrap();
    assert_eq!(
        running, 1,
        "the page's query was running when its reader left"
    );
    let left_at = Instant::now();
    loop {
        let running: i64 = sqlx::query_scalar(sleeping).fetch_one(&pool).await.unwrap();
        if running == 0 {
            break;
        }
        assert!(
            left_at.elapsed() < Duration::from_secs(10),
            "the query outlived its reader by 10 s (the statement timeout is 15 s)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "the page's query ended {:?} after its reader left",
        left_at.elapsed()
    );
    assert!(crate::process::terminate(&mut child.0, Duration::from_secs(15)).success());
}

/// An incident page's timeline at 100,000 egress addresses in its window:
/// the segment's values are read once each, and the rounds come back as
/// two counts a round (inside, the rest), not one row per address and
/// round.
#[sqlx::test(migrations = false)]
async fn an_incident_timeline_at_a_hundred_thousand_addresses_is_two_rows_a_round(pool: PgPool) {
    use vantage_collector::detect::dimensions::EGRESS;
    use vantage_collector::store::{FailureRule, Store};
    let store = Store::new(pool.clone());
    store.migrate().await.unwrap();
    let now = chrono::Utc::now();
    store.ensure_partitions_around(now, 1, 1).await.unwrap();
    // 100,000 vantages, each its own address, two rounds of 30 s; the
    // 256 addresses of 10.0.0.0/24 fail.
    let mut fill = Fill::new(&pool).await;
    sqlx::query(
        "INSERT INTO fill (agent_id, seq, started_at, region, check_name, url, method,
                           outcome, http_status, vantage, egress_ip)
         SELECT 'agent-a', g, now() - interval '50 seconds' + (g % 2) * interval '30 seconds',
                'eu-west', 'shop', 'http://shop.test/', 'GET',
                CASE WHEN g <= 256 THEN 'http' ELSE 'ok' END,
                CASE WHEN g <= 256 THEN 502 ELSE 200 END,
                'vantage-' || g, '10.0.0.0'::inet + (g - 1)
         FROM generate_series(1, 100000) g",
    )
    .execute(&mut *fill.0)
    .await
    .unwrap();
    fill.store().await;
    let targets = vec!["http://shop.test/".to_owned()];
    let (from, to) = (now - chrono::Duration::seconds(60), now);
    let sources = store
        .incident_sources(&targets, from, to, EGRESS)
        .await
        .unwrap();
    assert_eq!(sources.len(), 100_000);
    let prefix: ipnet::IpNet = "10.0.0.0/24".parse().unwrap();
    let inside: Vec<String> = sources
        .into_iter()
        .filter(|s| {
            s.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| prefix.contains(&ip))
        })
        .collect();
    let cells = store
        .incident_rounds(
            &targets,
            from,
            to,
            30.0,
            EGRESS,
            &inside,
            &FailureRule::Status(&[502]),
        )
        .await
        .unwrap();
    assert!(cells.len() <= 2 * 3, "two rows a round: {}", cells.len());
    let (mut segment, mut rest) = ((0, 0), (0, 0));
    for cell in &cells {
        let side = if cell.inside { &mut segment } else { &mut rest };
        side.0 += cell.failures;
        side.1 += cell.probes;
    }
    assert_eq!(segment, (256, 256));
    assert_eq!(rest, (0, 100_000 - 256));
}

/// Results made in bulk by SQL: generated into a temporary table of
/// `probe_results`' columns, then stored set-based by the function the
/// view's trigger stores one row with (contexts and rows).
struct Fill(sqlx::pool::PoolConnection<sqlx::Postgres>);

impl Fill {
    async fn new(pool: &PgPool) -> Self {
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("CREATE TEMPORARY TABLE fill (LIKE probe_results)")
            .execute(&mut *conn)
            .await
            .unwrap();
        Self(conn)
    }

    async fn store(mut self) {
        sqlx::raw_sql(
            "SELECT store_probe_results('SELECT ROW(f.*)::probe_results AS r FROM fill f');
             DROP TABLE fill;
             ANALYZE result_rows;
             ANALYZE result_contexts",
        )
        .execute(&mut *self.0)
        .await
        .unwrap();
    }
}
