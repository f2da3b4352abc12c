//! Daemon-level routes: liveness, readiness, totals and the activity log.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use crate::activity::CAPACITY;

pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "timestamp": chrono::Utc::now()}))
}

/// 200 only when Docker answers and every pool has reached its minimum.
pub async fn ready(State(state): State<AppState>) -> Response {
    let not_ready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "error": reason, "code": "not_ready"})),
        )
            .into_response()
    };
    if let Err(e) = state.manager.runtime().ping().await {
        return not_ready(e.to_string());
    }
    let pools = state.manager.pool_views().await;
    let cold: Vec<String> = pools
        .iter()
        .filter(|p| p.idle_count + p.claimed_count < p.min_size)
        .map(|p| {
            format!(
                "{} ({} of {} warm)",
                p.id,
                p.idle_count + p.claimed_count,
                p.min_size
            )
        })
        .collect();
    if !cold.is_empty() {
        return not_ready(format!("pools still warming up: {}", cold.join(", ")));
    }
    Json(json!({"status": "ready", "timestamp": chrono::Utc::now()})).into_response()
}

pub async fn stats(State(state): State<AppState>) -> Json<serde_json::Value> {
    let pools = state.manager.pool_views().await;
    let sum = |f: fn(&crate::pool::PoolView) -> usize| pools.iter().map(f).sum::<usize>();
    Json(json!({
        "pools": pools.len(),
        "containers": {
            "total": sum(|p| p.current_size),
            "idle": sum(|p| p.idle_count),
            "claimed": sum(|p| p.claimed_count),
            "starting": sum(|p| p.starting_count),
        },
        "tenants": state.manager.claims().await.len(),
        "nodeCapacity": {
            "used": state.manager.node_used(),
            "max": state.manager.config().max_containers,
        },
        "uptimeSeconds": state.started.elapsed().as_secs(),
    }))
}

#[derive(Debug, Deserialize)]
pub struct ActivityQuery {
    pub limit: Option<usize>,
}

pub async fn activity(
    State(state): State<AppState>,
    Query(q): Query<ActivityQuery>,
) -> Json<serde_json::Value> {
    let limit = q.limit.unwrap_or(100).min(CAPACITY);
    Json(json!({"events": state.manager.activity().recent(limit)}))
}
