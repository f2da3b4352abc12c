//! `/containers`: every managed container, and forced destruction.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{PathParam, QueryParams};
use super::{ApiError, AppState};
use crate::pool::ContainerView;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    pub pool_id: Option<String>,
}

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

pub async fn destroy(
    State(state): State<AppState>,
    PathParam(id): PathParam,
    QueryParams(q): QueryParams<DestroyQuery>,
) -> Result<Json<Value>, ApiError> {
    let container = find(&state, &id).await?;
    let pool = state.resolve_pool(Some(&container.pool_id))?;
    pool.destroy(id.clone(), q.force).await?;
    Ok(Json(
        json!({"success": true, "containerId": id, "poolId": container.pool_id}),
    ))
}
