//! Cluster mode's routing of tenant requests (claim, release, sync, status): a
//! layer in front of the tenant handlers that asks etcd which node holds the
//! tenant and either lets the local handler answer or forwards the request to the
//! holder, answering with the holder's response as if it were local. In
//! single-node mode (`AppState::cluster` is None) it passes every request through.
//!
//! A claim for a tenant no node holds is placed (`cluster::placement`) and
//! registered in etcd by the node that runs it, with a create-if-absent
//! transaction: of concurrent claims through several nodes one key wins and every
//! other request follows it to its node, whose pool makes them one container.
//! A forwarded request carries `x-boilerhouse-hops`; a node never places a
//! forwarded claim elsewhere again, and a second hop is refused, so a request
//! cannot circle. Every answer names the node that produced it in
//! `x-boilerhouse-node`.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState, BODY_LIMIT};
use crate::cluster::etcd::Created;
use crate::cluster::{placement, ClaimRecord, Cluster, ClusterError};
use crate::tenant::TenantId;

pub const HOPS: &str = "x-boilerhouse-hops";
pub const NODE: &str = "x-boilerhouse-node";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Claim,
    Release,
    Sync,
    Status,
}

/// `/tenants/<id>/<action>` (at the root or under `/api/v1`).
fn tenant_action(path: &str) -> Option<(String, Action)> {
    let rest = path.strip_prefix("/api/v1").unwrap_or(path);
    let mut parts = rest.strip_prefix("/tenants/")?.split('/');
    let (id, action) = (parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let action = match action {
        "claim" => Action::Claim,
        "release" => Action::Release,
        "sync" => Action::Sync,
        "status" => Action::Status,
        _ => return None,
    };
    Some((id.to_owned(), action))
}

/// The pool a body names (`poolId` or its alias `workload`); bodies the handler
/// will refuse are its to refuse.
fn named_pool(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("poolId")
        .or_else(|| v.get("workload"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn with_node(mut response: Response, node: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(node) {
        response.headers_mut().insert(NODE, v);
    }
    response
}

fn unavailable(code: &str, message: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": message, "code": code })),
    )
        .into_response()
}

/// A cluster error as the API answers it: 503, with a sentence naming etcd or the
/// node at fault.
pub fn cluster_error(cluster: &Cluster, e: ClusterError) -> Response {
    let code = match &e {
        ClusterError::Etcd(_) => "etcd_unavailable",
        ClusterError::Fenced(_) => "node_fenced",
        ClusterError::HolderUnknown { .. } => "holder_unreachable",
    };
    tracing::warn!(code, error = %e, "tenant request refused in cluster mode");
    with_node(unavailable(code, e.to_string()), cluster.node_id())
}

/// What the layer needs of the request besides its body.
struct Incoming {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    hops: u8,
}

pub async fn route(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(cluster) = state.cluster.clone() else {
        return next.run(request).await;
    };
    let Some((tenant, action)) = tenant_action(request.uri().path()) else {
        return next.run(request).await;
    };
    if TenantId::parse(&tenant).is_err() {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => return ApiError::PayloadTooLarge.into_response(),
    };
    let incoming = Incoming {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        hops: parts
            .headers
            .get(HOPS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    };
    let request = Request::from_parts(parts, Body::from(bytes.clone()));
    let pool = named_pool(&bytes);
    match action {
        Action::Claim => {
            claim(
                &state, &cluster, &tenant, pool, incoming, bytes, request, next,
            )
            .await
        }
        Action::Status => {
            // Read-only: answered from this node when etcd cannot say who holds it.
            match holders(&cluster, &tenant, None).await {
                Ok(h) if !h.is_empty() && !h.iter().any(|r| r.node_id == cluster.node_id()) => {
                    forward(&cluster, &h[0].node_id, &incoming, bytes).await
                }
                _ => with_node(next.run(request).await, cluster.node_id()),
            }
        }
        Action::Release | Action::Sync => {
            if let Some(why) = cluster.fenced() {
                return cluster_error(&cluster, ClusterError::Fenced(why));
            }
            // A release deletes keys: under the tenant's lock (a sync does not).
            let guard = match action {
                Action::Release => Some(cluster.tenant_lock(&tenant).await),
                _ => None,
            };
            let held = match holders(&cluster, &tenant, pool.as_deref()).await {
                Ok(h) => h,
                Err(e) => return cluster_error(&cluster, e),
            };
            let mine: Vec<&ClaimRecord> = held
                .iter()
                .filter(|r| r.node_id == cluster.node_id())
                .collect();
            if mine.is_empty() && !held.is_empty() {
                // Held elsewhere only (several nodes: the first; a release without
                // a pool then ends that node's claims, the rest stay).
                drop(guard);
                return forward(&cluster, &held[0].node_id, &incoming, bytes).await;
            }
            let response = next.run(request).await;
            if action == Action::Release {
                for r in mine {
                    cluster.forget_if_unheld(&tenant, &r.pool_id).await;
                }
            }
            drop(guard);
            with_node(response, cluster.node_id())
        }
    }
}

/// The tenant's claim records (in `pool`, or in every pool).
async fn holders(
    cluster: &Cluster,
    tenant: &str,
    pool: Option<&str>,
) -> Result<Vec<ClaimRecord>, ClusterError> {
    Ok(match pool {
        Some(p) => cluster
            .claim_of(tenant, p)
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .collect(),
        None => cluster
            .claims_of(tenant)
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .collect(),
    })
}

#[allow(clippy::too_many_arguments)]
async fn claim(
    state: &AppState,
    cluster: &Cluster,
    tenant: &str,
    pool: Option<String>,
    incoming: Incoming,
    bytes: Bytes,
    request: Request,
    next: Next,
) -> Response {
    // The handler answers for a pool it cannot resolve (400/404), from any node.
    let pool = match state.resolve_pool(pool.as_deref()) {
        Ok(p) => p.id().to_owned(),
        Err(_) => return with_node(next.run(request).await, cluster.node_id()),
    };
    if let Some(why) = cluster.fenced() {
        return cluster_error(cluster, ClusterError::Fenced(why));
    }
    let me = cluster.node_id().to_owned();
    let guard = cluster.tenant_lock(tenant).await;
    let mut known = None;
    let holder = match cluster.claim_of(tenant, &pool).await {
        Ok(Some((_, r))) => {
            let node = r.node_id.clone();
            known = Some(r);
            node
        }
        Ok(None) => {
            let target = if incoming.hops > 0 {
                me.clone()
            } else {
                match place(cluster, tenant, &pool).await {
                    Ok(t) => t,
                    Err(e) => return cluster_error(cluster, e),
                }
            };
            if target != me {
                drop(guard);
                return forward(cluster, &target, &incoming, bytes).await;
            }
            match cluster.register_claim(tenant, &pool).await {
                Ok(Created::Yes(_)) => me.clone(),
                Ok(Created::Exists(kv)) => ClaimRecord::parse(&kv)
                    .map(|r| r.node_id)
                    .unwrap_or_else(|| me.clone()),
                Err(e) => return cluster_error(cluster, e),
            }
        }
        Err(e) => return cluster_error(cluster, e.into()),
    };
    if holder != me {
        drop(guard);
        return forward(cluster, &holder, &incoming, bytes).await;
    }
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    if parts.status == StatusCode::OK {
        let container = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["containerId"].as_str().map(str::to_owned));
        if let Some(c) = container {
            cluster.claimed(tenant, &pool, &c, known.as_ref()).await;
        }
    } else {
        cluster.forget_if_unheld(tenant, &pool).await;
    }
    drop(guard);
    with_node(Response::from_parts(parts, Body::from(body)), &me)
}

/// The node that takes a new tenant: this one when it has an idle container in the
/// pool (no forwarding hop, and its own figure is live rather than up to a tick
/// old), else the choice of `placement` over the node records, this node's own
/// figures live.
async fn place(cluster: &Cluster, tenant: &str, pool: &str) -> Result<String, ClusterError> {
    let own = cluster.capacity().await;
    if own.iter().any(|c| c.pool_id == pool && c.idle > 0) {
        return Ok(cluster.node_id().to_owned());
    }
    let mut nodes = cluster.nodes().await?;
    for n in nodes.iter_mut().filter(|n| n.node_id == cluster.node_id()) {
        n.pools = own.clone();
    }
    Ok(placement::choose(&nodes, tenant, pool)
        .map(|n| n.node_id.clone())
        .unwrap_or_else(|| cluster.node_id().to_owned()))
}

/// Sends the request to `node` and answers with its response.
async fn forward(cluster: &Cluster, node: &str, incoming: &Incoming, body: Bytes) -> Response {
    if incoming.hops >= 2 {
        return with_node(
            unavailable(
                "routing_loop",
                format!("the request reached node {} after {} forwards: the tenant moved between nodes meanwhile; retry it", cluster.node_id(), incoming.hops),
            ),
            cluster.node_id(),
        );
    }
    let record = match cluster.node(node).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return cluster_error(
                cluster,
                ClusterError::HolderUnknown {
                    tenant: tenant_action(incoming.uri.path())
                        .map(|t| t.0)
                        .unwrap_or_default(),
                    node: node.to_owned(),
                    ttl_secs: cluster.config.ttl_secs(),
                },
            )
        }
        Err(e) => return cluster_error(cluster, e.into()),
    };
    let path = incoming
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or_else(|| incoming.uri.path());
    let mut req = cluster
        .http
        .request(incoming.method.clone(), format!("{}{path}", record.url))
        .header(HOPS, (incoming.hops + 1).to_string())
        .header("x-boilerhouse-forwarded-by", cluster.node_id())
        .body(body);
    if let Some(ct) = incoming.headers.get(header::CONTENT_TYPE) {
        req = req.header(header::CONTENT_TYPE, ct.clone());
    }
    if let Some(token) = &cluster.api_token {
        req = req.bearer_auth(token);
    }
    let answer = match req.send().await {
        Ok(a) => a,
        Err(e) => {
            return with_node(
                unavailable(
                    "holder_unreachable",
                    format!(
                        "the tenant is held by node {node} at {}, which does not answer ({e}); its claims free when its etcd lease expires (at most {} s)",
                        record.url,
                        cluster.config.ttl_secs()
                    ),
                ),
                cluster.node_id(),
            )
        }
    };
    let mut response = Response::builder().status(answer.status().as_u16());
    for name in [
        header::CONTENT_TYPE,
        header::RETRY_AFTER,
        header::WWW_AUTHENTICATE,
        HeaderName::from_static("server-timing"),
        HeaderName::from_static(NODE),
    ] {
        if let Some(v) = answer.headers().get(&name) {
            response = response.header(name, v.clone());
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    response
        .body(Body::from(bytes))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_actions_are_recognised_at_the_root_and_under_v1() {
        assert_eq!(
            tenant_action("/api/v1/tenants/alice/claim"),
            Some(("alice".into(), Action::Claim))
        );
        assert_eq!(
            tenant_action("/tenants/a.b/status"),
            Some(("a.b".into(), Action::Status))
        );
        assert_eq!(tenant_action("/tenants/alice"), None);
        assert_eq!(tenant_action("/tenants/a/b/claim"), None);
        assert_eq!(named_pool(br#"{"workload":"web"}"#), Some("web".into()));
        assert_eq!(named_pool(b""), None);
    }
}
