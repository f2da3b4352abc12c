//! `/containers`: every managed container, and forced destruction.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use super::body::{PathParam, QueryParams};
use super::openapi::{DestroyResponse, ErrorBody};
use super::{ApiError, AppState};
use crate::pool::ContainerView;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    pub pool_id: Option<String>,
}

#[utoipa::path(get, path = "/containers", tag = "containers", params(("poolId" = Option<String>, Query, description = "Only this pool's containers")), responses((status = 200, description = "Containers", body = Vec<ContainerView>), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<Vec<ContainerView>>, ApiError> {
    if let Some(p) = &q.pool_id {
        state.resolve_pool(Some(p))?;
    }
    Ok(Json(state.manager.containers(q.pool_id.as_deref()).await))
}

async fn find(state: &AppState, id: &str) -> Result<ContainerView, ApiError> {
    state
        .manager
        .containers(None)
        .await
        .into_iter()
        .find(|c| c.id == id)
        .ok_or_else(|| ApiError::ContainerNotFound(id.to_owned()))
}

#[utoipa::path(get, path = "/containers/{id}", tag = "containers", params(("id" = String, Path, description = "Container id")), responses((status = 200, description = "One container", body = ContainerView), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Json<ContainerView>, ApiError> {
    Ok(Json(find(&state, &id).await?))
}

#[derive(Debug, Deserialize)]
pub struct DestroyQuery {
    #[serde(default)]
    pub force: bool,
}

#[utoipa::path(delete, path = "/containers/{id}", tag = "containers", params(("id" = String, Path, description = "Container id"), ("force" = Option<bool>, Query, description = "Destroy a claimed container (its claim ends without upload)")), responses((status = 200, description = "Destroyed", body = DestroyResponse), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflict", body = ErrorBody)))]
pub async fn destroy(
    State(state): State<AppState>,
    PathParam(id): PathParam,
    QueryParams(q): QueryParams<DestroyQuery>,
) -> Result<Json<DestroyResponse>, ApiError> {
    let container = find(&state, &id).await?;
    let pool = state.resolve_pool(Some(&container.pool_id))?;
    pool.destroy(id.clone(), q.force).await?;
    Ok(Json(DestroyResponse {
        success: true,
        container_id: id,
        pool_id: container.pool_id,
    }))
}
