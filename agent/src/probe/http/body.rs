//! Reading a response body within the probe's deadline: at most the
//! check's `body_hash_bytes`, hashed as it arrives, the first bytes kept
//! for the gateway signatures, and how it ended: whole, broken, or out of
//! time, and then whether it had stalled (nothing for a while before the
//! deadline) or was still flowing.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tokio::time::{Instant as TokioInstant, timeout_at};

use super::super::gateway::BODY_WINDOW;

pub(super) enum BodyError {
    /// The deadline came; nothing had arrived for `stalled_for` before it.
    Timeout {
        stalled_for: Duration,
    },
    Broken(String),
}

/// How long a body must have been silent at the deadline to have stalled
/// rather than been slow: a quarter of the timeout, at least a second.
pub(super) fn stall_threshold(timeout: Duration) -> Duration {
    (timeout / 4).max(Duration::from_secs(1))
}

/// What was read of a body.
pub(super) struct Body {
    pub(super) bytes: u64,
    pub(super) sha256: String,
    pub(super) truncated: bool,
    /// The first bytes, for the gateway signatures (all of them when
    /// asked to keep all).
    pub(super) window: Vec<u8>,
    pub(super) error: Option<BodyError>,
}

/// Reads at most `limit` bytes of `body`, hashing them; never more, so an
/// endless body costs `limit` bytes and the check's timeout at most. The
/// first [`BODY_WINDOW`] bytes are kept, or all of them with `keep_all`
/// (a check matching patterns against the body).
pub(super) async fn read_body(
    mut body: Incoming,
    limit: usize,
    keep_all: bool,
    deadline: TokioInstant,
) -> Body {
    let window_limit = if keep_all { limit } else { BODY_WINDOW };
    let mut hasher = Sha256::new();
    let mut read = 0usize;
    let mut window = Vec::new();
    let mut truncated = false;
    let mut error = None;
    let mut last_progress = TokioInstant::now();
    while read < limit {
        match timeout_at(deadline, body.frame()).await {
            Err(_) => {
                error = Some(BodyError::Timeout {
                    stalled_for: last_progress.elapsed(),
                });
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                error = Some(BodyError::Broken(e.to_string()));
                break;
            }
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers
                };
                last_progress = TokioInstant::now();
                let take = data.len().min(limit - read);
                if take < data.len() {
                    truncated = true;
                }
                let chunk = &data[..take];
                hasher.update(chunk);
                if window.len() < window_limit {
                    let room = window_limit - window.len();
                    window.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                read += take;
            }
        }
    }
    if error.is_none() && read >= limit && !hyper::body::Body::is_end_stream(&body) {
        truncated = true;
    }
    Body {
        bytes: u64::try_from(read).unwrap_or(u64::MAX),
        sha256: hex::encode(hasher.finalize()),
        truncated,
        window,
        error,
    }
}
