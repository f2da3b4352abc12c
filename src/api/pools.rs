//! `/pools` and `/workloads`: pool state, scaling, and the parsed workload specs
//! (sink credentials redacted by the spec's serializer).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use super::body::{JsonBody, PathParam};
use super::{ApiError, AppState};
use crate::pool::{PoolView, ScaleOutcome};
use crate::workload::Workload;

pub async fn list(State(state): State<AppState>) -> Json<Vec<PoolView>> {
    Json(state.manager.pool_views().await)
}

pub async fn get(
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Json<PoolView>, ApiError> {
    let pool = state.resolve_pool(Some(&id))?;
    Ok(Json(pool.snapshot().await?.pool))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleBody {
    pub target_size: Option<i64>,
}

pub async fn scale(
    State(state): State<AppState>,
    PathParam(id): PathParam,
    JsonBody(body): JsonBody<ScaleBody>,
) -> Result<Json<ScaleOutcome>, ApiError> {
    let pool = state.resolve_pool(Some(&id))?;
    let target = body
        .target_size
        .ok_or_else(|| ApiError::BadRequest("body must give \"targetSize\": <number>".into()))?;
    Ok(Json(state.manager.scale(pool, target).await?))
}

pub async fn workloads(State(state): State<AppState>) -> Json<Vec<Workload>> {
    Json(
        state
            .manager
            .pools()
            .map(|p| (*p.workload).clone())
            .collect(),
    )
}

pub async fn workload(
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Json<Workload>, ApiError> {
    let pool = state.resolve_pool(Some(&id))?;
    Ok(Json((*pool.workload).clone()))
}
