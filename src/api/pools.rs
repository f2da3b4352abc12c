//! `/pools`: pool state and scaling (the workload specs are in `workloads.rs`).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use super::body::{JsonBody, PathParam};
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::pool::{PoolView, ScaleOutcome};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[utoipa::path(get, path = "/pools", tag = "pools", responses((status = 200, description = "All pools", body = Vec<PoolView>), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Json<Vec<PoolView>> {
    Json(state.manager.pool_views().await)
}

#[utoipa::path(get, path = "/pools/{id}", tag = "pools", params(("id" = String, Path, description = "Pool (workload) id")), responses((status = 200, description = "One pool", body = PoolView), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Json<PoolView>, ApiError> {
    let pool = state.resolve_pool(Some(&id))?;
    Ok(Json(pool.snapshot().await?.pool))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleBody {
    pub target_size: Option<i64>,
}

#[utoipa::path(post, path = "/pools/{id}/scale", tag = "pools", params(("id" = String, Path, description = "Pool (workload) id")), request_body(content = ScaleBody, content_type = "application/json"), responses((status = 200, description = "Scaling", body = ScaleOutcome), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 413, description = "Body too large", body = ErrorBody)))]
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

/// The pool routes, with their OpenAPI entries.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get))
        .routes(routes!(scale))
}
