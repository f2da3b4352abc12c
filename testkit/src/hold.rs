//! A holding HTTP proxy for crash tests: it forwards requests to an S3 endpoint (the
//! `Host` header included, which the request signature covers) and, when a test has
//! armed a rule, holds the next request that matches it — before forwarding it, or
//! after forwarding it but before answering — until the test releases or fails it.
//! The test is told when a request is being held, so it can kill the daemon at
//! exactly that moment. Every answered request is logged.
//!
//! It runs on its own thread and runtime, so it outlives any test's runtime, and
//! holds requests without blocking any other.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use tokio::sync::{oneshot, Notify};

use crate::s3::end_to_end;

/// When a held request is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Before it reaches the server: the server has not seen it.
    Request,
    /// After the server answered it: the server has done it, the client does not know.
    Response,
}

/// What to do with a held request.
#[derive(Debug)]
enum Verdict {
    Forward,
    Fail,
}

struct Rule {
    method: Method,
    path_contains: Option<String>,
    stage: Stage,
}

impl Rule {
    fn matches(&self, method: &Method, path: &str) -> bool {
        self.method == method
            && self
                .path_contains
                .as_deref()
                .is_none_or(|needle| path.contains(needle))
    }
}

/// A request the proxy holds (or held).
#[derive(Clone, Debug)]
pub struct HeldRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub stage: Stage,
}

/// One answered request: method, path and query, status.
#[derive(Clone, Debug)]
pub struct Answered {
    pub method: String,
    pub path: String,
    pub status: u16,
}

#[derive(Default)]
struct Shared {
    rules: Vec<Rule>,
    held: Vec<(HeldRequest, oneshot::Sender<Verdict>)>,
    /// Every request ever held, in order.
    ever_held: Vec<HeldRequest>,
    answered: Vec<Answered>,
}

struct State {
    client: reqwest::Client,
    backend: String,
    shared: Mutex<Shared>,
    changed: Notify,
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct HoldProxy {
    port: u16,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HoldProxy {
    /// Listens on a free loopback port and forwards to `backend` (`http://host:port`).
    pub fn start(backend: &str) -> Self {
        let state = Arc::new(State {
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("hold proxy HTTP client"),
            backend: backend.trim_end_matches('/').to_owned(),
            shared: Mutex::new(Shared::default()),
            changed: Notify::new(),
        });
        let (shutdown, stopped) = oneshot::channel::<()>();
        let (bound, listening) = std::sync::mpsc::channel::<std::io::Result<u16>>();
        let served = state.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("hold proxy runtime");
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(("127.0.0.1", 0)).await {
                    Ok(listener) => {
                        let _ = bound.send(listener.local_addr().map(|a| a.port()));
                        listener
                    }
                    Err(e) => {
                        let _ = bound.send(Err(e));
                        return;
                    }
                };
                let app = axum::Router::new().fallback(forward).with_state(served);
                tokio::select! {
                    served = axum::serve(listener, app) => served.expect("hold proxy"),
                    _ = stopped => {}
                }
            });
            // Dropping the runtime closes the listener and every open connection.
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        let port = match listening.recv() {
            Ok(Ok(port)) => port,
            Ok(Err(e)) => panic!("hold proxy cannot listen: {e}"),
            Err(_) => panic!("hold proxy thread died before listening"),
        };
        Self {
            port,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Arms a rule: the next request with `method` whose path (and query) contains
    /// `path_contains` is held at `stage`. Each rule holds one request.
    pub fn hold_next(&self, method: &str, path_contains: Option<&str>, stage: Stage) {
        let method = Method::from_bytes(method.as_bytes()).expect("HTTP method");
        self.state.lock().rules.push(Rule {
            method,
            path_contains: path_contains.map(str::to_owned),
            stage,
        });
    }

    /// Disarms every rule that has not held a request yet.
    pub fn disarm(&self) {
        self.state.lock().rules.clear();
    }

    /// Waits until some request is held (or was held since the last `release`/`fail`
    /// call); panics after `timeout` with what the proxy answered meanwhile.
    pub async fn wait_held(&self, timeout: Duration) -> HeldRequest {
        let started = Instant::now();
        loop {
            let notified = self.state.changed.notified();
            if let Some((req, _)) = self.state.lock().held.first() {
                return req.clone();
            }
            let left = timeout.saturating_sub(started.elapsed());
            assert!(
                !left.is_zero(),
                "no request was held in {timeout:?}; answered: {:#?}",
                self.answered()
            );
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }

    /// Lets every held request go on.
    pub fn release(&self) {
        for (_, tx) in std::mem::take(&mut self.state.lock().held) {
            let _ = tx.send(Verdict::Forward);
        }
    }

    /// Answers every held request with 503 (at the request stage it never reaches
    /// the server).
    pub fn fail(&self) {
        for (_, tx) in std::mem::take(&mut self.state.lock().held) {
            let _ = tx.send(Verdict::Fail);
        }
    }

    /// How many requests are being held right now.
    pub fn holding(&self) -> usize {
        self.state.lock().held.len()
    }

    /// Every request held so far.
    pub fn ever_held(&self) -> Vec<HeldRequest> {
        self.state.lock().ever_held.clone()
    }

    /// Every request answered so far, in order.
    pub fn answered(&self) -> Vec<Answered> {
        self.state.lock().answered.clone()
    }

    /// Waits until `check` holds for the answered requests; panics after `timeout`.
    pub async fn wait_answered(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&[Answered]) -> bool,
    ) {
        let started = Instant::now();
        loop {
            let notified = self.state.changed.notified();
            if check(&self.state.lock().answered) {
                return;
            }
            let left = timeout.saturating_sub(started.elapsed());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; answered: {:#?}",
                self.answered()
            );
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }
}

impl Drop for HoldProxy {
    fn drop(&mut self) {
        self.fail();
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Takes the first armed rule matching the request, if any.
fn take_rule(state: &State, method: &Method, path: &str) -> Option<Stage> {
    let mut shared = state.lock();
    let i = shared.rules.iter().position(|r| r.matches(method, path))?;
    Some(shared.rules.remove(i).stage)
}

/// Holds the request until the test decides; a dropped decision (the proxy stops)
/// fails it.
async fn hold(state: &State, method: &Method, path: &str, stage: Stage) -> Verdict {
    let (tx, rx) = oneshot::channel();
    let req = HeldRequest {
        method: method.to_string(),
        path: path.to_owned(),
        stage,
    };
    {
        let mut shared = state.lock();
        shared.ever_held.push(req.clone());
        shared.held.push((req, tx));
    }
    state.changed.notify_waiters();
    rx.await.unwrap_or(Verdict::Fail)
}

fn record(state: &State, method: &Method, path: &str, status: u16) {
    state.lock().answered.push(Answered {
        method: method.to_string(),
        path: path.to_owned(),
        status,
    });
    state.changed.notify_waiters();
}

async fn forward(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let method = parts.method.clone();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(e) => return error(&state, &method, &path, format!("reading the body: {e}")),
    };
    let stage = take_rule(&state, &method, &path);
    if stage == Some(Stage::Request) {
        if let Verdict::Fail = hold(&state, &method, &path, Stage::Request).await {
            return error(&state, &method, &path, "failed by the test".into());
        }
    }
    let sent = state
        .client
        .request(method.clone(), format!("{}{path}", state.backend))
        .headers(end_to_end(&parts.headers))
        .body(body)
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(e) => return error(&state, &method, &path, format!("forwarding: {e}")),
    };
    let status = answer.status();
    let headers = end_to_end(answer.headers());
    let body = match answer.bytes().await {
        Ok(body) => body,
        Err(e) => return error(&state, &method, &path, format!("reading the answer: {e}")),
    };
    if stage == Some(Stage::Response) {
        if let Verdict::Fail = hold(&state, &method, &path, Stage::Response).await {
            return error(&state, &method, &path, "failed by the test".into());
        }
    }
    record(&state, &method, &path, status.as_u16());
    let mut response = axum::response::Response::new(axum::body::Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

fn error(state: &State, method: &Method, path: &str, message: String) -> axum::response::Response {
    record(state, method, path, 503);
    let mut response = axum::response::Response::new(axum::body::Body::from(message));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
}
