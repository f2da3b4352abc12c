//! What the remote holds for a tenant, as the state cache compares it: per mapping,
//! every object under the mapping's prefix with its size and MD5.
//!
//! Two ways to list, both against exactly the sink rclone uses (same endpoint, bucket,
//! prefix, region, credentials):
//! - a resident HTTP client signing one `ListObjectsV2` request per 1,000 keys with
//!   SigV4, for a plain-`http` endpoint with static keys and no proxy. A new rclone
//!   process costs ~60 ms before it sends anything; this costs one round trip, and it
//!   is what lets a returning tenant's claim finish in a few milliseconds. (The daemon
//!   has no TLS stack, and adding one for this check alone was not worth its build
//!   cost: `https` endpoints go the other way.)
//! - `rclone lsjson -R --files-only --hash` for every other sink (https, env auth, a
//!   proxy, an endpoint with a path), so nothing is ever listed differently from how
//!   rclone would see it.
//!
//! An object whose MD5 is not known (a multipart ETag `…-N`, no hash) makes the
//! listing unverifiable: the cache never stores or serves such a tenant.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::endpoint::endpoint_address;
use super::local::{normalize_mapping_path, remote_path};
use super::rclone::REMOTE;
use crate::workload::spec::{SinkSpec, SyncMapping};

/// How long one listing request may take before the check counts as failed (and
/// the claim downloads as it would without a cache).
const LIST_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of one listing page answered `5xx`/`429` (100, 200 ms apart).
const LIST_ATTEMPTS: u32 = 3;

/// One object as the cache compares it; `key` is relative to the mapping's prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteObject {
    pub key: String,
    pub size: u64,
    /// Lowercase hex MD5 of the content.
    pub md5: String,
}

/// Per download mapping (in the workload's order): its normalized path and objects,
/// sorted by key.
pub type Listing = Vec<(String, Vec<RemoteObject>)>;

/// Lists the remote through the resident client when the sink allows it.
#[derive(Clone)]
pub struct Lister {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Lister {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(LIST_TIMEOUT));
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }
}

/// A sink the resident client can list: `http://host[:port]` endpoint, static keys.
pub(super) struct Target {
    authority: String,
    access_key: String,
    secret_key: String,
    region: String,
}

pub(super) fn target(sink: &SinkSpec, env: impl Fn(&str) -> Option<OsString>) -> Option<Target> {
    let endpoint = sink.endpoint.as_deref()?;
    // `endpoint_address` is None behind a proxy, where rclone would not connect here.
    endpoint_address(sink, env)?;
    let (scheme, rest) = endpoint.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") {
        return None;
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    Some(Target {
        authority: rest.to_owned(),
        access_key: sink.access_key_id.clone().filter(|k| !k.is_empty())?,
        secret_key: sink.secret_access_key.clone().filter(|k| !k.is_empty())?,
        // rclone signs with us-east-1 when an S3-compatible sink names no region.
        region: sink
            .region
            .clone()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "us-east-1".into()),
    })
}

/// `(bucket, key prefix ending in "/")` of a mapping, from the same path rclone gets.
pub(super) fn bucket_and_prefix(sink: &SinkSpec, tenant: &str, rel: &str) -> (String, String) {
    let path = remote_path(sink, tenant, rel);
    let path = path
        .strip_prefix(&format!("{REMOTE}:"))
        .unwrap_or(&path)
        .to_owned();
    match path.split_once('/') {
        Some((bucket, prefix)) => (bucket.to_owned(), prefix.to_owned()),
        None => (path, String::new()),
    }
}

impl Lister {
    /// Whether `list` will use the resident client for this sink (else rclone).
    pub fn is_resident(sink: &SinkSpec) -> bool {
        target(sink, |name| std::env::var_os(name)).is_some()
    }

    /// Lists every mapping through the resident client; None when the sink needs
    /// rclone instead.
    pub(super) async fn list(
        &self,
        sink: &SinkSpec,
        tenant: &str,
        mappings: &[&SyncMapping],
    ) -> Option<Result<Listing, String>> {
        let target = target(sink, |name| std::env::var_os(name))?;
        let mut listing = Vec::new();
        for mapping in mappings {
            let rel = match normalize_mapping_path(&mapping.path) {
                Ok(rel) => rel,
                Err(e) => return Some(Err(e)),
            };
            let (bucket, prefix) = bucket_and_prefix(sink, tenant, &rel);
            match self.list_prefix(&target, &bucket, &prefix).await {
                Ok(objects) => listing.push((rel, objects)),
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(listing))
    }

    pub(super) async fn list_prefix(
        &self,
        target: &Target,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<RemoteObject>, String> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2".to_owned()), ("prefix", prefix.to_owned())];
            if let Some(t) = &token {
                query.push(("continuation-token", t.clone()));
            }
            let body = self.get_page(target, bucket, &mut query).await?;
            let page = parse_page(&body, prefix)?;
            objects.extend(page.objects);
            match page.next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    /// Starts a GET of one object (`key` is the whole key, not URI-encoded); the
    /// caller reads the body. Bounded by the connect timeout only: the caller bounds
    /// the transfer.
    pub(super) async fn get_object(
        &self,
        target: &Target,
        bucket: &str,
        key: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ObjectError> {
        let path = format!("/{}/{}", uri_encode(bucket, true), uri_encode(key, false));
        let request = signed_get(target, &path, "").map_err(|e| ObjectError {
            refused: false,
            detail: format!("cannot build the request for {path}: {e}"),
        })?;
        self.client.request(request).await.map_err(|e| {
            use std::error::Error;
            let mut refused = false;
            let mut source = e.source();
            while let Some(s) = source {
                if let Some(io) = s.downcast_ref::<std::io::Error>() {
                    refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
                }
                source = s.source();
            }
            let cause = e.source().map(|s| format!(": {s}")).unwrap_or_default();
            ObjectError {
                refused,
                detail: format!("GET {path} failed: {e}{cause}"),
            }
        })
    }

    /// One page, retried like rclone's SDK would retry it: a `5xx` or `429` answer
    /// (real S3's `503 SlowDown`, `500 InternalError`) up to [`LIST_ATTEMPTS`] times.
    async fn get_page(
        &self,
        target: &Target,
        bucket: &str,
        query: &mut [(&str, String)],
    ) -> Result<String, String> {
        let mut attempt = 1;
        loop {
            match self.get(target, bucket, query).await {
                Err((true, e)) if attempt < LIST_ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "listing retried");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                    attempt += 1;
                }
                answer => return answer.map_err(|(_, e)| e),
            }
        }
    }

    /// One request; the error says whether it is worth repeating.
    async fn get(
        &self,
        target: &Target,
        bucket: &str,
        query: &mut [(&str, String)],
    ) -> Result<String, (bool, String)> {
        query.sort();
        let query = query
            .iter()
            .map(|(k, v)| format!("{}={}", uri_encode(k, true), uri_encode(v, true)))
            .collect::<Vec<_>>()
            .join("&");
        let path = format!("/{}", uri_encode(bucket, true));
        let uri = format!("http://{}{path}?{query}", target.authority);
        let request = signed_get(target, &path, &query).map_err(|e| {
            (
                false,
                format!("cannot build the listing request for {uri}: {e}"),
            )
        })?;
        let answer = async {
            let response = self.client.request(request).await.map_err(|e| {
                use std::error::Error;
                let cause = e.source().map(|s| format!(": {s}")).unwrap_or_default();
                format!("{e}{cause}")
            })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
        };
        let (status, body) = tokio::time::timeout(LIST_TIMEOUT, answer)
            .await
            .map_err(|_| (false, format!("listing {uri} took over {LIST_TIMEOUT:?}")))?
            .map_err(|e| (false, format!("listing {uri} failed: {e}")))?;
        if !status.is_success() {
            let code = capture(&ERROR_CODE, &body).unwrap_or_default();
            let again = worth_retrying(status);
            return Err((again, format!("listing {uri} answered {status} {code}")));
        }
        Ok(body)
    }
}

/// A SigV4-signed GET of `path` (already URI-encoded) with a canonical `query`.
fn signed_get(
    target: &Target,
    path: &str,
    query: &str,
) -> Result<hyper::Request<Empty<Bytes>>, hyper::http::Error> {
    let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let authorization = sign(target, path, query, &amz_date);
    let uri = match query {
        "" => format!("http://{}{path}", target.authority),
        q => format!("http://{}{path}?{q}", target.authority),
    };
    hyper::Request::get(uri)
        .header("host", &target.authority)
        .header("x-amz-date", &amz_date)
        .header("x-amz-content-sha256", EMPTY_SHA256)
        .header("authorization", authorization)
        .header("user-agent", USER_AGENT)
        .body(Empty::new())
}

/// Names the daemon in the endpoint's access logs (rclone sends `rclone/<version>`).
pub const USER_AGENT: &str = concat!("boilerhouse/", env!("CARGO_PKG_VERSION"));

/// An answer S3 gives when it is busy or failed for the moment (`503 SlowDown`,
/// `500 InternalError`, `429`): the request is worth repeating.
pub(super) fn worth_retrying(status: hyper::StatusCode) -> bool {
    status.is_server_error() || status == hyper::StatusCode::TOO_MANY_REQUESTS
}

/// A GET that got no answer; `refused` when the endpoint refused the connection.
#[derive(Debug)]
pub(super) struct ObjectError {
    pub refused: bool,
    pub detail: String,
}

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The `Authorization` header of a SigV4-signed GET with an empty body.
fn sign(target: &Target, path: &str, query: &str, amz_date: &str) -> String {
    let date = &amz_date[..8];
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    let canonical = format!(
        "GET\n{path}\n{query}\nhost:{}\nx-amz-content-sha256:{EMPTY_SHA256}\nx-amz-date:{amz_date}\n\n{signed_headers}\n{EMPTY_SHA256}",
        target.authority
    );
    let scope = format!("{date}/{}/s3/aws4_request", target.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac_sha256(
        format!("AWS4{}", target.secret_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [target.region.as_str(), "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac_sha256(&key, to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        target.access_key
    )
}

/// RFC 2104 over SHA-256 (a dozen lines; not worth a crate).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// SigV4's URI encoding: everything but `A-Za-z0-9-_.~` (and `/` unless `slash`).
fn uri_encode(s: &str, slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if !slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[derive(Debug)]
struct Page {
    objects: Vec<RemoteObject>,
    next: Option<String>,
}

static ERROR_CODE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"<Code>(.*?)</Code>").expect("valid regex"));

fn capture(re: &Regex, text: &str) -> Option<String> {
    re.captures(text).map(|c| xml_unescape(&c[1]))
}

/// The text of every `<tag>…</tag>` in `xml`, in order (S3's elements carry no
/// attributes). A plain substring scan: a regex with captures took 14–36 ms for a page
/// of 1,000 objects (230 KB), more than the request; this takes 1–2 ms.
fn elements<'a>(xml: &'a str, tag: &str) -> impl Iterator<Item = &'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut rest = xml;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let len = rest[start..].find(&close)?;
        let text = &rest[start..start + len];
        rest = &rest[start + len + close.len()..];
        Some(text)
    })
}

/// The first `<tag>…</tag>` in `xml`, unescaped.
fn element(xml: &str, tag: &str) -> Option<String> {
    elements(xml, tag).next().map(xml_unescape)
}

fn xml_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    static ENTITY: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"&(amp|lt|gt|quot|apos|#x[0-9A-Fa-f]+|#[0-9]+);").unwrap());
    ENTITY
        .replace_all(s, |c: &regex::Captures| match &c[1] {
            "amp" => "&".to_owned(),
            "lt" => "<".to_owned(),
            "gt" => ">".to_owned(),
            "quot" => "\"".to_owned(),
            "apos" => "'".to_owned(),
            n => {
                let code = match n.strip_prefix("#x") {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => n[1..].parse().ok(),
                };
                code.and_then(char::from_u32)
                    .map(String::from)
                    .unwrap_or_default()
            }
        })
        .into_owned()
}

/// One `ListObjectsV2` answer; an object without a plain MD5 ETag fails the listing.
fn parse_page(xml: &str, prefix: &str) -> Result<Page, String> {
    if !xml.contains("<ListBucketResult") {
        return Err("the listing answer is not a ListBucketResult".into());
    }
    let mut objects = Vec::new();
    for c in elements(xml, "Contents") {
        let key = element(c, "Key").ok_or("an object without a key")?;
        let size = element(c, "Size")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("object {key} has no size"))?;
        let etag = element(c, "ETag").unwrap_or_default();
        let rel = key
            .strip_prefix(prefix)
            .ok_or_else(|| format!("object {key} is outside the prefix {prefix}"))?;
        objects.push(RemoteObject {
            key: rel.to_owned(),
            size,
            md5: plain_md5(&etag).ok_or_else(|| {
                format!(
                    "object {key} has no MD5 ETag ({etag}): a multipart upload cannot be verified"
                )
            })?,
        });
    }
    let truncated = element(xml, "IsTruncated").is_some_and(|t| t.trim() == "true");
    let next = if truncated {
        Some(
            element(xml, "NextContinuationToken")
                .ok_or("a truncated listing without a continuation token")?,
        )
    } else {
        None
    };
    Ok(Page { objects, next })
}

/// `"0cc175b9c0f1b6a831c399e269772661"` → the MD5; a multipart ETag is not one.
pub(super) fn plain_md5(etag: &str) -> Option<String> {
    let etag = etag.trim().trim_matches('"');
    (etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| etag.to_ascii_lowercase())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LsjsonEntry {
    path: String,
    size: i64,
    #[serde(default)]
    hashes: BTreeMap<String, String>,
}

/// Objects from `rclone lsjson -R --files-only --hash` output.
pub(super) fn parse_lsjson(json: &str) -> Result<Vec<RemoteObject>, String> {
    let entries: Vec<LsjsonEntry> = serde_json::from_str(json)
        .map_err(|e| format!("cannot read rclone lsjson's output: {e}"))?;
    let mut objects = entries
        .into_iter()
        .map(|e| {
            let md5 = e
                .hashes
                .get("md5")
                .and_then(|h| plain_md5(h))
                .ok_or_else(|| format!("object {} has no MD5", e.path))?;
            Ok(RemoteObject {
                key: e.path,
                size: u64::try_from(e.size).map_err(|_| "an object of unknown size")?,
                md5,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn listing_pages_are_parsed_and_unverifiable_objects_refused() {
        let xml = r#"<?xml version="1.0"?><ListBucketResult><IsTruncated>true</IsTruncated>
            <Contents><Key>t/a/x&amp;y.txt</Key><Size>3</Size><ETag>&quot;0CC175B9C0F1B6A831C399E269772661&quot;</ETag></Contents>
            <NextContinuationToken>tok/1=</NextContinuationToken></ListBucketResult>"#;
        let page = parse_page(xml, "t/a/").unwrap();
        assert_eq!(page.objects[0].key, "x&y.txt");
        assert_eq!(page.objects[0].md5, "0cc175b9c0f1b6a831c399e269772661");
        assert_eq!(page.next.as_deref(), Some("tok/1="));
        let multipart = xml.replace("0CC175B9C0F1B6A831C399E269772661", "abc-2");
        assert!(parse_page(&multipart, "t/a/")
            .unwrap_err()
            .contains("multipart"));
        // The last page: every object in order, no token; a key outside the prefix
        // fails the listing.
        let last = r#"<ListBucketResult><IsTruncated>false</IsTruncated>
            <Contents><Key>t/a/1</Key><Size>1</Size><ETag>"c4ca4238a0b923820dcc509a6f75849b"</ETag></Contents>
            <Contents><Key>t/a/d/2</Key><Size>22</Size><ETag>"c81e728d9d4c2f636f067f89cc14862c"</ETag></Contents>
            </ListBucketResult>"#;
        let page = parse_page(last, "t/a/").unwrap();
        let got: Vec<(&str, u64)> = page
            .objects
            .iter()
            .map(|o| (o.key.as_str(), o.size))
            .collect();
        assert_eq!(got, [("1", 1), ("d/2", 22)]);
        assert_eq!(page.next, None);
        assert!(parse_page(last, "t/b/")
            .unwrap_err()
            .contains("outside the prefix"));
    }

    #[test]
    fn only_plain_http_sinks_with_keys_use_the_resident_client() {
        let mut sink = SinkSpec {
            kind: "s3".into(),
            bucket: "b".into(),
            region: None,
            endpoint: Some("http://127.0.0.1:9000".into()),
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            prefix: "t/${tenantId}/".into(),
            rclone_flags: vec![],
        };
        let no_env = |_: &str| None;
        assert!(target(&sink, no_env).is_some());
        assert_eq!(
            bucket_and_prefix(&sink, "alice", "data"),
            ("b".into(), "t/alice/data/".into())
        );
        let proxied = |n: &str| (n == "HTTP_PROXY").then(|| OsString::from("http://p:1"));
        assert!(target(&sink, proxied).is_none());
        sink.endpoint = Some("https://s3.example.com".into());
        assert!(target(&sink, no_env).is_none());
        sink.endpoint = Some("http://h:1/base".into());
        assert!(target(&sink, no_env).is_none());
        sink.endpoint = Some("http://h:1".into());
        sink.access_key_id = None;
        assert!(target(&sink, no_env).is_none());
    }
}
