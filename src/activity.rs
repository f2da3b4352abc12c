//! The activity log: a newest-first ring buffer of the last 1000 events, plus a
//! broadcast channel so live followers (`GET /events`) see them as they happen.
//!
//! Reloads add `workloads.reloaded` / `workloads.reload_failed` (no pool) and, per
//! pool, `pool.reconfigured`, `pool.rollout.started` / `.completed`,
//! `pool.draining`, `pool.removed` and `pool.restored`.

use std::collections::VecDeque;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

pub const CAPACITY: usize = 1000;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub kind: &'static str,
    pub timestamp: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Event {
    pub fn new(kind: &'static str, pool: &str) -> Self {
        Self {
            kind,
            timestamp: Utc::now(),
            pool_id: Some(pool.to_owned()),
            tenant_id: None,
            container_id: None,
            message: None,
        }
    }
    /// An event of the daemon as a whole (a workload reload), tied to no pool.
    pub fn daemon(kind: &'static str) -> Self {
        Self {
            kind,
            timestamp: Utc::now(),
            pool_id: None,
            tenant_id: None,
            container_id: None,
            message: None,
        }
    }
    pub fn tenant(mut self, tenant: &str) -> Self {
        self.tenant_id = Some(tenant.to_owned());
        self
    }
    pub fn container(mut self, container: &str) -> Self {
        self.container_id = Some(container.to_owned());
        self
    }
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

pub struct ActivityLog {
    // A plain mutex: held for a push or a copy, never across an await.
    events: Mutex<VecDeque<Event>>,
    live: broadcast::Sender<Event>,
}

impl Default for ActivityLog {
    fn default() -> Self {
        Self {
            events: Mutex::new(VecDeque::with_capacity(CAPACITY)),
            live: broadcast::channel(256).0,
        }
    }
}

impl ActivityLog {
    pub fn record(&self, event: Event) {
        tracing::debug!(kind = event.kind, pool = ?event.pool_id, tenant = ?event.tenant_id, container = ?event.container_id, "activity");
        let _ = self.live.send(event.clone());
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() == CAPACITY {
            events.pop_back();
        }
        events.push_front(event);
    }

    /// Newest first, at most `limit`.
    pub fn recent(&self, limit: usize) -> Vec<Event> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.iter().take(limit).cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }
}
