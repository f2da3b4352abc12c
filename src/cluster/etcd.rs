//! A small etcd v3 client over etcd's own JSON gateway (`/v3/kv/*`, `/v3/lease/*` on
//! the client port): just the calls cluster mode needs, with failover across the
//! configured endpoints. Keys and values travel base64-encoded; etcd's 64-bit
//! integers arrive as JSON strings.
//!
//! Why not the `etcd-client` crate: it builds its gRPC stubs with `protoc` at
//! compile time, and `make run`/`make lint` must build on a fresh machine with
//! nothing provisioned. The gateway is part of every etcd server since 3.3.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

/// One etcd request may take this long before the next endpoint is tried. A member
/// without quorum holds a write until its own timeout (seconds); cluster mode must
/// answer a claim before that.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd is unreachable or has no quorum (tried {endpoints}): {detail}")]
    Unavailable { endpoints: String, detail: String },
    #[error("etcd answered {path} with an unexpected body: {detail}")]
    Protocol { path: String, detail: String },
}

/// A key's value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

/// The outcome of a create-if-absent.
#[derive(Debug, Clone)]
pub enum Created {
    /// The key is ours, at this revision.
    Yes(i64),
    /// Someone else's key was there first.
    Exists(Kv),
}

pub struct EtcdClient {
    endpoints: Vec<String>,
    /// The endpoint that answered last: tried first next time.
    current: AtomicUsize,
    http: reqwest::Client,
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

/// etcd's int64 fields: strings in JSON, absent when zero.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The first key after every key starting with `prefix` (etcd's `range_end`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[derive(Deserialize)]
struct RawKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    create_revision: Value,
    #[serde(default)]
    mod_revision: Value,
    #[serde(default)]
    lease: Value,
}

impl RawKv {
    fn decode(self, path: &str) -> Result<Kv, EtcdError> {
        let bad = |e: base64::DecodeError| EtcdError::Protocol {
            path: path.to_owned(),
            detail: format!("base64: {e}"),
        };
        Ok(Kv {
            key: String::from_utf8_lossy(&B64.decode(&self.key).map_err(bad)?).into_owned(),
            value: B64.decode(&self.value).map_err(bad)?,
            create_revision: int(&self.create_revision),
            mod_revision: int(&self.mod_revision),
            lease: int(&self.lease),
        })
    }
}

fn kvs(v: &Value, path: &str) -> Result<Vec<Kv>, EtcdError> {
    let Some(list) = v.get("kvs") else {
        return Ok(Vec::new());
    };
    let raw: Vec<RawKv> =
        serde_json::from_value(list.clone()).map_err(|e| EtcdError::Protocol {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    raw.into_iter().map(|k| k.decode(path)).collect()
}

const TXN: &str = "/v3/kv/txn";

impl EtcdClient {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints: endpoints
                .into_iter()
                .map(|e| e.trim_end_matches('/').to_owned())
                .collect(),
            current: AtomicUsize::new(0),
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .unwrap_or_default(),
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// POSTs `body` to `path` on the last good endpoint, then on each other one.
    /// An answer etcd marks as an error (`{"error": ...}`, e.g. no leader) counts as
    /// that endpoint failing, except `not found` answers the caller interprets.
    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let url = format!("{}{path}", self.endpoints[i]);
            let answer = async {
                let resp = self
                    .http
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let text = resp.text().await.map_err(|e| e.to_string())?;
                serde_json::from_str::<Value>(&text).map_err(|e| format!("{e}: {text}"))
            }
            .await;
            match answer {
                Ok(v) => {
                    // Streaming endpoints (lease keep-alive) wrap their one message.
                    let v = match v.get("result") {
                        Some(inner) => inner.clone(),
                        None => v,
                    };
                    match v.get("error").and_then(Value::as_str) {
                        Some(msg) if msg.contains("not found") => {
                            self.current.store(i, Ordering::Relaxed);
                            return Ok(v);
                        }
                        Some(msg) => failures.push(format!("{url}: {msg}")),
                        None => {
                            self.current.store(i, Ordering::Relaxed);
                            return Ok(v);
                        }
                    }
                }
                Err(e) => failures.push(format!("{url}: {e}")),
            }
        }
        Err(EtcdError::Unavailable {
            endpoints: self.endpoints.join(","),
            detail: failures.join("; "),
        })
    }

    /// The key's value, if it exists (a linearizable read: it needs a quorum).
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let path = "/v3/kv/range";
        let v = self
            .call(path, json!({ "key": b64(key.as_bytes()) }))
            .await?;
        Ok(kvs(&v, path)?.into_iter().next())
    }

    /// Every key starting with `prefix`, in key order.
    pub async fn get_prefix(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        let path = "/v3/kv/range";
        let v = self
            .call(
                path,
                json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix)) }),
            )
            .await?;
        kvs(&v, path)
    }

    /// Writes the key under `lease` (0 = none).
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<(), EtcdError> {
        let v = self
            .call(
                "/v3/kv/put",
                json!({ "key": b64(key.as_bytes()), "value": b64(value), "lease": lease.to_string() }),
            )
            .await?;
        self.check_error("/v3/kv/put", &v)
    }

    fn check_error(&self, path: &str, v: &Value) -> Result<(), EtcdError> {
        match v.get("error").and_then(Value::as_str) {
            Some(msg) => Err(EtcdError::Protocol {
                path: path.to_owned(),
                detail: msg.to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// Creates the key only if it does not exist, in one transaction; otherwise
    /// returns the key that was there.
    pub async fn create(&self, key: &str, value: &[u8], lease: i64) -> Result<Created, EtcdError> {
        let path = TXN;
        let k = b64(key.as_bytes());
        let (succeeded, v) = self
            .txn(json!({
                "compare": [{"target": "CREATE", "key": k, "create_revision": "0", "result": "EQUAL"}],
                "success": [{"request_put": {"key": k, "value": b64(value), "lease": lease.to_string()}}],
                "failure": [{"request_range": {"key": k}}],
            }))
            .await?;
        if succeeded {
            return Ok(Created::Yes(int(&v["header"]["revision"])));
        }
        let range = &v["responses"][0]["response_range"];
        match kvs(range, path)?.into_iter().next() {
            Some(kv) => Ok(Created::Exists(kv)),
            // Deleted between the compare and the range: cannot happen in one txn.
            None => Err(EtcdError::Protocol {
                path: path.to_owned(),
                detail: format!("create failed but the key {key} is absent: {v}"),
            }),
        }
    }

    /// Replaces the key's value (and lease) only if it is still at `mod_revision`;
    /// returns the new revision, or None when it changed meanwhile.
    pub async fn replace(
        &self,
        key: &str,
        mod_revision: i64,
        value: &[u8],
        lease: i64,
    ) -> Result<Option<i64>, EtcdError> {
        let k = b64(key.as_bytes());
        let (succeeded, v) = self
            .txn(json!({
                "compare": [{"target": "MOD", "key": k, "mod_revision": mod_revision.to_string(), "result": "EQUAL"}],
                "success": [{"request_put": {"key": k, "value": b64(value), "lease": lease.to_string()}}],
            }))
            .await?;
        Ok(succeeded.then(|| int(&v["header"]["revision"])))
    }

    /// Deletes the key only if it is still at `mod_revision`; false when it changed
    /// (or is gone).
    pub async fn delete_at(&self, key: &str, mod_revision: i64) -> Result<bool, EtcdError> {
        let k = b64(key.as_bytes());
        let (succeeded, _) = self
            .txn(json!({
                "compare": [{"target": "MOD", "key": k, "mod_revision": mod_revision.to_string(), "result": "EQUAL"}],
                "success": [{"request_delete_range": {"key": k}}],
            }))
            .await?;
        Ok(succeeded)
    }

    /// One transaction: whether its compare held, and etcd's whole answer.
    async fn txn(&self, body: Value) -> Result<(bool, Value), EtcdError> {
        let v = self.call(TXN, body).await?;
        self.check_error(TXN, &v)?;
        Ok((v.get("succeeded").and_then(Value::as_bool) == Some(true), v))
    }

    /// A new lease of `ttl` seconds; returns its id.
    pub async fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let path = "/v3/lease/grant";
        let v = self.call(path, json!({ "TTL": ttl.to_string() })).await?;
        self.check_error(path, &v)?;
        match int(&v["ID"]) {
            0 => Err(EtcdError::Protocol {
                path: path.into(),
                detail: format!("no lease id in {v}"),
            }),
            id => Ok(id),
        }
    }

    /// Renews the lease; returns its remaining TTL in seconds, 0 when it has expired.
    pub async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
        let v = self
            .call("/v3/lease/keepalive", json!({ "ID": lease.to_string() }))
            .await?;
        Ok(int(&v["TTL"]))
    }

    /// Ends the lease and deletes every key under it.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", json!({ "ID": lease.to_string() }))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn etcd_integers_come_as_strings_or_are_absent() {
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(7)), 7);
        assert_eq!(int(&Value::Null), 0);
    }
}
