//! `/workloads`: the parsed workload specs (sink credentials redacted by the spec's
//! serializer) and `POST /workloads/reload`, which reloads the files the way
//! `SIGHUP` and a change under `WORKLOADS_DIR` do.
//!
//! `GET /workloads` keeps the original's body (a list of specs); when the last
//! reload was rejected, its errors ride along in the `Boilerhouse-Reload-Errors`
//! header, so the running set and the reason the files on disk are not it are seen
//! in one answer.

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::body::PathParam;
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::manager::{ReloadError, ReloadReport};
use crate::workload::Workload;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const RELOAD_ERRORS_HEADER: HeaderName = HeaderName::from_static("boilerhouse-reload-errors");

/// Errors of a rejected reload shown in the header; the log and the reload's own
/// answer have all of them.
const HEADER_ERRORS: usize = 20;

#[utoipa::path(get, path = "/workloads", tag = "workloads", responses((status = 200, description = "Parsed workload specs of the running pools, credentials redacted. When the last reload was rejected, the `Boilerhouse-Reload-Errors` header holds its errors as a JSON list (non-ASCII escaped).", body = Vec<Object>, headers(("Boilerhouse-Reload-Errors" = String, description = "JSON list of the last rejected reload's errors ({file, line, key, message}); absent when the last reload was applied"))), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Response {
    let workloads: Vec<Workload> = state
        .manager
        .pools()
        .map(|p| (*p.workload).clone())
        .collect();
    let mut response = Json(workloads).into_response();
    if let Some(report) = state.manager.last_reload().filter(|r| !r.applied) {
        let shown: Vec<&ReloadError> = report.errors.iter().take(HEADER_ERRORS).collect();
        let text = ascii_json(&serde_json::to_string(&shown).unwrap_or_default());
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().insert(RELOAD_ERRORS_HEADER, value);
        }
    }
    response
}

#[utoipa::path(get, path = "/workloads/{id}", tag = "workloads", params(("id" = String, Path, description = "Pool (workload) id")), responses((status = 200, description = "One workload spec", body = Object), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Json<Workload>, ApiError> {
    let pool = state.resolve_pool(Some(&id))?;
    if state.manager.is_draining(&id) {
        return Err(ApiError::PoolNotFound(id));
    }
    Ok(Json((*pool.workload).clone()))
}

/// Reloads the workload files. 200 with what changed; 422 `reload_rejected` with
/// every error when the set is invalid (then nothing changed).
#[utoipa::path(post, path = "/workloads/reload", tag = "workloads", responses((status = 200, description = "The whole set was valid and is applied", body = ReloadReport), (status = 401, description = "Missing or wrong token", body = ErrorBody), (status = 422, description = "The set is invalid; nothing changed (`applied: false`, `errors` lists every problem, `code` is `reload_rejected`)", body = ReloadReport)))]
pub async fn reload(State(state): State<AppState>) -> Response {
    let report = state.manager.reload("api").await;
    if report.applied {
        return Json(report).into_response();
    }
    let mut body = serde_json::to_value(&report).unwrap_or_default();
    if let Some(o) = body.as_object_mut() {
        o.insert(
            "error".into(),
            format!(
                "the workload files are invalid ({} error(s)); nothing changed: fix them and reload again",
                report.errors.len()
            )
            .into(),
        );
        o.insert("code".into(), "reload_rejected".into());
    }
    (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
}

/// JSON with every non-ASCII character escaped, so it fits in a header value.
fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// The workload routes, with their OpenAPI entries.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get))
        .routes(routes!(reload))
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_json_is_ascii_and_still_json() {
        let text = super::ascii_json(r#"[{"file":"wörk😀.yaml"}]"#);
        assert!(text.is_ascii());
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back[0]["file"], "wörk😀.yaml");
    }
}
