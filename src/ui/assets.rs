//! The stylesheet and script, embedded in the binary and served with an ETag (a
//! digest of the content), so a browser revalidates with `If-None-Match` and gets a
//! 304 instead of the body while the binary is the same.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::api::ApiError;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/app.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/app.js"),
    },
];

/// Each asset's ETag, computed once.
fn etags() -> &'static [HeaderValue] {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = hex::encode(&Sha256::digest(a.body)[..12]);
                // Hex digits in quotes: always a valid header value.
                HeaderValue::from_str(&format!("\"{digest}\""))
                    .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
            })
            .collect()
    })
}

pub async fn serve(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return ApiError::NotFound(format!("/ui/assets/{name}")).into_response();
    };
    let asset = &ASSETS[i];
    let etag = etags()[i].clone();
    // `no-cache`: always revalidate, so a new binary's assets are picked up at once.
    let cache = HeaderValue::from_static("no-cache");
    let matches = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag.to_str().unwrap_or_default()
        });
    if matches {
        return (
            StatusCode::NOT_MODIFIED,
            [(ETAG, etag), (CACHE_CONTROL, cache)],
        )
            .into_response();
    }
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
            (ETAG, etag),
            (CACHE_CONTROL, cache),
        ],
        asset.body,
    )
        .into_response()
}
