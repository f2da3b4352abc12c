//! The dashboard's login cookie. A browser cannot add an `Authorization` header to
//! page loads or to `EventSource`, so after the token form the daemon sets an
//! HttpOnly, SameSite=Strict cookie that `api::auth` accepts in place of the header.
//!
//! The cookie holds a digest of the token, not the token: a copied cookie is still a
//! credential for this daemon, but it never reveals `BOILERHOUSE_API_TOKEN` itself.
//! A cookie is sent by the browser on its own, so a state-changing request that
//! relies on it must come from a page of this daemon (its `Origin` matches `Host`).

use axum::http::header::{COOKIE, HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderValue, Method};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const COOKIE_NAME: &str = "boilerhouse_session";

/// What the cookie carries for `token`.
fn session_value(token: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"boilerhouse-ui-session\0");
    hash.update(token.as_bytes());
    hex::encode(hash.finalize())
}

/// The cookie's value in the request, if it sends one.
fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
}

/// True when the request carries a valid session cookie for `token`; the
/// comparison is constant-time like the bearer token's.
pub fn has_valid_cookie(headers: &HeaderMap, token: &str) -> bool {
    let given = cookie_value(headers).unwrap_or("");
    bool::from(given.as_bytes().ct_eq(session_value(token).as_bytes()))
}

/// `Set-Cookie` for a browser that gave the right token. No `Max-Age`: the cookie
/// ends with the browser session.
pub fn login_cookie(token: &str) -> HeaderValue {
    let cookie = format!(
        "{COOKIE_NAME}={}; Path=/; HttpOnly; SameSite=Strict",
        session_value(token)
    );
    // Only hex digits and fixed ASCII: always a valid header value.
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Set-Cookie` that removes the session cookie.
pub fn logout_cookie() -> HeaderValue {
    HeaderValue::from_static("boilerhouse_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Requests that change nothing, which a cookie may authenticate from anywhere.
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Checks that a cookie-authenticated, state-changing request comes from a page this
/// daemon served: its `Origin` (which browsers always send on such requests) names
/// the host the request was sent to. The error is the sentence for the 403.
pub fn check_origin(headers: &HeaderMap) -> Result<(), String> {
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .and_then(|o| {
            o.strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
        })
        .map(|h| h.trim_end_matches('/'));
    match (origin, origin_host, host) {
        (_, Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
        (None, _, _) => Err("a state-changing request authenticated by the dashboard cookie must carry an Origin header; send 'Authorization: Bearer <token>' instead".into()),
        (Some(origin), _, host) => Err(format!(
            "cross-origin request refused: Origin {origin:?} does not match this daemon's host {:?}; the dashboard cookie only works from the dashboard's own pages",
            host.unwrap_or("")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_cookie_carries_a_digest_not_the_token() {
        let set = login_cookie("s3cret-token");
        let set = set.to_str().unwrap();
        assert!(!set.contains("s3cret-token"), "{set}");
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        let value = set.split(';').next().unwrap();
        assert!(has_valid_cookie(
            &headers(&[("cookie", &format!("a=b; {value}"))]),
            "s3cret-token"
        ));
        assert!(!has_valid_cookie(&headers(&[("cookie", value)]), "other"));
        assert!(!has_valid_cookie(
            &headers(&[("cookie", "boilerhouse_session=s3cret-token")]),
            "s3cret-token"
        ));
        assert!(!has_valid_cookie(&HeaderMap::new(), "s3cret-token"));
    }

    #[test]
    fn origin_must_name_the_host() {
        let ok = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert_eq!(check_origin(&ok), Ok(()));
        let evil = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
        ]);
        assert!(check_origin(&evil).unwrap_err().contains("evil.example"));
        let port = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:9090"),
        ]);
        assert!(check_origin(&port).is_err());
        let none = headers(&[("host", "127.0.0.1:8080")]);
        assert!(check_origin(&none).unwrap_err().contains("Origin header"));
        let null = headers(&[("host", "127.0.0.1:8080"), ("origin", "null")]);
        assert!(check_origin(&null).is_err());
    }
}
