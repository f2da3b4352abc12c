//! `/cluster`: the cluster's nodes with their capacity and health, and the
//! cluster-wide totals per pool. In single-node mode it says so (`enabled: false`).

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::AppState;
use crate::cluster::{Cluster, NodeRecord, PoolCapacity};

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    /// False in single-node mode (no `BOILERHOUSE_ETCD_ENDPOINTS`).
    pub enabled: bool,
    pub cluster: Option<String>,
    /// This node's id.
    pub node_id: Option<String>,
    /// Why this node accepts no claims now, if it does not.
    pub fenced: Option<String>,
    pub etcd_endpoints: Vec<String>,
    /// Nodes whose lease is alive, by id.
    pub nodes: Vec<ClusterNode>,
    /// Every pool's capacity summed over the nodes.
    pub totals: Vec<PoolCapacity>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNode {
    pub node_id: String,
    pub url: String,
    pub this_node: bool,
    /// Its lease is alive and its `/health` answers.
    pub healthy: bool,
    pub pools: Vec<PoolCapacity>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Sums capacity per pool, in pool-id order.
pub fn totals(nodes: &[NodeRecord]) -> Vec<PoolCapacity> {
    let mut sum: std::collections::BTreeMap<String, PoolCapacity> = Default::default();
    for cap in nodes.iter().flat_map(|n| &n.pools) {
        let t = sum.entry(cap.pool_id.clone()).or_insert(PoolCapacity {
            pool_id: cap.pool_id.clone(),
            idle: 0,
            starting: 0,
            claimed: 0,
            max: 0,
        });
        t.idle += cap.idle;
        t.starting += cap.starting;
        t.claimed += cap.claimed;
        t.max += cap.max;
    }
    sum.into_values().collect()
}

async fn healthy(cluster: &Cluster, url: &str) -> bool {
    cluster
        .http
        .get(format!("{url}/health"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[utoipa::path(get, path = "/cluster", tag = "cluster", responses((status = 200, description = "The cluster's nodes and totals", body = ClusterView), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 503, description = "etcd does not answer", body = ErrorBody)))]
pub async fn get(State(state): State<AppState>) -> Response {
    let Some(cluster) = state.cluster.as_deref() else {
        return Json(ClusterView {
            enabled: false,
            cluster: None,
            node_id: None,
            fenced: None,
            etcd_endpoints: Vec::new(),
            nodes: Vec::new(),
            totals: Vec::new(),
        })
        .into_response();
    };
    let mut records = match cluster.nodes().await {
        Ok(n) => n,
        Err(e) => return super::forward::cluster_error(cluster, e.into()),
    };
    records.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let health =
        futures_util::future::join_all(records.iter().map(|n| healthy(cluster, &n.url))).await;
    Json(ClusterView {
        enabled: true,
        cluster: Some(cluster.config.cluster.clone()),
        node_id: Some(cluster.node_id().to_owned()),
        fenced: cluster.fenced(),
        etcd_endpoints: cluster.etcd().endpoints().to_vec(),
        totals: totals(&records),
        nodes: records
            .into_iter()
            .zip(health)
            .map(|(n, healthy)| ClusterNode {
                this_node: n.node_id == cluster.node_id(),
                node_id: n.node_id,
                url: n.url,
                healthy,
                pools: n.pools,
                updated_at: n.updated_at,
            })
            .collect(),
    })
    .into_response()
}

/// The cluster route, with its OpenAPI entry.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get))
}
