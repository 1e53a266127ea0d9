//! The uploader's connection slots: how many connections are open, from
//! which address and address range, and how idle each is, so a newcomer
//! can take the place of the idlest (or of one of a host holding many).
//! Pure bookkeeping: it never reads or writes a socket; the server asks
//! [`Slots::admit`] and closes what it is told to through [`Slot::evicted`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::server::ServerLimits;

/// The address range a connection counts against: the /24 of an IPv4
/// address, the /64 of an IPv6 one (one host can hold a whole /64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Range {
    V4([u8; 3]),
    V6([u8; 8]),
}

fn range_of(ip: IpAddr) -> Range {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Range::V4([o[0], o[1], o[2]])
        }
        IpAddr::V6(v6) => {
            let mut r = [0u8; 8];
            r.copy_from_slice(&v6.octets()[..8]);
            Range::V6(r)
        }
    }
}

/// When a connection last did something: read a request or sent bytes.
pub(super) struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new(epoch: Instant) -> Activity {
        let a = Activity {
            epoch,
            last_ms: AtomicU64::new(0),
        };
        a.touch();
        a
    }

    pub(super) fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the connection has done nothing, as of `now_ms`.
    fn idle_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_ms.load(Ordering::Relaxed))
    }
}

/// The connection slots: how many are open, from which address and range,
/// and how idle each is, so a newcomer can take the place of the idlest.
pub(super) struct Slots {
    limits: ServerLimits,
    epoch: Instant,
    inner: std::sync::Mutex<SlotsInner>,
    /// Poked when a connection ends.
    pub(super) freed: Notify,
}

#[derive(Default)]
struct SlotsInner {
    next: u64,
    open: HashMap<u64, Open>,
    per_address: HashMap<IpAddr, usize>,
    per_range: HashMap<Range, usize>,
}

struct Open {
    ip: IpAddr,
    range: Range,
    activity: Arc<Activity>,
    evict: CancellationToken,
}

/// One open connection's place; released on drop.
pub(super) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    pub(super) activity: Arc<Activity>,
    /// Fires when the connection must close to admit a newcomer.
    pub(super) evicted: CancellationToken,
}

pub(super) enum Admit {
    Admitted(Slot),
    /// Refused at once, for this reason.
    Refused(Refusal),
    /// Every slot is taken by a connection too busy to close: retry later.
    Full,
}

/// Why a connection was refused at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Its address holds `max_per_address` connections.
    AddressFull,
    /// Its range holds `max_per_range` connections, none idle enough to close.
    RangeBusy,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::AddressFull => "too many connections from this address",
            Refusal::RangeBusy => "too many busy connections from this address range",
        })
    }
}

impl Slots {
    pub(super) fn new(limits: ServerLimits) -> Arc<Slots> {
        Arc::new(Slots {
            limits,
            epoch: Instant::now(),
            inner: Default::default(),
            freed: Notify::new(),
        })
    }

    /// Finds a place for a connection from `ip` at `now`, closing an idle (or an
    /// over-represented) connection when its range or the whole server is full.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Admit {
        let ip = ip.to_canonical();
        let range = range_of(ip);
        let now = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let mut g = self.inner.lock().expect("slots lock");
        let from_ip = g.per_address.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.limits.max_per_address {
            return Admit::Refused(Refusal::AddressFull);
        }
        if g.per_range.get(&range).copied().unwrap_or(0) >= self.limits.max_per_range {
            match self.victim(&g, now, from_ip, |o| o.range == range) {
                Some(v) => g.evict(v),
                None => return Admit::Refused(Refusal::RangeBusy),
            }
        }
        if g.open.len() >= self.limits.max_connections {
            match self.victim(&g, now, from_ip, |_| true) {
                Some(v) => g.evict(v),
                None => return Admit::Full,
            }
        }
        g.next += 1;
        let id = g.next;
        let activity = Arc::new(Activity::new(self.epoch));
        let evicted = CancellationToken::new();
        g.open.insert(
            id,
            Open {
                ip,
                range,
                activity: activity.clone(),
                evict: evicted.clone(),
            },
        );
        *g.per_address.entry(ip).or_insert(0) += 1;
        *g.per_range.entry(range).or_insert(0) += 1;
        Admit::Admitted(Slot {
            slots: self.clone(),
            id,
            activity,
            evicted,
        })
    }

    /// The connection to close among those `eligible`, for a newcomer from
    /// an address that holds `from_ip` connections: the idlest, if it has
    /// been idle for `evict_after`; otherwise the idlest of the address
    /// holding the most connections, if that is more than the newcomer's
    /// address would hold (so a host with many busy connections yields to
    /// one with few, and an honest peer's only connection is never taken).
    fn victim(
        &self,
        g: &SlotsInner,
        now: u64,
        from_ip: usize,
        eligible: impl Fn(&Open) -> bool,
    ) -> Option<u64> {
        let idle_enough = self.limits.evict_after.as_millis() as u64;
        let idlest = g
            .open
            .iter()
            .filter(|(_, o)| eligible(o))
            .max_by_key(|(_, o)| o.activity.idle_ms(now))?;
        if idlest.1.activity.idle_ms(now) >= idle_enough {
            return Some(*idlest.0);
        }
        let (hog, held) = g
            .open
            .values()
            .filter(|o| eligible(o))
            .map(|o| (o.ip, g.per_address.get(&o.ip).copied().unwrap_or(0)))
            .max_by_key(|(_, n)| *n)?;
        if held <= from_ip + 1 {
            return None;
        }
        g.open
            .iter()
            .filter(|(_, o)| o.ip == hog)
            .max_by_key(|(_, o)| o.activity.idle_ms(now))
            .map(|(id, _)| *id)
    }

    /// Open connections (for tests and logs).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().expect("slots lock").open.len()
    }
}

impl SlotsInner {
    /// Forgets connection `id` (its place is free at once) and returns it.
    fn remove(&mut self, id: u64) -> Option<Open> {
        let o = self.open.remove(&id)?;
        decrement(&mut self.per_address, o.ip);
        decrement(&mut self.per_range, o.range);
        Some(o)
    }

    /// Closes connection `id` to make room: its place is free at once.
    fn evict(&mut self, id: u64) {
        if let Some(o) = self.remove(id) {
            o.evict.cancel();
        }
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let removed = self
            .slots
            .inner
            .lock()
            .expect("slots lock")
            .remove(self.id)
            .is_some();
        if removed {
            self.slots.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Slots whose clock started 100 s ago, so a connection can be made
    /// idle by setting its last activity to 0.
    fn slots(max: usize, per_address: usize, per_range: usize) -> Arc<Slots> {
        Arc::new(Slots {
            limits: ServerLimits {
                max_connections: max,
                max_per_address: per_address,
                max_per_range: per_range,
                ..ServerLimits::default()
            },
            epoch: Instant::now() - Duration::from_secs(100),
            inner: Default::default(),
            freed: Notify::new(),
        })
    }

    fn take(slots: &Arc<Slots>, ip: &str) -> Slot {
        match slots.admit(ip.parse().unwrap(), Instant::now()) {
            Admit::Admitted(s) => s,
            Admit::Refused(why) => panic!("{ip} refused: {why}"),
            Admit::Full => panic!("{ip}: full"),
        }
    }

    fn idle(slot: &Slot) {
        slot.activity.last_ms.store(0, Ordering::Relaxed);
    }

    #[test]
    fn per_address_slots_are_capped_and_released() {
        let slots = slots(64, 2, 64);
        let a = take(&slots, "10.0.0.1");
        let _b = take(&slots, "10.0.0.1");
        assert!(matches!(
            slots.admit("10.0.0.1".parse().unwrap(), Instant::now()),
            Admit::Refused(_)
        ));
        // An IPv4-mapped address is the same address.
        assert!(matches!(
            slots.admit("::ffff:10.0.0.1".parse().unwrap(), Instant::now()),
            Admit::Refused(_)
        ));
        let _c = take(&slots, "10.0.0.2");
        drop(a);
        let _d = take(&slots, "10.0.0.1");
        assert_eq!(slots.len(), 3);
    }

    #[test]
    fn a_full_server_closes_the_idlest_connection_for_a_newcomer() {
        let slots = slots(4, 4, 64);
        let held: Vec<Slot> = (2..=5)
            .map(|i| take(&slots, &format!("10.0.{i}.1")))
            .collect();
        // All busy and one each: the newcomer waits.
        assert!(matches!(
            slots.admit("10.0.9.1".parse().unwrap(), Instant::now()),
            Admit::Full
        ));
        idle(&held[1]);
        idle(&held[2]);
        held[2].activity.last_ms.store(10, Ordering::Relaxed);
        let _new = take(&slots, "10.0.9.1");
        assert!(held[1].evicted.is_cancelled(), "the idlest is closed");
        assert!(!held[2].evicted.is_cancelled() && !held[0].evicted.is_cancelled());
        assert_eq!(slots.len(), 4);
        // The evicted connection's slot is already free: dropping it later
        // does not free a second place.
        drop(held);
        assert_eq!(slots.len(), 1);
    }

    #[test]
    fn a_host_with_many_busy_connections_yields_to_one_with_few() {
        let slots = slots(4, 4, 64);
        let hog: Vec<Slot> = (0..3).map(|_| take(&slots, "10.0.1.1")).collect();
        let honest = take(&slots, "10.0.2.1");
        // Nothing idle, but 10.0.1.1 holds 3: a newcomer takes one of those.
        let _new = take(&slots, "10.0.3.1");
        assert_eq!(hog.iter().filter(|s| s.evicted.is_cancelled()).count(), 1);
        assert!(!honest.evicted.is_cancelled());
        // Now 2, 1, 1: the hog holds 2, a newcomer would hold 1; still one more.
        let _new2 = take(&slots, "10.0.4.1");
        assert!(!honest.evicted.is_cancelled());
        // 1 each: nobody busy is taken for a newcomer.
        assert!(matches!(
            slots.admit("10.0.5.1".parse().unwrap(), Instant::now()),
            Admit::Full
        ));
        assert!(!honest.evicted.is_cancelled());
    }

    #[test]
    fn one_address_range_is_capped_and_makes_room_from_its_own_idle_connections() {
        let slots = slots(64, 16, 3);
        let a = take(&slots, "192.168.1.10");
        let b = take(&slots, "192.168.1.11");
        let c = take(&slots, "192.168.1.12");
        // The range is full and every connection busy: refused.
        assert!(matches!(
            slots.admit("192.168.1.13".parse().unwrap(), Instant::now()),
            Admit::Refused(_)
        ));
        // Another range is not affected.
        let other = take(&slots, "192.168.2.10");
        idle(&other);
        // An idle connection in the range makes room; the other range's
        // idler one is left alone.
        idle(&b);
        b.activity.last_ms.store(50, Ordering::Relaxed);
        let _d = take(&slots, "192.168.1.13");
        assert!(b.evicted.is_cancelled());
        assert!(!a.evicted.is_cancelled() && !c.evicted.is_cancelled());
        assert!(!other.evicted.is_cancelled());
        // IPv6: a /64 is one range.
        let v6: Vec<Slot> = (1..=3)
            .map(|i| take(&slots, &format!("2001:db8::{i}")))
            .collect();
        assert!(matches!(
            slots.admit("2001:db8::ffff".parse().unwrap(), Instant::now()),
            Admit::Refused(_)
        ));
        let _e = take(&slots, "2001:db8:0:1::1");
        drop(v6);
    }
}
