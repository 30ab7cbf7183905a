//! The gate's caps and evictions, without sockets.

use super::*;

fn limits(max: usize, unproven: usize, per_source: usize) -> Limits {
    Limits {
        max_connections: max,
        max_unproven: unproven,
        max_unproven_per_source: per_source,
        handshake_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        busy_timeout: Duration::from_secs(1),
        unproven_read_budget: 1024,
    }
}

fn peer(host: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 3, host], port))
}

#[test]
fn a_flood_from_one_source_only_displaces_itself() {
    let gate = Gate::new("test", limits(10, 5, 3));
    let agent = gate.admit(peer(1, 1)).unwrap();
    let flood: Vec<_> = (0..100).map(|p| gate.admit(peer(2, p)).unwrap()).collect();
    assert!(!agent.is_evicted());
    // The source keeps its three newest.
    assert_eq!(flood.iter().filter(|c| !c.is_evicted()).count(), 3);
    assert!(flood[97..].iter().all(|c| !c.is_evicted()));
    assert_eq!(gate.counts(), (4, 4));
}

#[test]
fn the_heaviest_source_makes_room_and_busy_connections_are_never_evicted() {
    let gate = Gate::new("test", limits(6, 3, 3));
    let busy_conn = gate.admit(peer(1, 1)).unwrap();
    let _busy = gate.busy(&busy_conn).unwrap();
    let a: Vec<_> = (0..3).map(|p| gate.admit(peer(2, p)).unwrap()).collect();
    // The unproven cap is reached: the new source's arrival evicts the
    // oldest of the heaviest source, not its own kind's only member.
    let lone = gate.admit(peer(3, 1)).unwrap();
    assert!(a[0].is_evicted() && !a[1].is_evicted());
    let again = gate.admit(peer(4, 1)).unwrap();
    assert!(a[1].is_evicted() && !lone.is_evicted() && !again.is_evicted());
    assert!(!busy_conn.is_evicted());
    assert_eq!(gate.counts(), (4, 3));
}

#[test]
fn when_every_place_is_busy_a_new_connection_is_refused() {
    let gate = Gate::new("test", limits(2, 1, 1));
    let (a, b) = (
        gate.admit(peer(1, 1)).unwrap(),
        gate.admit(peer(2, 1)).unwrap(),
    );
    assert!(a.is_evicted(), "the unproven cap is 1");
    let _busy_b = gate.busy(&b).unwrap();
    let c = gate.admit(peer(3, 1)).unwrap();
    let _busy_c = gate.busy(&c).unwrap();
    assert!(gate.admit(peer(4, 1)).is_none());
    // A busy connection that goes idle becomes evictable again.
    drop(_busy_c);
    assert!(gate.admit(peer(4, 1)).is_some());
    assert!(c.is_evicted());
    gate.release(&b);
    assert_eq!(gate.counts(), (1, 1));
}

#[test]
fn sources_are_ipv4_addresses_and_ipv6_prefixes() {
    let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
    assert_eq!(Source::of(mapped), Source::of([127, 0, 0, 1].into()));
    let a: IpAddr = "2001:db8::1".parse().unwrap();
    let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
    let c: IpAddr = "2001:db8:0:1::1".parse().unwrap();
    assert_eq!(Source::of(a), Source::of(b));
    assert_ne!(Source::of(a), Source::of(c));
}
