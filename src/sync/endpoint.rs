//! Where rclone connects (the sink's endpoint address) and the engine's own check
//! that it accepts connections, which ends a run sooner than rclone's retries would.

use std::ffi::OsString;
use std::time::Duration;

use crate::workload::spec::SinkSpec;

/// How long the engine's own check that the endpoint accepts connections may take
/// (the same as rclone's `--contimeout`).
pub(super) const CONNECT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the check is repeated while rclone runs, so an endpoint that goes away
/// in the middle of a transfer is noticed as soon (rclone would take one request's
/// full retries, with backoff, to say so).
pub(super) const CONNECT_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Proxy variables: with one set, rclone connects to the proxy, not to the endpoint.
pub(super) const PROXY_VARS: &[&str] = &["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"];

/// `host:port` of the sink's endpoint: its `endpoint` (scheme-less means https, as
/// rclone reads it), else AWS's regional endpoint. None when an HTTP proxy is set.
pub(super) fn endpoint_address(
    sink: &SinkSpec,
    env: impl Fn(&str) -> Option<OsString>,
) -> Option<String> {
    if PROXY_VARS
        .iter()
        .any(|name| env(name).is_some_and(|v| !v.is_empty()))
    {
        return None;
    }
    let Some(endpoint) = sink.endpoint.as_deref() else {
        let region = sink.region.as_deref().unwrap_or("us-east-1");
        return Some(format!("s3.{region}.amazonaws.com:443"));
    };
    let (rest, default_port) = match endpoint.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (rest, 80),
        Some((_, rest)) => (rest, 443),
        None => (endpoint, 443),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    if authority.is_empty() {
        return None;
    }
    // `[::1]:9000`, `[::1]`, `host:9000`, `host`.
    let has_port = match authority.rfind(':') {
        Some(colon) => !authority[colon..].contains(']'),
        None => false,
    };
    Some(if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    })
}

/// Can a TCP connection to `address` be made? The reason reads like rclone's own
/// (`connection refused`, `no such host`, `i/o timeout`), so the error says the same
/// whichever of the two noticed first.
pub(super) async fn check_connect(address: &str) -> Result<(), String> {
    use std::io::ErrorKind;
    let connect = tokio::net::TcpStream::connect(address);
    let reason = match tokio::time::timeout(CONNECT_CHECK_TIMEOUT, connect).await {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => match e.kind() {
            ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            ErrorKind::TimedOut => "i/o timeout".to_owned(),
            ErrorKind::HostUnreachable => "no route to host".to_owned(),
            ErrorKind::NetworkUnreachable => "network is unreachable".to_owned(),
            _ if e.to_string().contains("lookup") || e.to_string().contains("resolve") => {
                format!("no such host ({e})")
            }
            _ => e.to_string(),
        },
        Err(_) => format!("i/o timeout after {CONNECT_CHECK_TIMEOUT:?}"),
    };
    Err(format!(
        "cannot connect to the endpoint {address}: {reason}"
    ))
}
