//! `/tenants`: claim, release, status, manual sync, listing.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::body::{JsonBody, PathParam};
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::fsutil::validate_secret_name;
use crate::pool::{endpoints, ClaimRequest, ClaimTimings, ClaimView, Endpoints, PoolError};
use crate::sync::{RestoreSource, SyncOp, SyncStatus, TransferResult};
use crate::tenant::TenantId;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Released {
    pub pool_id: String,
    pub container_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseResponse {
    pub success: bool,
    pub released: Vec<Released>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    pub tenant_id: String,
    /// `cold` (no claim), `provisioning`, `warm` or `releasing`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub sync_status: Option<crate::sync::SyncStatus>,
    pub claims: Vec<ClaimView>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantClaims {
    pub tenant_id: String,
    pub claims: Vec<ClaimView>,
}

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

const MAX_WAIT_MS: u64 = 86_400_000;

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimBody {
    #[serde(alias = "workload")]
    pub pool_id: Option<String>,
    pub secrets: Option<BTreeMap<String, String>>,
    /// Free-form object stored with the claim.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, Value>>,
    /// How long to queue when the pool is at capacity, in ms; 0 = fail fast.
    /// Capped by BOILERHOUSE_CLAIM_TIMEOUT_MS.
    #[schema(maximum = 86_400_000)]
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimResponse {
    pub tenant_id: String,
    pub pool_id: String,
    pub container_id: String,
    pub container_name: String,
    pub endpoints: Endpoints,
    pub claimed_at: chrono::DateTime<chrono::Utc>,
    pub reused: bool,
    #[schema(value_type = Option<Object>)]
    pub sync_status: Option<SyncStatus>,
    pub timings: ClaimTimingsView,
}

/// Where a claim's time went, in milliseconds (also sent as `Server-Timing`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimTimingsView {
    /// Queued at capacity for another tenant's container to come free.
    pub queue_wait_ms: f64,
    /// Waited for a new container to start; null when an idle one was taken.
    pub cold_start_ms: Option<f64>,
    /// Writing the claim's secrets.
    pub secrets_ms: f64,
    pub restore_ms: f64,
    /// Where the state came from: `cache`, `s3` or `none`.
    pub restore_source: RestoreSource,
    /// Recording the claim durably.
    pub ledger_ms: f64,
    /// From the request's arrival at the handler to the answer.
    pub total_ms: f64,
}

impl ClaimTimingsView {
    fn new(t: &ClaimTimings, total: Duration) -> Self {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Self {
            queue_wait_ms: ms(t.queue_wait),
            cold_start_ms: t.cold_start.map(ms),
            secrets_ms: ms(t.secrets),
            restore_ms: ms(t.restore),
            restore_source: t.restore_source,
            ledger_ms: ms(t.ledger),
            total_ms: ms(total),
        }
    }

    /// The W3C `Server-Timing` header: one metric per stage, `dur` in ms.
    fn server_timing(&self) -> String {
        let mut parts = vec![format!("queue;dur={:.3}", self.queue_wait_ms)];
        if let Some(cold) = self.cold_start_ms {
            parts.push(format!("cold;dur={cold:.3}"));
        }
        parts.push(format!("secrets;dur={:.3}", self.secrets_ms));
        parts.push(format!(
            "restore;dur={:.3};desc=\"{}\"",
            self.restore_ms,
            self.restore_source.as_str()
        ));
        parts.push(format!("ledger;dur={:.3}", self.ledger_ms));
        parts.push(format!("total;dur={:.3}", self.total_ms));
        parts.join(", ")
    }
}

#[utoipa::path(post, path = "/tenants/{id}/claim", tag = "tenants", params(("id" = String, Path, description = "Tenant id: ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")), request_body(content = Option<ClaimBody>, content_type = "application/json"), responses((status = 200, description = "The tenant's container", body = ClaimResponse, headers(("Server-Timing" = String, description = "The stages of `timings`: queue, cold (if any), secrets, restore (desc = its source), ledger, total"))), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflict", body = ErrorBody), (status = 413, description = "Body too large", body = ErrorBody), (status = 502, description = "State sync failed", body = ErrorBody), (status = 503, description = "No container available", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)))]
pub async fn claim(
    State(state): State<AppState>,
    PathParam(id): PathParam,
    JsonBody(body): JsonBody<ClaimBody>,
) -> Result<(HeaderMap, Json<ClaimResponse>), ApiError> {
    let tenant = tenant_id(&id)?;
    let pool = state.resolve_pool(body.pool_id.as_deref())?;
    if let Some(secrets) = &body.secrets {
        for name in secrets.keys() {
            validate_secret_name(name).map_err(ApiError::BadRequest)?;
        }
    }
    if body.wait_ms.is_some_and(|w| w > MAX_WAIT_MS) {
        return Err(ApiError::BadRequest(format!(
            "waitMs must be at most {MAX_WAIT_MS} (one day)"
        )));
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
        metadata: body.metadata.map(Value::Object),
        secrets: None,
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
    let timings = ClaimTimingsView::new(&grant.timings, started.elapsed());
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&timings.server_timing()) {
        headers.insert("server-timing", value);
    }
    let response = Json(ClaimResponse {
        tenant_id: tenant.to_string(),
        pool_id: pool.id().to_owned(),
        endpoints: endpoints(&grant.container),
        container_id: grant.container.id,
        container_name: grant.container.name,
        claimed_at: grant.claimed_at,
        reused: grant.reused,
        sync_status: grant.sync_status,
        timings,
    });
    Ok((headers, response))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
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

#[utoipa::path(post, path = "/tenants/{id}/release", tag = "tenants", params(("id" = String, Path, description = "Tenant id: ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")), request_body(content = Option<ReleaseBody>, content_type = "application/json"), responses((status = 200, description = "Released", body = ReleaseResponse), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflict", body = ErrorBody), (status = 413, description = "Body too large", body = ErrorBody), (status = 502, description = "State sync failed", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)))]
pub async fn release(
    State(state): State<AppState>,
    PathParam(id): PathParam,
    JsonBody(body): JsonBody<ReleaseBody>,
) -> Result<Json<ReleaseResponse>, ApiError> {
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
    Ok(Json(ReleaseResponse {
        success: true,
        released: released
            .into_iter()
            .map(|(pool_id, info)| Released {
                pool_id,
                container_id: info.id,
            })
            .collect(),
    }))
}

#[utoipa::path(get, path = "/tenants/{id}/status", tag = "tenants", params(("id" = String, Path, description = "Tenant id: ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")), responses((status = 200, description = "Tenant status (cold when unknown)", body = TenantStatus), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Json<TenantStatus>, ApiError> {
    let tenant = tenant_id(&id)?;
    let claims = state.manager.tenant_claims(&tenant).await;
    let Some(first) = claims.first().cloned() else {
        return Ok(Json(TenantStatus {
            tenant_id: tenant.to_string(),
            status: "cold".into(),
            pool_id: None,
            container_id: None,
            claimed_at: None,
            last_activity: None,
            health: None,
            sync_status: None,
            claims: Vec::new(),
        }));
    };
    Ok(Json(TenantStatus {
        tenant_id: tenant.to_string(),
        status: first.status.into(),
        pool_id: Some(first.pool_id),
        container_id: Some(first.container_id),
        claimed_at: Some(first.claimed_at),
        last_activity: Some(first.last_activity),
        health: Some(first.health),
        sync_status: first.sync_status,
        claims,
    }))
}

#[utoipa::path(get, path = "/tenants", tag = "tenants", responses((status = 200, description = "All claims", body = Vec<ClaimView>), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Json<Vec<ClaimView>> {
    Json(state.manager.claims().await)
}

#[utoipa::path(get, path = "/tenants/{id}", tag = "tenants", params(("id" = String, Path, description = "Tenant id: ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")), responses((status = 200, description = "The tenant's claims", body = TenantClaims), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Json<TenantClaims>, ApiError> {
    let tenant = tenant_id(&id)?;
    let claims = state.manager.tenant_claims(&tenant).await;
    if claims.is_empty() {
        return Err(not_found(&tenant, None));
    }
    Ok(Json(TenantClaims {
        tenant_id: tenant.to_string(),
        claims,
    }))
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Upload,
    Download,
    #[default]
    Both,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncBody {
    #[serde(alias = "workload")]
    pub pool_id: Option<String>,
    #[serde(default)]
    pub direction: Direction,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SyncResponse {
    pub success: bool,
    #[schema(value_type = Vec<Object>)]
    pub results: Vec<TransferResult>,
}

#[utoipa::path(post, path = "/tenants/{id}/sync", tag = "tenants", params(("id" = String, Path, description = "Tenant id: ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")), request_body(content = Option<SyncBody>, content_type = "application/json"), responses((status = 200, description = "Transfers run", body = SyncResponse), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflict", body = ErrorBody), (status = 413, description = "Body too large", body = ErrorBody), (status = 502, description = "State sync failed", body = ErrorBody), (status = 500, description = "Internal error", body = ErrorBody)))]
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

/// The tenant routes, with their OpenAPI entries.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get))
        .routes(routes!(claim))
        .routes(routes!(release))
        .routes(routes!(status))
        .routes(routes!(sync))
}
