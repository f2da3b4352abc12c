//! Timed HTTP requests and the drivers that fire many of them.
//!
//! The clock runs from just before `send` until the whole response body is read:
//! request serialization and response JSON parsing happen outside it, so a sample is
//! the loopback round trip plus the daemon's work, nothing of the bench's own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::CONTENT_TYPE;
use serde_json::Value;

use super::BenchResult;

/// One answered request.
#[derive(Debug, Clone)]
pub struct Timed {
    pub status: u16,
    pub elapsed: Duration,
    pub body: Value,
}

/// A keep-alive client for measured requests (reqwest keeps connections open and sets
/// `TCP_NODELAY` by default).
pub fn client() -> BenchResult<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?)
}

/// `POST url` with a JSON body, or `GET url` without one.
pub async fn send(client: &reqwest::Client, url: &str, body: Option<&Value>) -> BenchResult<Timed> {
    let request = match body {
        Some(b) => client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(b)?),
        None => client.get(url),
    };
    let started = Instant::now();
    let response = request.send().await?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    let elapsed = started.elapsed();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok(Timed {
        status,
        elapsed,
        body,
    })
}

/// `GET url` as text (for `/metrics`).
pub async fn send_text(client: &reqwest::Client, url: &str) -> BenchResult<String> {
    Ok(client.get(url).send().await?.text().await?)
}

/// One request of a batch: `POST` with the body, or `GET` when it has none.
#[derive(Debug, Clone)]
pub struct Req {
    pub url: String,
    pub body: Option<Value>,
}

/// What a batch produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Latencies of the 200 answers.
    pub samples: Vec<Duration>,
    /// Bodies of the 200 answers, in completion order.
    pub bodies: Vec<Value>,
    /// Non-200 answers and transport errors.
    pub errors: usize,
    /// The first few errors, for the log.
    pub error_examples: Vec<String>,
    pub wall: Duration,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.samples.extend(other.samples);
        self.bodies.extend(other.bodies);
        self.errors += other.errors;
        for e in other.error_examples {
            if self.error_examples.len() < 5 {
                self.error_examples.push(e);
            }
        }
    }

    fn record(&mut self, req: &Req, result: BenchResult<Timed>) {
        match result {
            Ok(t) if t.status == 200 => {
                self.samples.push(t.elapsed);
                self.bodies.push(t.body);
            }
            Ok(t) => {
                self.errors += 1;
                if self.error_examples.len() < 5 {
                    self.error_examples
                        .push(format!("{} -> {}: {}", req.url, t.status, t.body));
                }
            }
            Err(e) => {
                self.errors += 1;
                if self.error_examples.len() < 5 {
                    self.error_examples.push(format!("{}: {e}", req.url));
                }
            }
        }
    }
}

/// Sends `reqs` over one shared client with `concurrency` requests in flight at any
/// time (closed loop: each worker sends its next request when the previous answers).
pub async fn drive(client: &reqwest::Client, reqs: Vec<Req>, concurrency: usize) -> Outcome {
    let reqs = Arc::new(reqs);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (client, reqs, next) = (client.clone(), reqs.clone(), next.clone());
            tokio::spawn(async move {
                let mut out = Outcome::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(req) = reqs.get(i) else { break };
                    let result = send(&client, &req.url, req.body.as_ref()).await;
                    out.record(req, result);
                }
                out
            })
        })
        .collect();
    let mut total = Outcome::default();
    for w in workers {
        match w.await {
            Ok(out) => total.merge(out),
            Err(e) => {
                total.errors += 1;
                total.error_examples.push(format!("worker failed: {e}"));
            }
        }
    }
    total.wall = started.elapsed();
    total
}

/// Sends one request from each of `clients` at the same instant (an open burst).
/// Each client should already hold a connection; `wall` runs from the start signal
/// to the last answer.
pub async fn burst(clients: &[reqwest::Client], reqs: Vec<Req>) -> Outcome {
    let (go, ready) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .zip(reqs)
        .map(|(client, req)| {
            let mut ready = ready.clone();
            tokio::spawn(async move {
                let _ = ready.wait_for(|go| *go).await;
                let result = send(&client, &req.url, req.body.as_ref()).await;
                (req, result, Instant::now())
            })
        })
        .collect();
    // Let every task reach the start line before the signal.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let _ = go.send(true);
    let mut total = Outcome::default();
    let mut last = started;
    for t in tasks {
        match t.await {
            Ok((req, result, done)) => {
                last = last.max(done);
                total.record(&req, result);
            }
            Err(e) => {
                total.errors += 1;
                total
                    .error_examples
                    .push(format!("client task failed: {e}"));
            }
        }
    }
    total.wall = last - started;
    total
}
