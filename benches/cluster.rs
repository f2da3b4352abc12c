//! `make bench`: what cluster mode costs a claim, beside single-node figures from the
//! same run on the same machine.
//!
//! A 3-member etcd cluster (Debian's etcd-server, loopback ports) and three release
//! daemons joined to it, plus one daemon in single-node mode; every daemon has one
//! workload `web` (`recycle: reuse`, `min_size` = `max_size` = K idle containers of the
//! test image), so claims are warm and releases hand containers straight back.
//!
//! Figures (printed as a table):
//! - reused claim (the tenant already holds its container): single node; cluster,
//!   through the holding node; cluster, through a node that forwards to the holder;
//! - new-tenant claim (warm): single node; cluster (placement, create-if-absent
//!   transaction, the container written to the key); each release untimed;
//! - burst: K claims at once on the single node; 3×K claims at once spread over the
//!   three nodes: claims/s;
//! - etcd's share: the bench times the same etcd calls a new claim makes (two
//!   linearizable reads and two transactions) straight against etcd's gateway, and
//!   divides by the cluster's new-claim p50.
//!
//! Knobs: `BOILERHOUSE_BENCH_CLUSTER_SAMPLES` (claims per figure, default 200),
//! `BOILERHOUSE_BENCH_CLUSTER_IDLE` (K, default 10). `make bench-smoke` runs it small.
//! Every container is removed at the end (the daemons' instance guards), also on error.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use boilerhouse_testkit::bench::{bench_main, BenchResult};
use boilerhouse_testkit::{
    free_port, require_image, unique_instance, workload, Daemon, EtcdCluster,
};

const BIN: &str = env!("CARGO_BIN_EXE_boilerhouse");

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> std::process::ExitCode {
    bench_main("cluster", run)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Figure {
    name: String,
    samples: Vec<Duration>,
}

impl Figure {
    fn new(name: &str, mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self {
            name: name.to_owned(),
            samples,
        }
    }
    fn p50(&self) -> Duration {
        pct(&self.samples, 0.5)
    }
    fn row(&self) -> String {
        format!(
            "| {} | {} | {:.2} ms | {:.2} ms | {:.2} ms |",
            self.name,
            self.samples.len(),
            ms(self.p50()),
            ms(pct(&self.samples, 0.9)),
            ms(pct(&self.samples, 0.99))
        )
    }
}

async fn post(http: &reqwest::Client, d: &Daemon, path: &str, body: Value) -> BenchResult<Value> {
    let r = http.post(d.url(path)).json(&body).send().await?;
    let status = r.status();
    let v: Value = r.json().await?;
    if !status.is_success() {
        return Err(format!("POST {path} on {}: {status} {v}", d.base).into());
    }
    Ok(v)
}

/// A timed claim.
async fn claim(http: &reqwest::Client, d: &Daemon, tenant: &str) -> BenchResult<(Duration, Value)> {
    let started = Instant::now();
    let v = post(http, d, &format!("/tenants/{tenant}/claim"), json!({})).await?;
    Ok((started.elapsed(), v))
}

async fn release(http: &reqwest::Client, d: &Daemon, tenant: &str) -> BenchResult<()> {
    post(
        http,
        d,
        &format!("/tenants/{tenant}/release"),
        json!({"sync": false}),
    )
    .await
    .map(|_| ())
}

/// Waits until `d`'s pool has `k` idle containers again.
async fn settle(d: &Daemon, k: u64) -> BenchResult<()> {
    let started = Instant::now();
    loop {
        let (s, v) = d.get("/pools/web").await;
        if s == 200 && v["idleCount"].as_u64() >= Some(k) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!("pool on {} did not return to {k} idle: {v}", d.base).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run() -> BenchResult<()> {
    require_image(&boilerhouse_testkit::test_image())?;
    let samples = knob("BOILERHOUSE_BENCH_CLUSTER_SAMPLES", 200);
    let k = knob("BOILERHOUSE_BENCH_CLUSTER_IDLE", 10);
    let yaml = workload(
        "web",
        &format!("pool:\n  min_size: {k}\n  max_size: {k}\n  recycle: reuse\n"),
    );
    let etcd = EtcdCluster::try_start(3).await?;
    let name = unique_instance();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let port = free_port();
        nodes.push(
            Daemon::builder(BIN)
                .workload("web.yaml", &yaml)
                .env("BOILERHOUSE_API_PORT", &port.to_string())
                .env("BOILERHOUSE_ETCD_ENDPOINTS", &etcd.endpoints())
                .env("BOILERHOUSE_CLUSTER", &name)
                .env("BOILERHOUSE_NODE_ID", &format!("n{i}"))
                .env(
                    "BOILERHOUSE_ADVERTISE_URL",
                    &format!("http://127.0.0.1:{port}"),
                )
                .env("RUST_LOG", "warn")
                .die_with_parent()
                .try_start()
                .await?,
        );
    }
    let single = Daemon::builder(BIN)
        .workload("web.yaml", &yaml)
        .env("RUST_LOG", "warn")
        .die_with_parent()
        .try_start()
        .await?;
    for d in nodes.iter().chain([&single]) {
        settle(d, k as u64).await?;
    }
    // Every node's record shows its idle containers before placement is measured.
    let started = Instant::now();
    loop {
        let (_, v) = nodes[0].get("/cluster").await;
        let idle: u64 = v["totals"][0]["idle"].as_u64().unwrap_or(0);
        if idle >= 3 * k as u64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!("the cluster view never showed the idle containers: {v}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let http = reqwest::Client::new();

    // Reused claims.
    claim(&http, &single, "reuse").await?;
    let mut reuse_single = Vec::new();
    for _ in 0..samples {
        reuse_single.push(claim(&http, &single, "reuse").await?.0);
    }
    let (_, v) = claim(&http, &nodes[0], "reuse").await?;
    let holder: usize = nodes
        .iter()
        .position(|d| {
            v["containerName"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("bh-{}-", d.instance)))
        })
        .ok_or("no node's instance in the claim's container name")?;
    let forwarder = (holder + 1) % 3;
    let mut reuse_holder = Vec::new();
    let mut reuse_forward = Vec::new();
    for _ in 0..samples {
        reuse_holder.push(claim(&http, &nodes[holder], "reuse").await?.0);
        reuse_forward.push(claim(&http, &nodes[forwarder], "reuse").await?.0);
    }

    // New tenants, one at a time; releases untimed.
    let mut new_single = Vec::new();
    let mut new_cluster = Vec::new();
    for i in 0..samples {
        let t = format!("new-{i}");
        new_single.push(claim(&http, &single, &t).await?.0);
        release(&http, &single, &t).await?;
        let via = &nodes[i % 3];
        new_cluster.push(claim(&http, via, &t).await?.0);
        release(&http, via, &t).await?;
    }
    for d in nodes.iter().chain([&single]) {
        settle(d, (k - 1) as u64).await?;
    }

    // Bursts: every idle container claimed at once, fail-fast (`waitMs: 0`): on the
    // single node k-1 claims; over the cluster 3(k-1), spread over the three nodes.
    // Placement reads capacity that lags by up to one publish tick, so a burst can
    // send more claims to a node than it has idle: those fail fast and are counted.
    let burst = |d: &Daemon, tenant: String| {
        let http = http.clone();
        let url = d.url(&format!("/tenants/{tenant}/claim"));
        async move {
            let r = http.post(url).json(&json!({"waitMs": 0})).send().await;
            r.is_ok_and(|r| r.status().is_success())
        }
    };
    let started = Instant::now();
    let one =
        futures_util::future::join_all((0..k - 1).map(|i| burst(&single, format!("b1-{i}")))).await;
    let single_secs = started.elapsed().as_secs_f64();
    let single_ok = one.iter().filter(|ok| **ok).count();
    let n = 3 * (k - 1);
    let started = Instant::now();
    let all =
        futures_util::future::join_all((0..n).map(|i| burst(&nodes[i % 3], format!("b3-{i}"))))
            .await;
    let cluster_secs = started.elapsed().as_secs_f64();
    let cluster_ok = all.iter().filter(|ok| **ok).count();

    // etcd's calls of a new claim, straight against the gateway.
    let key = |i: usize| B64.encode(format!("/bench/{name}/k{i}"));
    let ep = etcd.endpoint(0);
    let mut reads = Vec::new();
    let mut txns = Vec::new();
    for i in 0..samples {
        let started = Instant::now();
        http.post(format!("{ep}/v3/kv/range"))
            .json(&json!({"key": key(i)}))
            .send()
            .await?
            .bytes()
            .await?;
        reads.push(started.elapsed());
        let started = Instant::now();
        http.post(format!("{ep}/v3/kv/txn"))
            .json(&json!({
                "compare": [{"target": "CREATE", "key": key(i), "create_revision": "0", "result": "EQUAL"}],
                "success": [{"request_put": {"key": key(i), "value": B64.encode("x")}}],
                "failure": [{"request_range": {"key": key(i)}}],
            }))
            .send()
            .await?
            .bytes()
            .await?;
        txns.push(started.elapsed());
    }

    let figures = [
        Figure::new("reused claim, single node", reuse_single),
        Figure::new("reused claim, cluster, via the holder", reuse_holder),
        Figure::new(
            "reused claim, cluster, via a forwarding node",
            reuse_forward,
        ),
        Figure::new("new-tenant warm claim, single node", new_single),
        Figure::new("new-tenant warm claim, cluster (any node)", new_cluster),
        Figure::new("etcd linearizable read (gateway)", reads),
        Figure::new("etcd create-if-absent txn (gateway)", txns),
    ];
    println!("\n## cluster mode (samples {samples}, {k} idle per node)\n");
    println!("| figure | n | p50 | p90 | p99 |\n|---|--:|--:|--:|--:|");
    for f in &figures {
        println!("{}", f.row());
    }
    let etcd_part = 2.0 * ms(figures[5].p50()) + 2.0 * ms(figures[6].p50());
    println!(
        "\n- via the holder / single node (reused, p50): {:.2}×",
        ms(figures[1].p50()) / ms(figures[0].p50())
    );
    println!(
        "- via a forwarder / via the holder (reused, p50): {:.2}×",
        ms(figures[2].p50()) / ms(figures[1].p50())
    );
    println!(
        "- new claim, cluster / single node (p50): {:.2}×",
        ms(figures[4].p50()) / ms(figures[3].p50())
    );
    println!(
        "- etcd's share of a new cluster claim: 2 reads + 2 txns = {etcd_part:.2} ms of {:.2} ms p50 ({:.0} %)",
        ms(figures[4].p50()),
        100.0 * etcd_part / ms(figures[4].p50())
    );
    println!(
        "- burst: single node, {} claims at once: {:.0} claims/s ({single_ok} ok); cluster, {n} claims at once through 3 nodes: {:.0} claims/s ({cluster_ok} ok, {} exhausted on an over-placed node)",
        k - 1,
        single_ok as f64 / single_secs,
        cluster_ok as f64 / cluster_secs,
        n - cluster_ok,
    );
    Ok(())
}
