//! Bearer-token auth for every route but `/health` and `/ready`, when
//! `BOILERHOUSE_API_TOKEN` is set. The comparison is constant-time. The dashboard's
//! session cookie (`crate::ui::session`) is accepted in place of the header; a
//! state-changing request it authenticates must come from the daemon's own origin.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::ui::session;

pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(expected) = &state.api_token {
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let bearer = bool::from(given.as_bytes().ct_eq(expected.as_bytes()));
        if !bearer {
            if !session::has_valid_cookie(req.headers(), expected) {
                return ApiError::Unauthorized.into_response();
            }
            if !session::is_safe(req.method()) {
                if let Err(refused) = session::check_origin(req.headers()) {
                    return ApiError::Forbidden(refused).into_response();
                }
            }
        }
    }
    next.run(req).await
}
