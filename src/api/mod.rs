//! The HTTP API: one router serving every route at the root and under `/api/v1`,
//! one file per resource, one error type ([`ApiError`]).

pub mod auth;
pub mod body;
pub mod cluster;
pub mod containers;
pub mod error;
pub mod forward;
pub mod openapi;
pub mod pools;
pub mod system;
pub mod tenants;
pub mod workloads;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::http::{header, Uri};
use axum::routing::get;
use axum::Router;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use error::ApiError;

use crate::manager::ContainerManager;
use crate::pool::PoolHandle;
use crate::workload::WorkloadId;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub manager: Arc<ContainerManager>,
    pub api_token: Option<Arc<str>>,
    pub started: Instant,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Bound on every route but `/events` (see [`limit_duration`]).
    pub request_timeout: Duration,
    /// Streaming responses end when shutdown begins.
    pub shutdown: crate::shutdown::Shutdown,
    /// Cluster mode's membership; None in single-node mode.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl AppState {
    /// The pool a request names, or the only pool when it names none.
    pub fn resolve_pool(&self, id: Option<&str>) -> Result<&PoolHandle, ApiError> {
        match id {
            Some(id) => {
                WorkloadId::parse(id).map_err(ApiError::BadRequest)?;
                self.manager
                    .pool(id)
                    .ok_or_else(|| ApiError::PoolNotFound(id.to_owned()))
            }
            None => {
                let mut pools = self.manager.pools();
                match (pools.next(), pools.next()) {
                    (Some(only), None) => Ok(only),
                    _ => Err(ApiError::PoolRequired(format!(
                        "several pools exist; name one with \"poolId\" (one of: {})",
                        self.manager
                            .pools()
                            .map(|p| p.id().to_owned())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))),
                }
            }
        }
    }
}

/// Every route with its OpenAPI entry, and the middleware each group needs.
fn routes(state: &AppState) -> OpenApiRouter<AppState> {
    let timeout = axum::middleware::from_fn_with_state(state.clone(), limit_duration);
    let protected = OpenApiRouter::new()
        // In cluster mode a tenant request may be answered by the node holding it.
        .merge(
            tenants::routes().route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                forward::route,
            )),
        )
        .merge(cluster::routes())
        .merge(pools::routes())
        .merge(workloads::routes())
        .merge(containers::routes())
        .merge(system::routes())
        .route_layer(timeout.clone())
        // A stream for as long as the client listens: no request timeout; SSE
        // keep-alive comments keep it from looking dead to proxies.
        .merge(system::stream_routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(system::public_routes())
        .route_layer(timeout)
        .merge(protected)
}

/// Answers 503 `request_timeout` when a handler (body reading included) takes longer
/// than the request timeout. Dropping the handler is what a client disconnect does
/// too, so no handler is cut in a way it is not already prepared for.
pub(crate) async fn limit_duration(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let limit = state.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout(limit).into_response(),
    }
}

/// The whole application, ready to serve.
pub fn router(state: AppState) -> Router {
    let (api, doc) = routes(&state).split_for_parts();
    // Rendered once: the document is fixed when the router is built.
    let doc: axum::body::Bytes = serde_json::to_vec(&doc)
        .expect("the OpenAPI document serializes")
        .into();
    let api = api.route(
        "/openapi.json",
        get(move || async move { ([(header::CONTENT_TYPE, "application/json")], doc) }),
    );
    Router::new()
        .merge(api.clone())
        .nest("/api/v1", api)
        .merge(crate::ui::routes(&state))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Unknown paths. A tenant route whose id contains a `/` cannot match any route;
/// say what is wrong with it instead of a bare 404.
async fn fallback(uri: Uri) -> ApiError {
    let path = uri.path();
    let rest = path.strip_prefix("/api/v1").unwrap_or(path);
    if let Some(tail) = rest.strip_prefix("/tenants/") {
        let segments: Vec<&str> = tail.split('/').collect();
        let action = segments.last().copied().unwrap_or_default();
        if segments.len() != 2 || ["claim", "release", "status", "sync"].contains(&action) {
            return ApiError::InvalidTenantId(
                "tenant id is invalid: it must be one path segment of 1-128 characters from A-Z a-z 0-9 . _ -".into(),
            );
        }
    }
    ApiError::NotFound(path.to_owned())
}

async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not supported on {}", uri.path()))
}
