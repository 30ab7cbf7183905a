//! Tracing the paths a round of probes took: from the vantage's source
//! address to each address its probes dialled (or to its forward proxy),
//! each destination once, attached to the results before they are queued.
//! The agent's `[path]` settings bound every trace; `max_concurrent`
//! bounds how many run at once across all vantages.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::{PathEnd, PathSettings, PathTarget, PathTrace};
use crate::probe::ProbeResult;
use crate::probe::http::Probed;
use crate::vantage::Vantage;

/// Runs traces for the scheduler, within the agent's bounds.
#[derive(Debug, Clone)]
pub struct PathTracer {
    settings: Arc<PathSettings>,
    permits: Arc<Semaphore>,
}

impl PathTracer {
    pub fn new(settings: PathSettings) -> Self {
        let permits = Arc::new(Semaphore::new(usize::from(settings.max_concurrent.max(1))));
        Self {
            settings: Arc::new(settings),
            permits,
        }
    }

    /// Traces from `vantage` to where each of `results` went and attaches
    /// the trace (one trace per distinct destination).
    pub async fn attach<T>(&self, vantage: &Vantage, probed: &mut [Probed<T>]) {
        let mut traced: Vec<(Result<PathTarget, String>, PathTrace)> = Vec::new();
        for result in probed.iter_mut().map(|p| &mut p.result) {
            let target = target_of(result, vantage);
            if let Some((_, trace)) = traced.iter().find(|(t, _)| *t == target) {
                result.path = Some(trace.clone());
                continue;
            }
            let trace = match &target {
                Ok(target) => {
                    let _permit = self.permits.acquire().await;
                    super::trace(*target, &self.settings).await
                }
                Err(why) => untraceable(vantage, &self.settings, why),
            };
            tracing::debug!(
                vantage = %vantage.name,
                destination = ?trace.target.destination,
                end = ?trace.end,
                hops = trace.probes.iter().map(|p| p.ttl).max().unwrap_or(0),
                "Path traced."
            );
            result.path = Some(trace.clone());
            traced.push((target, trace));
        }
    }
}

/// Where a trace for `result` goes: the vantage's proxy (beyond which the
/// site is out of sight), else the address the probe dialled.
fn target_of(result: &ProbeResult, vantage: &Vantage) -> Result<PathTarget, String> {
    if let Some(proxy) = &vantage.proxy {
        let ip = result.proxy_ip.ok_or_else(|| {
            format!(
                "the vantage's forward proxy {} was never reached, so there is no address to trace to",
                proxy.redacted()
            )
        })?;
        return Ok(PathTarget {
            source: vantage.source_ip,
            destination: SocketAddr::new(ip, proxy.port),
            via_proxy: true,
        });
    }
    let destination = result.dialed.ok_or_else(|| {
        if result.resolved.is_empty() {
            format!(
                "the probe dialled no address: the name did not resolve ({})",
                if result.message.is_empty() {
                    "no answer"
                } else {
                    result.message.as_str()
                }
            )
        } else {
            "the probe dialled no address".to_owned()
        }
    })?;
    Ok(PathTarget {
        source: vantage.source_ip,
        destination,
        via_proxy: false,
    })
}

/// The record of a trace that could not start, saying why.
fn untraceable(vantage: &Vantage, settings: &PathSettings, why: &str) -> PathTrace {
    PathTrace {
        protocol: settings.protocol,
        source: vantage.source_ip,
        target: PathTarget {
            source: vantage.source_ip,
            // Unspecified: there was nowhere to go (the wire leaves it
            // empty).
            destination: SocketAddr::from(([0, 0, 0, 0], 0)),
            via_proxy: vantage.proxy.is_some(),
        },
        probes: Vec::new(),
        end: PathEnd::Error,
        error: Some(why.to_owned()),
        path_mtu: None,
        mtu_from: None,
        black_hole: None,
        port_answered_at: None,
        port: super::PortCheck::default(),
        duration: Duration::ZERO,
    }
}
