//! `/tenants`: claim, release, status, manual sync, listing.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::body::{JsonBody, PathParam};
use super::{ApiError, AppState};
use crate::fsutil::validate_secret_name;
use crate::pool::{endpoints, ClaimRequest, ClaimView, Endpoints, PoolError};
use crate::sync::{SyncOp, SyncStatus, TransferResult};
use crate::tenant::TenantId;

fn tenant_id(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(raw).map_err(ApiError::InvalidTenantId)
}

fn not_found(tenant: &TenantId, pool: Option<&str>) -> ApiError {
    ApiError::TenantNotFound(
        tenant.to_string(),
        pool.map(|p| format!(" in pool {p:?}")).unwrap_or_default(),
    )
}

/// Maps a pool error, naming the tenant where the pool could not.
fn pool_err<'a>(
    tenant: &'a TenantId,
    pool: Option<&'a str>,
) -> impl Fn(PoolError) -> ApiError + 'a {
    move |e| match e {
        PoolError::NotClaimed => not_found(tenant, pool),
        other => other.into(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimBody {
    #[serde(alias = "workload")]
    pub pool_id: Option<String>,
    pub secrets: Option<BTreeMap<String, String>>,
    pub metadata: Option<Value>,
    /// How long to queue when the pool is at capacity; 0 = fail fast.
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimResponse {
    pub tenant_id: String,
    pub pool_id: String,
    pub container_id: String,
    pub container_name: String,
    pub endpoints: Endpoints,
    pub claimed_at: chrono::DateTime<chrono::Utc>,
    pub reused: bool,
    pub sync_status: Option<SyncStatus>,
}

pub async fn claim(
    State(state): State<AppState>,
    PathParam(id): PathParam,
    JsonBody(body): JsonBody<ClaimBody>,
) -> Result<Json<ClaimResponse>, ApiError> {
    let tenant = tenant_id(&id)?;
    let pool = state.resolve_pool(body.pool_id.as_deref())?;
    if let Some(secrets) = &body.secrets {
        for name in secrets.keys() {
            validate_secret_name(name).map_err(ApiError::BadRequest)?;
        }
    }
    let claim_timeout = state.manager.config().claim_timeout();
    let queue_wait = body
        .wait_ms
        .map(Duration::from_millis)
        .unwrap_or(claim_timeout)
        .min(claim_timeout);
    let request = ClaimRequest {
        tenant: tenant.clone(),
        queue_wait,
        metadata: body.metadata,
    };
    let started = std::time::Instant::now();
    let result = state.manager.claim(pool, request, body.secrets).await;
    let outcome = match &result {
        Ok(g) if g.reused => "reused",
        Ok(g) if g.cold => "cold",
        Ok(_) => "warm",
        Err(PoolError::Exhausted(_)) => "exhausted",
        Err(PoolError::Unavailable(_)) => "unavailable",
        Err(_) => "error",
    };
    crate::metrics::claim(pool.id(), outcome, started.elapsed());
    let grant = result.map_err(ApiError::from)?;
    Ok(Json(ClaimResponse {
        tenant_id: tenant.to_string(),
        pool_id: pool.id().to_owned(),
        endpoints: endpoints(&grant.container),
        container_id: grant.container.id,
        container_name: grant.container.name,
        claimed_at: grant.claimed_at,
        reused: grant.reused,
        sync_status: grant.sync_status,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseBody {
    #[serde(alias = "workload")]
    pub pool_id: Option<String>,
    #[serde(default = "yes")]
    pub sync: bool,
}

fn yes() -> bool {
    true
}

impl Default for ReleaseBody {
    fn default() -> Self {
        Self {
            pool_id: None,
            sync: true,
        }
    }
}

pub async fn release(
    State(state): State<AppState>,
    PathParam(id): PathParam,
    JsonBody(body): JsonBody<ReleaseBody>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_id(&id)?;
    let pool = match body.pool_id.as_deref() {
        Some(p) => Some(state.resolve_pool(Some(p))?),
        None => None,
    };
    let started = std::time::Instant::now();
    let result = state.manager.release(&tenant, pool, body.sync).await;
    match &result {
        Ok(released) => {
            for (pool, _) in released {
                crate::metrics::release(pool, true, started.elapsed());
            }
        }
        Err(PoolError::NotClaimed) => {}
        Err(_) => {
            crate::metrics::release(pool.map_or("unknown", |p| p.id()), false, started.elapsed())
        }
    }
    let released = result.map_err(pool_err(&tenant, body.pool_id.as_deref()))?;
    let released: Vec<Value> = released
        .into_iter()
        .map(|(pool, info)| json!({"poolId": pool, "containerId": info.id}))
        .collect();
    Ok(Json(json!({"success": true, "released": released})))
}

pub async fn status(
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_id(&id)?;
    let claims = state.manager.tenant_claims(&tenant).await;
    let Some(first) = claims.first() else {
        return Ok(Json(json!({
            "tenantId": tenant,
            "status": "cold",
            "claims": [],
            "syncStatus": null,
        })));
    };
    Ok(Json(json!({
        "tenantId": tenant,
        "status": first.status,
        "poolId": first.pool_id,
        "containerId": first.container_id,
        "claimedAt": first.claimed_at,
        "lastActivity": first.last_activity,
        "health": first.health,
        "syncStatus": first.sync_status,
        "claims": claims,
    })))
}

pub async fn list(State(state): State<AppState>) -> Json<Vec<ClaimView>> {
    Json(state.manager.claims().await)
}

pub async fn get(
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_id(&id)?;
    let claims = state.manager.tenant_claims(&tenant).await;
    if claims.is_empty() {
        return Err(not_found(&tenant, None));
    }
    Ok(Json(json!({"tenantId": tenant, "claims": claims})))
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Upload,
    Download,
    #[default]
    Both,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncBody {
    #[serde(alias = "workload")]
    pub pool_id: Option<String>,
    #[serde(default)]
    pub direction: Direction,
}

#[derive(Debug, Serialize)]
pub struct SyncResponse {
    pub success: bool,
    pub results: Vec<TransferResult>,
}

pub async fn sync(
    State(state): State<AppState>,
    PathParam(id): PathParam,
    JsonBody(body): JsonBody<SyncBody>,
) -> Result<Json<SyncResponse>, ApiError> {
    let tenant = tenant_id(&id)?;
    let pool = match body.pool_id.as_deref() {
        Some(p) => state.resolve_pool(Some(p))?,
        None => {
            let claims = state.manager.tenant_claims(&tenant).await;
            match claims.as_slice() {
                [] => return Err(not_found(&tenant, None)),
                [one] => state.resolve_pool(Some(&one.pool_id))?,
                _ => {
                    return Err(ApiError::PoolRequired(format!(
                        "tenant {tenant} holds claims in several pools; name one with \"poolId\""
                    )))
                }
            }
        }
    };
    let Some(spec) = pool.workload.sync.as_ref() else {
        return Err(ApiError::SyncNotConfigured(format!(
            "workload {} has no sync section, so there is nothing to sync",
            pool.id()
        )));
    };
    if !spec.policy.manual {
        return Err(ApiError::ManualSyncDisabled(format!(
            "workload {} sets sync.policy.manual: false",
            pool.id()
        )));
    }
    let ops: &[SyncOp] = match body.direction {
        Direction::Upload => &[SyncOp::Upload],
        Direction::Download => &[SyncOp::Download],
        Direction::Both => &[SyncOp::Upload, SyncOp::Download],
    };
    let results = state
        .manager
        .sync(pool, &tenant, ops)
        .await
        .map_err(pool_err(&tenant, Some(pool.id())))?;
    Ok(Json(SyncResponse {
        success: results.iter().all(|r| r.success),
        results,
    }))
}
