//! `/containers`: every managed container, and forced destruction.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use super::body::{PathParam, QueryParams};
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::pool::ContainerView;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DestroyResponse {
    pub success: bool,
    pub container_id: String,
    pub pool_id: String,
}

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

/// The container routes, with their OpenAPI entries.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get, destroy))
}
