//! The daemon's HTTP API as tests call it: every helper panics with the daemon's log
//! tail when the answer is not the expected one, so a failing test shows why.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::Daemon;

impl Daemon {
    /// `method path` with an optional JSON body, bearing the daemon's API token if it
    /// has one; returns (status, body as JSON, or as a string when it is not JSON).
    pub async fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = self.url(path);
        let m = reqwest::Method::from_bytes(method.as_bytes())
            .unwrap_or_else(|e| panic!("HTTP method {method:?}: {e}"));
        let mut req = self.http.request(m, &url);
        if let Some((_, token)) = self.env.iter().find(|(k, _)| k == "BOILERHOUSE_API_TOKEN") {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request("POST", path, Some(body)).await
    }

    pub async fn claim(&self, tenant: &str, body: Value) -> Value {
        let (s, v) = self.post(&format!("/tenants/{tenant}/claim"), body).await;
        assert_eq!(s, 200, "claim {tenant}: {v}\n{}", self.log_tail());
        v
    }

    pub async fn release(&self, tenant: &str, body: Value) -> Value {
        let (s, v) = self.post(&format!("/tenants/{tenant}/release"), body).await;
        assert_eq!(s, 200, "release {tenant}: {v}\n{}", self.log_tail());
        v
    }

    pub async fn pool(&self, id: &str) -> Value {
        let (s, v) = self.get(&format!("/pools/{id}")).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Polls until `check` holds for the pool view, or panics after `timeout`.
    pub async fn wait_pool(
        &self,
        id: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let v = self.pool(id).await;
            if check(&v) {
                return v;
            }
            assert!(
                started.elapsed() < timeout,
                "pool {id} did not reach the expected state in {timeout:?}: {v}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_idle(&self, id: &str, n: u64) -> Value {
        self.wait_pool(id, Duration::from_secs(60), |v| {
            v["idleCount"].as_u64() >= Some(n)
        })
        .await
    }
}
