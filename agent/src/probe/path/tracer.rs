//! Tracing the paths a round of probes took: from the vantage's source
//! address to each address its probes dialled (or to its forward proxy),
//! each destination once, attached to the results before they are queued.
//! The agent's `[path]` settings bound every trace; `max_concurrent`
//! bounds how many run at once across all vantages.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Semaphore};

use super::{PathEnd, PathSettings, PathTarget, PathTrace};
use crate::probe::ProbeResult;
use crate::probe::http::Probed;
use crate::probe::vantage::Vantage;

/// Runs traces for the scheduler, within the agent's bounds.
#[derive(Debug, Clone)]
pub struct PathTracer {
    settings: Arc<PathSettings>,
    permits: Arc<Semaphore>,
    /// One trace at a time per (source, destination): two at once would
    /// share the routers' ICMP allowance for that source, and each would
    /// see answers the other used up as losses. Whoever asks while one
    /// runs gets its result.
    running: Arc<std::sync::Mutex<HashMap<PathKey, Slot>>>,
}

type PathKey = (Option<IpAddr>, SocketAddr);

/// The last trace of one path and when it finished; locked while one runs.
type Slot = Arc<Mutex<Option<(Instant, PathTrace)>>>;

impl PathTracer {
    pub fn new(settings: PathSettings) -> Self {
        let permits = Arc::new(Semaphore::new(usize::from(settings.max_concurrent.max(1))));
        Self {
            settings: Arc::new(settings),
            permits,
            running: Arc::default(),
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
                Ok(target) => self.trace_once(target).await,
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

impl PathTracer {
    /// Traces to `target`, or, when a trace to it was already running
    /// when asked, takes that one's result.
    async fn trace_once(&self, target: &PathTarget) -> PathTrace {
        let asked = Instant::now();
        let slot = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            running.retain(|_, slot| Arc::strong_count(slot) > 1);
            running
                .entry((target.source, target.destination))
                .or_default()
                .clone()
        };
        let mut last = slot.lock().await;
        if let Some((finished, trace)) = last.as_ref()
            && *finished >= asked
        {
            return trace.clone();
        }
        let _permit = self.permits.acquire().await;
        let trace = super::trace(*target, &self.settings).await;
        *last = Some((Instant::now(), trace.clone()));
        trace
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
