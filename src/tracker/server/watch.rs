//! `GET /v1/watch`, the long poll: a node asks whether its swarm's peer
//! list changed after the sequence number it last read; the tracker
//! answers at once when it did, else when a commit changes it, else after
//! the wait asked for (at most [`MAX_WATCH_SECS`]). The answer is a few
//! dozen bytes; the node then reads the change with `/v1/peers`.
//!
//! Waiting costs a connection and a task, no database work (the writer's
//! [`Changes`] is in memory) and no request slot of the admission limits:
//! [`Watchers`] bounds how many wait, per source address and in all, and
//! refuses the rest at once (429 / 503), so a flood of watchers cannot
//! hold more than its share. Never reads or writes a row.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;

use super::{ApiError, ApiQuery, AppState, RemoteAddr};
use crate::tracker::db::{Changes, Verdict};
use crate::tracker::proto::{MAX_WATCH_SECS, WatchQuery, WatchResponse};

/// How many watchers wait, in all and per source address.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Only address keys ([`quota_key`]) with a watcher waiting: never
    /// more entries than `total`.
    by_addr: HashMap<IpAddr, usize>,
}

/// The bound on waiting watchers.
#[derive(Debug)]
pub struct Watchers {
    max_total: usize,
    max_per_address: usize,
    counts: Mutex<Counts>,
}

/// Why a watcher was not let in.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its address holds its quota of waiting watchers (429).
    Address,
    /// The tracker holds its total (503).
    Total,
}

/// A waiting watcher's place; freed when dropped (the answer sent, or the
/// client gone and the handler dropped).
pub struct WatchSlot {
    watchers: Arc<Watchers>,
    addr: IpAddr,
}

impl Watchers {
    pub fn new(max_total: usize, max_per_address: usize) -> Arc<Watchers> {
        Arc::new(Watchers {
            max_total: max_total.max(1),
            max_per_address: max_per_address.max(1),
            counts: Mutex::default(),
        })
    }

    /// A place for a watcher from `addr`, if its address (an IPv6
    /// address's /64) and the tracker have room.
    pub fn enter(self: &Arc<Self>, addr: IpAddr) -> Result<WatchSlot, Refused> {
        let addr = quota_key(addr);
        // Never held across an await.
        let mut c = self.counts.lock().expect("watchers lock");
        if c.by_addr.get(&addr).copied().unwrap_or(0) >= self.max_per_address {
            return Err(Refused::Address);
        }
        if c.total >= self.max_total {
            return Err(Refused::Total);
        }
        c.total += 1;
        *c.by_addr.entry(addr).or_insert(0) += 1;
        Ok(WatchSlot {
            watchers: self.clone(),
            addr,
        })
    }

    /// Watchers waiting now.
    pub fn waiting(&self) -> usize {
        self.counts.lock().expect("watchers lock").total
    }

    pub fn max_total(&self) -> usize {
        self.max_total
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut c = self.watchers.counts.lock().expect("watchers lock");
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_addr.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                c.by_addr.remove(&self.addr);
            }
        }
    }
}

/// What a source address counts against: an IPv4 address itself (nodes
/// behind one NAT share it), the /64 of an IPv6 one (one host can hold a
/// whole /64, so per exact address the cap would bind nothing).
fn quota_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// The checked wait of a query.
fn wait_of(q: &WatchQuery) -> Result<Duration, ApiError> {
    let secs = q.wait.unwrap_or(MAX_WATCH_SECS);
    if !(secs > 0.0 && secs <= MAX_WATCH_SECS) {
        return Err(ApiError::bad_request(format!(
            "wait must be above 0 and at most {MAX_WATCH_SECS} seconds"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub(super) async fn watch(
    State(s): State<AppState>,
    ConnectInfo(remote): ConnectInfo<RemoteAddr>,
    ApiQuery(q): ApiQuery<WatchQuery>,
) -> Result<Json<WatchResponse>, ApiError> {
    if q.epoch.as_ref().is_some_and(|e| e.len() > 64) {
        return Err(ApiError::bad_request("epoch is too long"));
    }
    let swarm = q.swarm_tag().map_err(ApiError::bad_request)?;
    let wait = wait_of(&q)?;
    let source = remote.ip();
    let _slot = s.watchers.enter(source).map_err(|r| match r {
        Refused::Address => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} watches from {source} are waiting already; poll /v1/peers instead",
                s.watchers.max_per_address
            ),
        ),
        Refused::Total => s.busy(&format!("{} watches waiting", s.watchers.max_total())),
    })?;
    let changes: &Changes = s.db.changes();
    let mut tick = changes.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    let epoch = s.db.epoch().to_string();
    loop {
        tick.borrow_and_update();
        let (verdict, seq) = changes.verdict(&epoch, q.since, q.epoch.as_deref(), swarm);
        if verdict == Verdict::Changed {
            return Ok(Json(WatchResponse { changed: true, seq }));
        }
        tokio::select! {
            r = tick.changed() => if r.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = s.shutdown.cancelled() => break,
        }
    }
    let (_, seq) = changes.verdict(&epoch, q.since, q.epoch.as_deref(), swarm);
    Ok(Json(WatchResponse {
        changed: false,
        seq,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_are_capped_per_address_and_in_all() {
        let w = Watchers::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let a1 = w.enter(a).unwrap();
        let _a2 = w.enter(a).unwrap();
        assert_eq!(w.enter(a).err(), Some(Refused::Address));
        let _b1 = w.enter(b).unwrap();
        assert_eq!(w.enter(c).err(), Some(Refused::Total));
        assert_eq!(w.waiting(), 3);
        drop(a1);
        assert_eq!(w.waiting(), 2);
        let _c1 = w.enter(c).unwrap();
        assert_eq!(w.counts.lock().unwrap().by_addr.len(), 3);
    }

    #[test]
    fn an_ipv6_host_cannot_widen_its_cap_by_changing_address() {
        let w = Watchers::new(10, 2);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:fffe".parse().unwrap();
        let next_net: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _a = w.enter(one).unwrap();
        let _b = w.enter(other).unwrap();
        assert_eq!(
            w.enter("2001:db8:1:2::99".parse().unwrap()).err(),
            Some(Refused::Address)
        );
        assert!(w.enter(next_net).is_ok(), "another /64 has its own cap");
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let _c = w.enter(v4).unwrap();
        let _d = w.enter(mapped).unwrap();
        assert_eq!(
            w.enter(v4).err(),
            Some(Refused::Address),
            "a mapped IPv4 is that IPv4"
        );
    }
}
