//! Vantage collector: ingests probe results over gRPC into PostgreSQL,
//! detects 502 patterns specific to a region or egress prefix (or global),
//! and notifies webhooks when an incident opens and resolves.
//!
//! - [`config`]: the TOML configuration.
//! - [`app`]: wiring; `Application::build` then `run(shutdown)`.
//! - [`auth`]: enrolment tokens and client certificates: who an agent is.
//! - [`enrol`]: `agent add`: a new token, its hash stored.
//! - [`ingest`]: the gRPC service (limits, ordered commits, ack after commit).
//! - [`metrics`]: the Prometheus recorder behind `GET /metrics`.
//! - [`wire`]: protobuf → domain conversion and validation, in one place.
//! - [`store`]: every SQL statement: migrations, partitions, inserts, counts.
//! - [`detect`]: the detector; the decision is a pure function over counts.
//! - [`alert`]: webhook delivery from the incidents outbox.
//! - [`http`]: health endpoint.
//! - [`demo`]: the one-command local demonstration.

pub mod alert;
pub mod app;
pub mod auth;
pub mod config;
pub mod demo;
pub mod detect;
pub mod enrol;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod store;
pub mod wire;

pub use app::Application;
pub use config::CollectorConfig;
