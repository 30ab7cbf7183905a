//! Vantage agent: probes target URLs from one vantage point and streams the
//! results to the collector.
//!
//! - [`config`]: the TOML configuration, strictly validated.
//! - [`probe`]: one probe of one target (DNS, TCP, proxy, TLS, HTTP, each
//!   timed), failures as data; resolver identity; gateway signatures.
//! - [`vantage`]: the egress paths probes leave from, and their identity.
//! - [`schedule`]: runs each check from each vantage on its interval with
//!   bounded concurrency, as the set of checks changes; one-off probes.
//! - [`central`]: the checks the collector assigns, kept next to the spool.
//! - [`control`]: applies pushed check sets and reloads; runs one-off
//!   probes the collector asks for.
//! - [`queue`]: owns sequence numbers and the order in which results
//!   become sendable.
//! - [`spool`]: the on-disk spool (redb): durable results, gaps, the
//!   sequence lease, corruption and disk-full handling.
//! - [`report`]: the gRPC stream to the collector: a window of batches,
//!   cumulative acks, retry rules.
//! - [`wire`]: domain → protobuf conversion, in one place.
//! - [`app`]: wiring and the run loop.

pub mod app;
pub mod central;
pub mod config;
pub mod control;
pub mod probe;
pub mod queue;
pub mod report;
pub mod schedule;
pub mod spool;
pub mod vantage;
pub mod wire;

pub use app::App;
pub use config::AgentConfig;
