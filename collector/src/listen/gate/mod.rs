//! Who holds a listener's connection slots. A connection is *busy* while
//! it does work for someone known (an authenticated stream on the gRPC
//! port, a request in flight on the HTTP port) and *unproven* otherwise.
//! Unproven connections have their own caps, in all and per source, below
//! the listener's; when a new connection needs room, the oldest unproven
//! connection of the source holding the most is evicted, so a flood of
//! tokenless connections only ever displaces itself, and a busy connection
//! is never displaced. Each connection's I/O ([`super::io::BoundedIo`])
//! watches its [`Conn`] for eviction and for changes between busy and
//! unproven, which set its deadlines.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

/// At most one log line per this, per listener and kind of event.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// How many connections a listener holds and how long each may dawdle.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once, busy or not.
    pub max_connections: usize,
    /// Unproven connections open at once (below `max_connections`: the
    /// rest is the busy connections' reserve).
    pub max_unproven: usize,
    /// Unproven connections from one source (an IPv4 address or an IPv6
    /// /64) open at once.
    pub max_unproven_per_source: usize,
    /// A new connection must be busy within this, whatever it sends.
    pub handshake_timeout: Duration,
    /// A connection that was busy and no longer is is closed this long
    /// after; a busy one, after this long without a byte either way.
    pub idle_timeout: Duration,
    /// How long a connection that just became busy may go without a byte
    /// (an HTTP page being computed, a stream's first message).
    pub busy_timeout: Duration,
    /// Bytes an unproven connection may send (TLS, HTTP/2 preface,
    /// SETTINGS, PINGs, headers) before it is closed as a flood.
    pub unproven_read_budget: u64,
}

impl Limits {
    /// `max_unproven` and its per-source cap fitted under
    /// `max_connections` (at least one each).
    pub fn fitted(mut self) -> Self {
        self.max_connections = self.max_connections.max(1);
        self.max_unproven = self
            .max_unproven
            .clamp(1, self.max_connections.div_ceil(2).max(1));
        self.max_unproven_per_source = self.max_unproven_per_source.clamp(1, self.max_unproven);
        self
    }
}

/// The key connections are counted under per source: an IPv4 address, or
/// an IPv6 /64 (one host's usual allocation); an IPv4-mapped IPv6 address
/// counts as its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Self(IpAddr::V6(prefix.into()))
            }
        }
    }
}

/// One open connection, as its I/O and its holders see it.
#[derive(Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    id: u64,
    busy: AtomicBool,
    /// Bumped at each change between busy and unproven, so the I/O notices
    /// a change even when it happened and reverted between two polls.
    phase: AtomicU64,
    evicted: AtomicBool,
    waker: AtomicWaker,
}

impl Conn {
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    pub fn phase(&self) -> u64 {
        self.phase.load(Ordering::Acquire)
    }

    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Wakes the I/O's task on eviction or a change of phase.
    pub fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    fn changed(&self) {
        self.phase.fetch_add(1, Ordering::AcqRel);
        self.waker.wake();
    }
}

/// Why a connection had to make room.
#[derive(Debug, Clone, Copy)]
enum Eviction {
    /// Its source held the most unproven connections allowed.
    PerSource,
    /// The unproven connections were at their cap.
    Unproven,
    /// The listener was full.
    Full,
}

impl Eviction {
    fn as_str(self) -> &'static str {
        match self {
            Self::PerSource => "per_source",
            Self::Unproven => "unproven",
            Self::Full => "full",
        }
    }
}

/// A listener's table of connections; see the module doc.
#[derive(Debug)]
pub struct Gate {
    name: &'static str,
    limits: Limits,
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Entry {
    conn: Arc<Conn>,
    source: Source,
    /// Holders keeping it busy.
    busy: usize,
    /// Its key in [`Table::unproven`] while unproven.
    unproven_since: Option<u64>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    next_seq: u64,
    entries: HashMap<u64, Entry>,
    by_peer: HashMap<SocketAddr, u64>,
    /// Unproven connections by when they became so: sequence → id.
    unproven: BTreeMap<u64, u64>,
    /// The same, per source.
    per_source: HashMap<Source, BTreeSet<u64>>,
    last_logged: HashMap<&'static str, Instant>,
}

/// Keeps a connection busy while held: taken for an authenticated stream
/// or a request in flight.
#[derive(Debug)]
pub struct Busy {
    gate: Arc<Gate>,
    conn: Arc<Conn>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.gate.set_idle(&self.conn);
    }
}

impl Gate {
    pub fn new(name: &'static str, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            name,
            limits: limits.fitted(),
            table: Mutex::new(Table::default()),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection from `peer`, evicting unproven ones to
    /// make room; `None` when every place is held by a busy connection.
    pub fn admit(&self, peer: SocketAddr) -> Option<Arc<Conn>> {
        let source = Source::of(peer.ip());
        let mut table = self.lock();
        let limits = &self.limits;
        if table.per_source.get(&source).map_or(0, BTreeSet::len) >= limits.max_unproven_per_source
        {
            self.evict_oldest_of(&mut table, source, Eviction::PerSource);
        }
        while table.unproven.len() >= limits.max_unproven {
            if !self.evict_from_heaviest(&mut table, Eviction::Unproven) {
                break;
            }
        }
        while table.entries.len() >= limits.max_connections {
            if !self.evict_from_heaviest(&mut table, Eviction::Full) {
                drop(table);
                return None;
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let conn = Arc::new(Conn {
            peer,
            id,
            busy: AtomicBool::new(false),
            phase: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        table.entries.insert(
            id,
            Entry {
                conn: conn.clone(),
                source,
                busy: 0,
                unproven_since: None,
            },
        );
        table.by_peer.insert(peer, id);
        Self::mark_unproven(&mut table, id);
        self.gauge(&table);
        Some(conn)
    }

    /// The open connection from `peer` (the gRPC service finds its
    /// stream's connection by the peer address tonic reports).
    pub fn find(&self, peer: SocketAddr) -> Option<Arc<Conn>> {
        let table = self.lock();
        let id = table.by_peer.get(&peer)?;
        table.entries.get(id).map(|e| e.conn.clone())
    }

    /// Keeps `conn` busy until the guard drops; `None` when it was
    /// evicted or closed meanwhile.
    pub fn busy(self: &Arc<Self>, conn: &Arc<Conn>) -> Option<Busy> {
        let mut table = self.lock();
        let entry = table.entries.get_mut(&conn.id)?;
        entry.busy += 1;
        if entry.busy == 1 {
            let since = entry.unproven_since.take();
            let source = entry.source;
            if let Some(seq) = since {
                table.unproven.remove(&seq);
                Self::forget_source_seq(&mut table, source, seq);
            }
            conn.busy.store(true, Ordering::Release);
            drop(table);
            conn.changed();
        }
        Some(Busy {
            gate: self.clone(),
            conn: conn.clone(),
        })
    }

    fn set_idle(&self, conn: &Arc<Conn>) {
        let mut table = self.lock();
        let Some(entry) = table.entries.get_mut(&conn.id) else {
            return;
        };
        entry.busy = entry.busy.saturating_sub(1);
        if entry.busy == 0 {
            conn.busy.store(false, Ordering::Release);
            Self::mark_unproven(&mut table, conn.id);
            drop(table);
            conn.changed();
        }
    }

    /// Forgets a closed connection (its I/O dropped).
    pub fn release(&self, conn: &Conn) {
        let mut table = self.lock();
        if Self::remove(&mut table, conn.id).is_some() {
            self.gauge(&table);
        }
    }

    fn mark_unproven(table: &mut Table, id: u64) {
        let seq = table.next_seq;
        table.next_seq += 1;
        let Some(entry) = table.entries.get_mut(&id) else {
            return;
        };
        entry.unproven_since = Some(seq);
        let source = entry.source;
        table.unproven.insert(seq, id);
        table.per_source.entry(source).or_default().insert(seq);
    }

    fn forget_source_seq(table: &mut Table, source: Source, seq: u64) {
        if let Some(seqs) = table.per_source.get_mut(&source) {
            seqs.remove(&seq);
            if seqs.is_empty() {
                table.per_source.remove(&source);
            }
        }
    }

    fn remove(table: &mut Table, id: u64) -> Option<Entry> {
        let entry = table.entries.remove(&id)?;
        if table.by_peer.get(&entry.conn.peer) == Some(&id) {
            table.by_peer.remove(&entry.conn.peer);
        }
        if let Some(seq) = entry.unproven_since {
            table.unproven.remove(&seq);
            Self::forget_source_seq(table, entry.source, seq);
        }
        Some(entry)
    }

    /// Evicts the oldest unproven connection of the source holding the
    /// most (the oldest of all among equals); false when there is none.
    fn evict_from_heaviest(&self, table: &mut Table, why: Eviction) -> bool {
        let heaviest = table
            .per_source
            .iter()
            .filter_map(|(source, seqs)| {
                Some((seqs.len(), std::cmp::Reverse(*seqs.first()?), *source))
            })
            .max()
            .map(|(_, _, source)| source);
        match heaviest {
            Some(source) => self.evict_oldest_of(table, source, why),
            None => false,
        }
    }

    fn evict_oldest_of(&self, table: &mut Table, source: Source, why: Eviction) -> bool {
        let Some(seq) = table
            .per_source
            .get(&source)
            .and_then(|s| s.first().copied())
        else {
            return false;
        };
        let Some(id) = table.unproven.get(&seq).copied() else {
            return false;
        };
        let Some(entry) = Self::remove(table, id) else {
            return false;
        };
        entry.conn.evicted.store(true, Ordering::Release);
        entry.conn.waker.wake();
        metrics::counter!(
            "vantage_connections_evicted_total",
            "listener" => self.name,
            "reason" => why.as_str()
        )
        .increment(1);
        let message = match why {
            Eviction::PerSource => format!(
                "Evicting connections that have not authenticated: one source holds {}, the \
                 most allowed per source",
                self.limits.max_unproven_per_source
            ),
            Eviction::Unproven => format!(
                "Evicting connections that have not authenticated: {} are open, the most allowed",
                self.limits.max_unproven
            ),
            Eviction::Full => format!(
                "Evicting connections that have not authenticated: the listener holds {}, the \
                 most allowed",
                self.limits.max_connections
            ),
        };
        self.log_once_a_minute(table, why.as_str(), &message, &entry.conn.peer);
        true
    }

    /// Counts a connection refused because every place is busy.
    pub fn record_refusal(&self, reason: &'static str, message: &str, peer: &SocketAddr) {
        metrics::counter!(
            "vantage_connections_refused_total",
            "listener" => self.name,
            "reason" => reason
        )
        .increment(1);
        let mut table = self.lock();
        self.log_once_a_minute(&mut table, reason, message, peer);
    }

    fn log_once_a_minute(
        &self,
        table: &mut Table,
        kind: &'static str,
        message: &str,
        peer: &SocketAddr,
    ) {
        let now = Instant::now();
        let last = table.last_logged.get(kind);
        if last.is_none_or(|at| now.duration_since(*at) >= LOG_EVERY) {
            table.last_logged.insert(kind, now);
            tracing::error!(
                listener = self.name,
                reason = kind,
                %peer,
                "{message} (logged once a minute; vantage_connections_evicted_total and \
                 vantage_connections_refused_total count them all)"
            );
        }
    }

    fn gauge(&self, table: &Table) {
        metrics::gauge!("vantage_connections_open", "listener" => self.name)
            .set(table.entries.len() as f64);
        metrics::gauge!("vantage_connections_unproven", "listener" => self.name)
            .set(table.unproven.len() as f64);
    }

    /// Open connections and unproven ones among them.
    #[cfg(test)]
    pub fn counts(&self) -> (usize, usize) {
        let table = self.lock();
        (table.entries.len(), table.unproven.len())
    }
}

#[cfg(test)]
mod tests;
