//! The HTTP edge over real TCP against a real daemon: slow clients are closed at the
//! header timeout while the API keeps answering, idle keep-alive connections at the
//! idle timeout, slow requests get the JSON request-timeout error, and `/events`
//! outlives the request timeout with SSE keep-alive comments.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boilerhouse_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The daemon binary cargo built for this test crate.
const BIN: &str = env!("CARGO_BIN_EXE_boilerhouse");

const FLOOD: usize = 3_000;

/// The test holds FLOOD sockets, the daemon (its child) inherits the limit too.
fn raise_fd_limit(wanted: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only access the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < wanted {
            lim.rlim_cur = wanted.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    assert!(
        lim.rlim_cur >= wanted,
        "RLIMIT_NOFILE hard limit {} is below the {wanted} this test needs",
        lim.rlim_max
    );
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Reads until the server closes (0 bytes or an error); returns what it sent.
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_at_the_header_timeout_while_the_api_answers() {
    raise_fd_limit(FLOOD as u64 + 2048);
    let d = Daemon::builder(BIN)
        .workload("web.yaml", &workload("web", "pool:\n  min_size: 0\n"))
        .env("BOILERHOUSE_HTTP_HEADER_TIMEOUT_MS", "1000")
        .start()
        .await;
    let pid = d.pid().expect("daemon running");
    let fds_before = open_fds(pid);
    // Three flavours of "half a request": a cut request line, a line without
    // headers, headers without the blank line.
    let halves: [&[u8]; 3] = [
        b"GET /hea",
        b"GET /health HTTP/1.1\r\n",
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
    ];
    let started = Instant::now();
    let closed = Arc::new(AtomicUsize::new(0));
    // /health is asked every 100 ms from the first half-sent connection to the last
    // close, on its own connections.
    let done = Arc::new(tokio::sync::Notify::new());
    let health = tokio::spawn({
        let (url, done) = (format!("{}/health", d.base), done.clone());
        async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let mut answers = Vec::new();
            loop {
                let status = match http.get(&url).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(e) => panic!("GET /health during the flood: {e}"),
                };
                answers.push((started.elapsed(), status, open_fds(pid)));
                tokio::select! {
                    () = done.notified() => return answers,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    });
    let answered = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let mut s = TcpStream::connect(("127.0.0.1", d.port))
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        s.write_all(halves[i % halves.len()]).await.unwrap();
        let (closed, answered) = (closed.clone(), answered.clone());
        readers.push(tokio::spawn(async move {
            let got = read_until_closed(&mut s).await;
            if !got.is_empty() {
                answered.fetch_add(1, Ordering::SeqCst);
            }
            closed.fetch_add(1, Ordering::SeqCst);
            started.elapsed()
        }));
    }
    let opened_in = started.elapsed();
    // The flood is closed within a bound.
    let mut timeline = Vec::new();
    while closed.load(Ordering::SeqCst) < FLOOD {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} of {FLOOD} half-sent connections were closed in 60 s\n{}",
            closed.load(Ordering::SeqCst),
            d.log_tail()
        );
        timeline.push((started.elapsed(), closed.load(Ordering::SeqCst)));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    done.notify_one();
    let answers = health.await.expect("the /health poller panicked");
    let health_ok = answers.iter().filter(|(_, s, _)| *s == 200).count();
    assert_eq!(
        health_ok,
        answers.len(),
        "/health during the flood: {answers:?}"
    );
    let fds_peak = answers.iter().map(|(_, _, fds)| *fds).max().unwrap_or(0);
    assert!(
        answers.iter().any(|(at, _, _)| *at < opened_in),
        "/health was not asked while the flood was opening: {answers:?}"
    );
    let mut close_times = Vec::with_capacity(FLOOD);
    for r in readers {
        close_times.push(r.await.unwrap());
    }
    close_times.sort();
    assert_eq!(
        answered.load(Ordering::SeqCst),
        0,
        "a half-sent request got an answer"
    );
    let fds_after = eventually(Duration::from_secs(30), "daemon fds back to normal", || {
        let n = open_fds(pid);
        (n <= fds_before + 16).then_some(n)
    })
    .await;
    let (s, _) = d.get("/health").await;
    assert_eq!(s, 200);
    eprintln!(
        "flood: {FLOOD} connections opened in {opened_in:?}; daemon fds before {fds_before}, \
         at peak {fds_peak}, after {fds_after}; first closed at {:?}, median {:?}, last {:?}; \
         /health answered 200 {health_ok} times during the flood",
        close_times[0],
        close_times[FLOOD / 2],
        close_times[FLOOD - 1]
    );
    eprintln!("closed over time (elapsed, closed): {timeline:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let d = Daemon::builder(BIN)
        .workload("web.yaml", &workload("web", "pool:\n  min_size: 0\n"))
        .env("BOILERHOUSE_HTTP_IDLE_TIMEOUT_MS", "1000")
        .env("BOILERHOUSE_HTTP_HEADER_TIMEOUT_MS", "60000")
        .start()
        .await;
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).await.unwrap();
    // Two requests on the one connection: keep-alive works, then it goes idle.
    for _ in 0..2 {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !response_complete(&got) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
    }
    let idle_from = Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(20), read_until_closed(&mut s))
        .await
        .expect("the idle connection was not closed within 20 s (idle timeout 1 s)");
    assert!(rest.is_empty(), "unexpected bytes: {rest:?}");
    eprintln!("idle connection closed after {:?}", idle_from.elapsed());
}

/// Has `got` a whole response head plus the `Content-Length` body?
fn response_complete(got: &[u8]) -> bool {
    let text = String::from_utf8_lossy(got);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    body.len() >= len
}

#[tokio::test]
async fn a_request_over_the_request_timeout_gets_the_json_error() {
    let d = Daemon::builder(BIN)
        .workload("web.yaml", &workload("web", "pool:\n  min_size: 0\n"))
        .env("BOILERHOUSE_HTTP_REQUEST_TIMEOUT_MS", "1000")
        .start()
        .await;
    // Headers in time, the body never finished: the handler is still reading it when
    // the request timeout ends it.
    let mut s = TcpStream::connect(("127.0.0.1", d.port)).await.unwrap();
    s.write_all(
        b"POST /tenants/slow/claim HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"poolId\":",
    )
    .await
    .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), read_until_closed(&mut s))
        .await
        .expect("no answer within 20 s (request timeout 1 s)");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(v["code"], "request_timeout", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("BOILERHOUSE_HTTP_REQUEST_TIMEOUT_MS"),
        "{v}"
    );
    // Other requests are unaffected.
    let (s, _) = d.get("/api/v1/health").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn events_outlive_the_request_timeout_with_keep_alive_comments() {
    let d = Daemon::builder(BIN)
        .workload("web.yaml", &workload("web", "pool:\n  min_size: 0\n"))
        .env("BOILERHOUSE_HTTP_REQUEST_TIMEOUT_MS", "1000")
        .env("BOILERHOUSE_HTTP_IDLE_TIMEOUT_MS", "1000")
        .start()
        .await;
    let mut resp = reqwest::Client::new()
        .get(format!("{}/events", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let opened = Instant::now();
    let mut text = String::new();
    // axum's keep-alive comes every 15 s: far past the 1 s request and idle timeouts.
    while !text.lines().any(|l| l.starts_with(':')) {
        let chunk = tokio::time::timeout(Duration::from_secs(40), resp.chunk())
            .await
            .expect("no keep-alive comment within 40 s")
            .expect("the event stream failed")
            .unwrap_or_else(|| {
                panic!(
                    "the event stream ended after {:?}: {text:?}",
                    opened.elapsed()
                )
            });
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!text.contains("request_timeout"), "{text}");
    eprintln!("keep-alive comment after {:?}", opened.elapsed());
}

#[tokio::test]
async fn over_the_connection_cap_a_new_client_waits_for_a_free_slot() {
    // Idle keep-alive connections (the fixture's own client) go within 0.5 s; the two
    // half-sent holders stay for the 60 s header timeout.
    let d = Daemon::builder(BIN)
        .workload("web.yaml", &workload("web", "pool:\n  min_size: 0\n"))
        .env("BOILERHOUSE_HTTP_MAX_CONNECTIONS", "2")
        .env("BOILERHOUSE_HTTP_HEADER_TIMEOUT_MS", "60000")
        .env("BOILERHOUSE_HTTP_IDLE_TIMEOUT_MS", "500")
        .start()
        .await;
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(("127.0.0.1", d.port)).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        holders.push(s);
    }
    // The kernel completes the handshake (backlog); the daemon does not serve it.
    let mut waiting = TcpStream::connect(("127.0.0.1", d.port)).await.unwrap();
    waiting
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_secs(2), waiting.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a third connection was served with the cap at 2: {early:?}"
    );
    drop(holders.pop());
    let got = tokio::time::timeout(Duration::from_secs(20), read_until_closed(&mut waiting))
        .await
        .expect("the waiting client was not served within 20 s of a slot freeing");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test]
async fn sigterm_ends_the_event_stream_and_the_daemon_exits() {
    let mut d = Daemon::builder(BIN)
        .workload("web.yaml", &workload("web", "pool:\n  min_size: 0\n"))
        .start()
        .await;
    let mut resp = reqwest::Client::new()
        .get(format!("{}/events", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let status = d
        .terminate_within(Duration::from_secs(30))
        .await
        .expect("the daemon did not exit within 30 s of SIGTERM with /events open");
    assert!(status.success(), "{status}");
    // The stream ended rather than being cut: the response finished cleanly.
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = resp.chunk().await.transpose() {
            chunk.expect("the event stream broke instead of ending");
        }
    })
    .await;
    assert!(rest.is_ok(), "the event stream did not end");
}
