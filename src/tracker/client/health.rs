//! How the node takes the tracker's failures: after a round that failed,
//! whether to register again at once or to wait, and how long (doubling
//! from [`FIRST_BACKOFF`] through the shared [`Retry`] rule), and when to
//! warn. Pure: time is passed in, nothing sleeps or sends here.

use std::time::{Duration, Instant};

use super::Failure;
use crate::retry::{Retry, RetryPolicy};

/// First retry delay when the tracker fails; it doubles up to
/// `max(MAX_BACKOFF, heartbeat)`.
pub(super) const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Times in a row the tracker may forget this node before registering
/// again waits like any other failure.
const FORGOTTEN_AT_ONCE: u32 = 2;

/// What to do after a round with the tracker.
#[derive(Debug)]
pub(super) enum Next {
    /// It went through: wait for the next heartbeat or change.
    Carry,
    /// The tracker forgot this node: drop the session and register now.
    Register,
    /// Drop the session (when it was forgotten) and wait this long
    /// (before jitter) before the next round.
    Wait { delay: Duration, forgotten: bool },
}

/// The tracker's health as this node sees it.
pub(super) struct Health {
    retry: Retry,
    /// A warning was logged since the tracker last answered.
    warned: bool,
    forgotten_in_a_row: u32,
}

impl Health {
    pub(super) fn new() -> Health {
        Health {
            retry: Retry::new(RetryPolicy::new(FIRST_BACKOFF, MAX_BACKOFF)),
            warned: false,
            forgotten_in_a_row: 0,
        }
    }

    /// Takes a round's outcome at `now`. `heartbeat` is the session's
    /// interval, if registered: waits may grow up to it when it is longer
    /// than [`MAX_BACKOFF`]. Logs the return of the tracker, the first
    /// failure (warning) and the later ones (debug).
    pub(super) fn after_round(
        &mut self,
        round: Result<(), Failure>,
        heartbeat: Option<Duration>,
        tracker: &str,
        now: Instant,
    ) -> Next {
        let (error, forgotten) = match round {
            Ok(()) => {
                if self.warned {
                    tracing::info!(tracker, "the tracker is reachable again");
                }
                self.warned = false;
                self.retry.succeeded();
                self.forgotten_in_a_row = 0;
                return Next::Carry;
            }
            Err(Failure::Forgotten(e)) => {
                self.forgotten_in_a_row += 1;
                tracing::info!(tracker, error = %e, "the tracker forgot this node; registering again");
                if self.forgotten_in_a_row <= FORGOTTEN_AT_ONCE {
                    return Next::Register;
                }
                (e, true)
            }
            Err(Failure::Other(e)) => (e, false),
        };
        if !self.warned {
            tracing::warn!(tracker, error = %error, "tracker unavailable; retrying with backoff (the node keeps working on its LAN)");
            self.warned = true;
        } else {
            tracing::debug!(tracker, error = %error, "tracker still unavailable");
        }
        // The cap known now bounds the next doubling, not this wait (as
        // the wait was always chosen before the session's cap was read).
        let delay = self.retry.failed(now);
        let session_cap = if forgotten { None } else { heartbeat };
        self.retry.policy.max = session_cap.map_or(MAX_BACKOFF, |h| MAX_BACKOFF.max(h));
        Next::Wait { delay, forgotten }
    }
}

/// `delay` spread by ±20 % (`jitter` in 0.8..1.2), so nodes cut off
/// together do not come back together.
pub(super) fn jittered(delay: Duration, jitter: f64) -> Duration {
    delay.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::client::ClientError;

    fn unreachable() -> Failure {
        Failure::Other(ClientError::BadAnswer {
            url: "http://t".into(),
            message: "down".into(),
        })
    }

    fn forgotten() -> Failure {
        Failure::Forgotten(ClientError::Status {
            url: "http://t".into(),
            status: 404,
            message: "unknown node".into(),
            stored_digest: None,
        })
    }

    fn wait(n: Next) -> Duration {
        match n {
            Next::Wait { delay, .. } => delay,
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn waits_double_to_thirty_seconds_and_reset_when_the_tracker_answers() {
        let mut h = Health::new();
        let now = Instant::now();
        let waits: Vec<u64> = (0..7)
            .map(|_| wait(h.after_round(Err(unreachable()), None, "t", now)).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert!(matches!(h.after_round(Ok(()), None, "t", now), Next::Carry));
        assert_eq!(
            wait(h.after_round(Err(unreachable()), None, "t", now)),
            FIRST_BACKOFF
        );
    }

    #[test]
    fn a_long_heartbeat_lets_waits_grow_to_it() {
        let mut h = Health::new();
        let now = Instant::now();
        let hb = Some(Duration::from_secs(50));
        let waits: Vec<u64> = (0..8)
            .map(|_| wait(h.after_round(Err(unreachable()), hb, "t", now)).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 50, 50]);
    }

    #[test]
    fn a_forgotten_node_registers_at_once_twice_then_waits() {
        let mut h = Health::new();
        let now = Instant::now();
        assert!(matches!(
            h.after_round(Err(forgotten()), None, "t", now),
            Next::Register
        ));
        assert!(matches!(
            h.after_round(Err(forgotten()), None, "t", now),
            Next::Register
        ));
        match h.after_round(Err(forgotten()), None, "t", now) {
            Next::Wait {
                delay, forgotten, ..
            } => assert!(forgotten && delay == FIRST_BACKOFF),
            other => panic!("{other:?}"),
        }
        assert!(matches!(h.after_round(Ok(()), None, "t", now), Next::Carry));
        assert!(matches!(
            h.after_round(Err(forgotten()), None, "t", now),
            Next::Register
        ));
    }
}
