//! Daemon-level routes: liveness, readiness, totals and the activity log.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::body::QueryParams;
use super::error::ErrorBody;
use super::AppState;
use crate::activity::Event;
use crate::activity::CAPACITY;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub timestamp: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Activity {
    pub events: Vec<Event>,
}

#[utoipa::path(get, path = "/health", tag = "system", security(()), responses((status = 200, description = "Alive", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        timestamp: chrono::Utc::now(),
    })
}

/// 200 only when Docker answers and every pool has reached its minimum.
#[utoipa::path(get, path = "/ready", tag = "system", security(()), responses((status = 200, description = "Ready", body = Health), (status = 503, description = "Not ready", body = ErrorBody)))]
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
    let ledger = state.manager.ledger();
    if !ledger.is_healthy() {
        if let Err(e) = ledger.probe().await {
            return not_ready(format!(
                "the claim ledger in {} (BOILERHOUSE_DATA_DIR) cannot be written: {e}",
                state.manager.config().data_dir.display()
            ));
        }
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
    Json(Health {
        status: "ready".into(),
        timestamp: chrono::Utc::now(),
    })
    .into_response()
}

#[utoipa::path(get, path = "/stats", tag = "system", responses((status = 200, description = "Totals", body = Object), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
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

#[utoipa::path(get, path = "/activity", tag = "system", params(("limit" = Option<usize>, Query, description = "At most this many events (default 100, max 1000)")), responses((status = 200, description = "Newest events first", body = Activity), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub async fn activity(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ActivityQuery>,
) -> Json<Activity> {
    let limit = q.limit.unwrap_or(100).min(CAPACITY);
    Json(Activity {
        events: state.manager.activity().recent(limit),
    })
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = &state.metrics else {
        return super::ApiError::Internal("metrics recorder unavailable".into()).into_response();
    };
    crate::metrics::set_pool_gauges(state.manager.pool_views().await.iter().map(Into::into));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

/// Server-sent events: every activity event as it happens (`event:` = its type,
/// `data:` = its JSON). A follower that falls behind is told how many it missed.
#[utoipa::path(get, path = "/events", tag = "system", responses((status = 200, description = "Server-sent events: one per activity event", body = String, content_type = "text/event-stream"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let rx = state.manager.activity().subscribe();
    let shutdown = state.shutdown.clone();
    let stream = futures_util::stream::unfold((rx, shutdown), |(mut rx, shutdown)| async move {
        // The stream ends when shutdown begins (or the daemon is gone): SIGTERM must
        // not wait for followers to hang up.
        let received = tokio::select! {
            received = rx.recv() => received,
            _ = shutdown.begun() => return None,
        };
        let item = match received {
            Ok(event) => SseEvent::default()
                .event(event.kind)
                .json_data(&event)
                .unwrap_or_else(|_| SseEvent::default().comment("unserializable event")),
            Err(RecvError::Lagged(n)) => SseEvent::default()
                .event("lagged")
                .data(format!("{{\"missed\":{n}}}")),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(item), (rx, shutdown)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Probes anyone may call (no token), bounded by the request timeout.
pub fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
}

/// Totals, activity and metrics (token when set), bounded by the request timeout.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(stats))
        .routes(routes!(activity))
        .routes(routes!(metrics))
}

/// The event stream: as long as the client listens, so no request timeout.
pub fn stream_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(events))
}
