//! The read-only web pages for operators, on `http_listen`: the open and
//! recent incidents (`/`), one incident with its evidence
//! (`/incidents/<id>`, the link every page carries; JSON for clients that
//! ask for it), and the vantages (`/vantages`). Server-rendered HTML
//! ([`pages`], maud), plots as inline SVG ([`plot`]), no JavaScript and
//! nothing loaded from elsewhere (a Content-Security-Policy says so). Who
//! may read them: [`access`].

pub mod access;
pub mod pages;
pub mod paths;
pub mod plot;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Duration, Utc};
use maud::Markup;
use serde_json::Value;

use crate::detect::CONNECTION_OUTCOMES;
use crate::detect::asn::AsnTable;
use crate::detect::dimensions::{DIMENSIONS, Derive, DeriveContext};
use crate::store::{FailureRule, Incident, Store, StoreError};
use plot::Round;

/// Resolved incidents listed on `/`: those of the last week.
const RECENT_DAYS: i64 = 7;
/// At most this many incidents on `/`.
const LIST_LIMIT: i64 = 200;
/// Vantages listed per page of `/vantages`.
const VANTAGES_PER_PAGE: i64 = 500;
/// The last page number a listing accepts.
const MAX_PAGE: i64 = 100_000;
/// At most this many rounds in a timeline; longer incidents get wider
/// rounds.
const MAX_ROUNDS: f64 = 240.0;

/// Pages may use inline styles and inline SVG, nothing else: any other
/// load (a script, an image, a font) would be blocked and show as an
/// error in the browser's console, which the browser test checks.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The pages' routes, behind [`access::guard`].
pub fn router(store: Arc<Store>, access: access::Access) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/incidents/{id}", get(incident))
        .route("/vantages", get(vantages))
        .with_state(store)
        .layer(axum::middleware::from_fn_with_state(access, access::guard))
}

/// An HTML page with the pages' headers.
fn html(markup: Markup) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        markup.into_string(),
    )
        .into_response()
}

fn unavailable(error: StoreError) -> Response {
    tracing::warn!(%error, "A page could not be read from the database.");
    (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
}

async fn index(State(store): State<Arc<Store>>) -> Response {
    // A page slower than the listener's idle timeout (test builds only).
    fail::fail_point!("ui-index-delay");
    let now = Utc::now();
    match store
        .recent_incidents(now - Duration::days(RECENT_DAYS), LIST_LIMIT)
        .await
    {
        Ok(incidents) => html(pages::index(&incidents, RECENT_DAYS, now)),
        Err(e) => unavailable(e),
    }
}

/// The query of a listing page: `?page=N`, from 1.
#[derive(Debug, serde::Deserialize)]
struct Paging {
    page: Option<String>,
}

async fn vantages(
    State(store): State<Arc<Store>>,
    axum::extract::Query(paging): axum::extract::Query<Paging>,
) -> Response {
    let page = match paging.page.as_deref().map(str::parse::<i64>) {
        None => 1,
        Some(Ok(page)) if (1..=MAX_PAGE).contains(&page) => page,
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("page: expected a whole number from 1 to {MAX_PAGE}\n"),
            )
                .into_response();
        }
    };
    match store
        .vantage_rows(VANTAGES_PER_PAGE, (page - 1) * VANTAGES_PER_PAGE)
        .await
    {
        Ok((rows, total)) => html(pages::vantages(
            &rows,
            pages::Paged {
                page,
                per_page: VANTAGES_PER_PAGE,
                total,
            },
            Utc::now(),
        )),
        Err(e) => unavailable(e),
    }
}

/// Whether the client asked for a page rather than data: browsers list
/// `text/html` in `Accept`; curl and HTTP libraries do not.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

async fn incident(
    State(store): State<Arc<Store>>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Response {
    let incident = match store.incident(id).await {
        Ok(Some(incident)) => incident,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such incident\n").into_response(),
        Err(e) => return unavailable(e),
    };
    let history = match store.incident_history(id).await {
        Ok(history) => history,
        Err(e) => return unavailable(e),
    };
    if !wants_html(&headers) {
        return axum::Json(incident_json(&incident, history)).into_response();
    }
    match incident_page(&store, &incident, &history).await {
        Ok(markup) => html(markup),
        Err(e) => unavailable(e),
    }
}

/// The incident as the webhook JSON describes it, with its state and
/// explanation history.
pub fn incident_json(incident: &Incident, history: Vec<Value>) -> Value {
    let mut body = crate::alert::notice::incident_json(incident);
    body["state"] = Value::from(if incident.resolved_at.is_some() {
        "resolved"
    } else {
        "open"
    });
    body["history"] = Value::Array(history);
    body
}

async fn incident_page(
    store: &Store,
    incident: &Incident,
    history: &[Value],
) -> Result<Markup, StoreError> {
    let now = Utc::now();
    let evidence = store.incident_evidence(incident.id).await?;
    let window = Duration::seconds(i64::from(incident.window_seconds.max(1)));
    // From a window before it opened to now (or a window after it
    // resolved): the fault's start, its course and its end.
    let from = incident.opened_at - window * 2;
    let to = incident.resolved_at.map_or(now, |r| (r + window).min(now));
    let span_s = (to - from).num_milliseconds() as f64 / 1000.0;
    let evidence_round = evidence["round_seconds"].as_f64().filter(|r| *r > 0.0);
    let round_seconds = evidence_round
        .unwrap_or(30.0)
        .max(span_s / MAX_ROUNDS)
        .max(1.0);
    let rounds = timeline(store, incident, from, to, round_seconds).await?;
    let keys: Vec<(String, i64, DateTime<Utc>)> = evidence["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            Some((
                s["agent_id"].as_str()?.to_owned(),
                s["seq"].as_i64()?,
                s["started_at"].as_str()?.parse().ok()?,
            ))
        })
        .collect();
    let samples = store.result_paths(&keys).await?;
    let requests: Vec<i64> = evidence["confirmation_probes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["request_id"].as_i64())
        .collect();
    let paths = if requests.is_empty() {
        Vec::new()
    } else {
        store.request_paths(&requests).await?
    };
    Ok(pages::incident(&pages::IncidentView {
        incident,
        evidence: &evidence,
        history,
        rounds: &rounds,
        round_seconds,
        samples: &samples,
        paths: &paths,
    }))
}

/// The incident's failures per round, in its segment and elsewhere. The
/// segment is tested on the same source value the detector reads, with
/// the same derivation; a prefix segment by containment, so the narrowed
/// prefix is the one drawn.
async fn timeline(
    store: &Store,
    incident: &Incident,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    round_seconds: f64,
) -> Result<Vec<Round>, StoreError> {
    let Some(dimension) = DIMENSIONS.iter().find(|d| d.name == incident.dimension) else {
        // A global incident (or a dimension this build no longer has):
        // everything is "the rest".
        return rounds_of(store, incident, from, to, round_seconds, "NULL", |_| false).await;
    };
    let value = incident
        .narrowed_value
        .clone()
        .unwrap_or_else(|| incident.value.clone());
    let asn = match dimension.derive {
        Derive::Asn => AsnTable::new(store.asn_ranges().await?),
        _ => AsnTable::default(),
    };
    let prefix: Option<ipnet::IpNet> = value.parse().ok();
    let derive = dimension.derive;
    // Other derivations are the detector's own (`Derive::apply`); the
    // prefix lengths play no part in them.
    let ctx = DeriveContext {
        prefix_v4: 32,
        prefix_v6: 128,
        asn: &asn,
    };
    let inside = move |source: &str| match derive {
        Derive::Prefix => prefix
            .zip(source.parse::<std::net::IpAddr>().ok())
            .is_some_and(|(net, ip)| net.contains(&ip)),
        other => other.apply(source, &ctx).is_some_and(|v| v == value),
    };
    rounds_of(
        store,
        incident,
        from,
        to,
        round_seconds,
        dimension.source,
        inside,
    )
    .await
}

async fn rounds_of(
    store: &Store,
    incident: &Incident,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    round_seconds: f64,
    source: &'static str,
    inside: impl Fn(&str) -> bool,
) -> Result<Vec<Round>, StoreError> {
    let targets = if incident.targets.is_empty() {
        vec![incident.target.clone()]
    } else {
        incident.targets.clone()
    };
    let rule = if incident.pattern == "connection" {
        FailureRule::Connection {
            statuses: &incident.statuses,
            outcomes: &CONNECTION_OUTCOMES,
        }
    } else {
        FailureRule::Status(&incident.statuses)
    };
    // The segment's values first (one row per value), then two counts a
    // round: the page reads rounds × 2 rows, not rounds × values.
    let inside_values: Vec<String> = store
        .incident_sources(&targets, from, to, source)
        .await?
        .into_iter()
        .filter(|value| inside(value))
        .collect();
    let cells = store
        .incident_rounds(
            &targets,
            from,
            to,
            round_seconds,
            source,
            &inside_values,
            &rule,
        )
        .await?;
    let mut rounds: BTreeMap<DateTime<Utc>, Round> = BTreeMap::new();
    for cell in cells {
        let round = rounds.entry(cell.round_start).or_insert_with(|| Round {
            start: cell.round_start,
            segment: (0, 0),
            rest: (0, 0),
        });
        let side = if cell.inside {
            &mut round.segment
        } else {
            &mut round.rest
        };
        side.0 += cell.failures;
        side.1 += cell.probes;
    }
    Ok(rounds.into_values().collect())
}
