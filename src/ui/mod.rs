//! The built-in web dashboard at `/ui`: HTML rendered here with askama templates
//! (compile-time checked, auto-escaped), a stylesheet and a small script embedded in
//! the binary, and live updates from `/events`. It reads the daemon through the
//! manager and changes it only through the JSON API routes the clients use (the
//! script calls them), so an action in the browser behaves exactly like a client's.
//!
//! Owns: page rendering, the assets, the login cookie (`session`) and the metrics
//! samples (`samples`). Must not touch pool or manager internals: it uses their
//! public views only.

mod assets;
mod charts;
mod pages;
pub mod samples;
pub mod session;

use axum::extract::{Request, State};
use axum::http::header::{CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::api::AppState;

/// The dashboard's routes, merged into the API router at the root (not under
/// `/api/v1`).
pub fn routes(state: &AppState) -> Router<AppState> {
    let timeout = axum::middleware::from_fn_with_state(state.clone(), crate::api::limit_duration);
    let pages = Router::new()
        .route("/ui", get(pages::overview))
        .route("/ui/pools/{id}", get(pages::pool))
        .route("/ui/tenants", get(pages::tenants))
        .route("/ui/tenants/{id}", get(pages::tenant))
        .route("/ui/activity", get(pages::activity))
        .route("/ui/metrics", get(pages::metrics))
        .route("/ui/try", get(pages::try_claim))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_login,
        ));
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/logout", axum::routing::post(pages::logout))
        .merge(pages)
        .route("/ui/assets/{name}", get(assets::serve))
        .route_layer(axum::middleware::from_fn(security_headers))
        .route_layer(timeout)
}

/// With `BOILERHOUSE_API_TOKEN` set, a page is shown only to a browser holding the
/// session cookie (or a client sending the bearer token); others get the token form.
async fn require_login(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.api_token {
        let bearer = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| {
                use subtle::ConstantTimeEq;
                bool::from(given.as_bytes().ct_eq(token.as_bytes()))
            });
        if !bearer && !session::has_valid_cookie(req.headers(), token) {
            let next_path = req.uri().path().to_owned();
            return pages::login_page(&next_path, None).into_response();
        }
    }
    next.run(req).await
}

/// Pages load only this daemon's own script and stylesheet: an injected `<script>`
/// would not run even if escaping ever failed.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}
