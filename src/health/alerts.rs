//! Alerts: an event when a check changes state, at most one per kind per cooldown.
//!
//! Each check name is an alert kind. A kind remembers the status it last alerted (healthy at
//! start). A check whose status differs from it raises an alert when the kind's cooldown has
//! passed since its last alert, or at once when the new status is worse than the one last
//! alerted (an escalation is never held back). A change held back by the cooldown is raised
//! by the first check after the cooldown if it still holds; a flap that is over by then raises
//! nothing. `Unknown` (a check that could not run) changes nothing.
//!
//! Events go to every subscriber ([`tokio::sync::broadcast`]) and into a bounded queue for
//! bindings that poll (C, and Node through its event emitter).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::config::HealthConfig;

use super::checks::{EXPIRED_KEYS, POOL};
use super::{Check, Status};

/// Alerts kept for polling; the oldest are dropped beyond this.
pub const POLL_QUEUE: usize = 256;

/// One alert: a check changed state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlertEvent {
    /// The check (alert kind): `slow_queries`, `pool`, `expired_keys`, `database`, `outage`.
    pub kind: String,
    /// Its new status.
    pub status: Status,
    /// The status last alerted for this kind (`healthy` at start).
    pub previous: Status,
    /// What was found.
    pub summary: String,
    /// What to do (absent when the check is healthy again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<String>,
    /// When, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

impl AlertEvent {
    /// The event as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

struct Kind {
    alerted: Status,
    at: Option<Instant>,
}

/// The alert state of one store.
pub(crate) struct Alerts {
    kinds: Mutex<(HashMap<String, Kind>, VecDeque<AlertEvent>)>,
    tx: broadcast::Sender<AlertEvent>,
    cooldown_queries: Duration,
    cooldown_pool: Duration,
    cooldown_expired: Duration,
}

impl Alerts {
    pub(crate) fn new(cfg: &HealthConfig) -> Alerts {
        Alerts {
            kinds: Mutex::new((HashMap::new(), VecDeque::new())),
            tx: broadcast::channel(64).0,
            cooldown_queries: cfg.cooldown_queries,
            cooldown_pool: cfg.cooldown_pool,
            cooldown_expired: cfg.cooldown_expired,
        }
    }

    fn cooldown(&self, kind: &str) -> Duration {
        match kind {
            POOL => self.cooldown_pool,
            EXPIRED_KEYS => self.cooldown_expired,
            // Slow queries, and the database and outage checks that usually come with them.
            _ => self.cooldown_queries,
        }
    }

    /// A receiver of every alert raised from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<AlertEvent> {
        self.tx.subscribe()
    }

    /// The oldest alert not yet polled.
    pub(crate) fn poll(&self) -> Option<AlertEvent> {
        let mut g = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        g.1.pop_front()
    }

    /// Compares `checks` with the statuses last alerted; raises and returns the alerts due.
    pub(crate) fn observe(&self, checks: &[Check]) -> Vec<AlertEvent> {
        let now = Instant::now();
        let mut raised = Vec::new();
        let mut g = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let (kinds, queue) = &mut *g;
        for c in checks {
            if c.status == Status::Unknown {
                continue;
            }
            let k = kinds.entry(c.name.clone()).or_insert(Kind {
                alerted: Status::Healthy,
                at: None,
            });
            if c.status == k.alerted {
                continue;
            }
            let cooled =
                k.at.is_none_or(|at| now.duration_since(at) >= self.cooldown(&c.name));
            // Within the cooldown only an escalation is raised.
            if !cooled && c.status < k.alerted {
                continue;
            }
            let event = AlertEvent {
                kind: c.name.clone(),
                status: c.status,
                previous: k.alerted,
                summary: c.summary.clone(),
                recommendation: c.recommendation.clone(),
                at_unix_ms: crate::metrics::now_unix_ms(),
            };
            k.alerted = c.status;
            k.at = Some(now);
            while queue.len() >= POLL_QUEUE {
                queue.pop_front();
            }
            queue.push_back(event.clone());
            raised.push(event);
        }
        drop(g);
        for e in &raised {
            tracing::warn!(kind = %e.kind, status = %e.status, previous = %e.previous, "health alert: {}", e.summary);
            // No subscriber is fine: the events are also kept for polling.
            let _ = self.tx.send(e.clone());
        }
        raised
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, status: Status) -> Check {
        Check {
            name: name.into(),
            status,
            summary: format!("{name} {status}"),
            recommendation: None,
            details: serde_json::Value::Null,
        }
    }

    #[test]
    fn changes_raise_alerts_within_the_cooldown_only_when_worse() {
        let a = Alerts::new(&HealthConfig::default());
        let mut rx = a.subscribe();
        assert!(a.observe(&[c(POOL, Status::Healthy)]).is_empty());
        let up = a.observe(&[c(POOL, Status::Warning)]);
        assert_eq!(up.len(), 1);
        assert_eq!(
            (up[0].previous, up[0].status),
            (Status::Healthy, Status::Warning)
        );
        // Escalation: at once, despite the 5 min cooldown.
        assert_eq!(a.observe(&[c(POOL, Status::Critical)]).len(), 1);
        // Recovery within the cooldown: held back; unknown changes nothing.
        assert!(a.observe(&[c(POOL, Status::Warning)]).is_empty());
        assert!(a.observe(&[c(POOL, Status::Healthy)]).is_empty());
        assert!(a.observe(&[c(POOL, Status::Unknown)]).is_empty());
        assert_eq!(rx.try_recv().map(|e| e.status), Ok(Status::Warning));
        assert_eq!(rx.try_recv().map(|e| e.status), Ok(Status::Critical));
        assert!(rx.try_recv().is_err());
        assert_eq!(a.poll().map(|e| e.status), Some(Status::Warning));
        assert_eq!(a.poll().map(|e| e.status), Some(Status::Critical));
        assert_eq!(a.poll(), None);
    }

    #[test]
    fn after_the_cooldown_a_recovery_is_raised() {
        let cfg = HealthConfig {
            cooldown_pool: Duration::ZERO,
            ..HealthConfig::default()
        };
        let a = Alerts::new(&cfg);
        assert_eq!(a.observe(&[c(POOL, Status::Critical)]).len(), 1);
        let down = a.observe(&[c(POOL, Status::Healthy)]);
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].previous, Status::Critical);
        // Kinds are independent.
        assert_eq!(
            a.observe(&[c(EXPIRED_KEYS, Status::Warning), c(POOL, Status::Healthy)])
                .len(),
            1
        );
    }
}
