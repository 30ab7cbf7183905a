//! How a Vantage program (the agent or the collector) runs as a service.
//! Both binaries need exactly this and nothing of each other.
//!
//! - [`config`]: reading and strictly parsing TOML files, with errors that
//!   name the file, line, column and key; the range rules every config
//!   shares.
//! - [`supervise`]: long-lived components under one supervisor: restart
//!   policies with backoff, liveness, bounded shutdown.
//! - [`systemd`]: notifications to the service manager (ready, reloading,
//!   stopping, watchdog).
//! - [`signal`]: SIGTERM and SIGINT as a cancellation.
//! - [`logging`]: log output (stderr, text or JSON).

pub mod config;
pub mod logging;
pub mod signal;
pub mod supervise;
pub mod systemd;

/// Installs ring as the process-wide rustls crypto provider. Idempotent:
/// every entry point (binaries, tests, the demo) may call it.
pub fn install_crypto_provider() {
    // Err only means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
