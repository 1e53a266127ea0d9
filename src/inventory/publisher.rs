//! This node's published inventory: the current version in a `watch`
//! channel and the change log beside it, updated together so a plan never
//! disagrees with what was announced. In memory only; the store decides
//! what to publish.

use std::sync::Mutex;

use tokio::sync::watch;

use super::{ChangeLog, Digest, Inventory, Plan};

/// Holds the published inventory and its recent history.
pub struct Publisher {
    current: watch::Sender<Inventory>,
    /// Publishing holds this lock, so the log and the published inventory
    /// never disagree. A std mutex: never held across an await.
    log: Mutex<ChangeLog>,
}

impl Default for Publisher {
    fn default() -> Self {
        Publisher {
            current: watch::channel(Inventory::new(Vec::new())).0,
            log: Mutex::new(ChangeLog::default()),
        }
    }
}

impl Publisher {
    /// Publishes `inv` if its digest differs from the current one, recording
    /// the change. Returns whether it did.
    pub fn publish(&self, inv: Inventory) -> bool {
        let mut log = self.log.lock().expect("change log lock");
        self.current.send_if_modified(|old| {
            if old.digest == inv.digest {
                return false;
            }
            log.record(old, &inv);
            *old = inv;
            true
        })
    }

    /// Notified whenever the published inventory changes.
    pub fn subscribe(&self) -> watch::Receiver<Inventory> {
        self.current.subscribe()
    }

    pub fn current(&self) -> Inventory {
        self.current.borrow().clone()
    }

    /// What to send a peer that holds our inventory of digest `since`
    /// (`None`: nothing yet): the current inventory, with a delta when the
    /// change log reaches back to `since`.
    pub fn plan(&self, since: Option<Digest>) -> Plan {
        let log = self.log.lock().expect("change log lock");
        let current = self.current.borrow().clone();
        log.plan(&current, since)
    }
}
