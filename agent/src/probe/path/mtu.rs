//! The path-MTU black hole: routers on a smaller-MTU link that drop large
//! packets without the ICMP "fragmentation needed" that would say so. The
//! hop pass sees it as a hop whose large probes all vanish while a small
//! one is answered; [`search`] then brackets the size that still crosses.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::socket::{self, Probed, Reply};
use super::{BlackHole, HopProbe, PathTarget};

/// The first TTL whose large probes all went unanswered while a small one
/// was answered.
pub(super) fn black_hole_hop(probes: &[HopProbe], small: u32) -> Option<u8> {
    let mut ttls: Vec<u8> = probes.iter().map(|p| p.ttl).collect();
    ttls.dedup();
    ttls.into_iter().find(|ttl| {
        let of_hop = || probes.iter().filter(|p| p.ttl == *ttl);
        let large_lost = of_hop()
            .filter(|p| p.size > small)
            .all(|p| p.reply.is_none())
            && of_hop().any(|p| p.size > small);
        let small_passed = of_hop().any(|p| p.size <= small && p.reply.is_some());
        large_lost && small_passed
    })
}

/// Sizes closer than this are not told apart (IPv4 fragments are
/// multiples of 8 bytes).
const RESOLUTION: u32 = 8;

/// Routers answer one source about once a second after a short burst:
/// search probes that are answered are spaced by this, so a lost answer
/// means a lost probe.
const SPACING: Duration = Duration::from_millis(1000);

/// Brackets the largest size that reaches hop `ttl`, between the small
/// probe that did and `large`, which did not: a binary search with one
/// probe per step (a lost one is tried once more: a router that limits
/// its ICMP errors loses answers too), confirmed by `large` failing again
/// at the end (a hop that was only slow to answer is no black hole).
pub(super) async fn search(
    target: &PathTarget,
    ttl: u8,
    large: u32,
    timeout: Duration,
    deadline: Instant,
) -> Option<BlackHole> {
    let small = super::small_size(target.destination.ip());
    let (mut passed, mut lost) = (small, large);
    let mut port = 33434u16 + 1000;
    let mut probe = async |size: u32| -> Option<bool> {
        if Instant::now() + timeout > deadline {
            return None;
        }
        port = port.wrapping_add(1);
        let destination = SocketAddr::new(target.destination.ip(), port);
        let probed = socket::udp(target.source, destination, ttl, size, timeout)
            .await
            .ok()?;
        let crossed = match probed {
            Probed::Answer(a) => a.reply != Reply::FragNeeded,
            Probed::Silent | Probed::TooLarge { .. } => false,
        };
        if crossed {
            tokio::time::sleep(SPACING).await;
        }
        Some(crossed)
    };
    while lost - passed > RESOLUTION {
        let mid = passed + (lost - passed) / 2;
        let crossed = match probe(mid).await {
            Some(false) => {
                tokio::time::sleep(SPACING).await;
                probe(mid).await
            }
            other => other,
        };
        match crossed {
            Some(true) => passed = mid,
            Some(false) => lost = mid,
            None => break,
        }
    }
    // Confirmed only if the large size still does not cross.
    match probe(large).await {
        Some(false) | None => Some(BlackHole {
            after_ttl: ttl.saturating_sub(1),
            largest_passed: passed,
            smallest_lost: lost,
        }),
        Some(true) => None,
    }
}
