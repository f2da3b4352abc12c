//! The dashboard in a real browser: Debian's chromium, headless, driven over WebDriver
//! (chromedriver, started here on a free loopback port) by fantoccini, against a
//! daemon on the real Docker engine. Every page loads without a console error at
//! desktop and phone width; a claim made through the API appears on the open
//! overview within 2 s without a reload (the dashboard's promise: live from
//! `/events`, where the fallback refresh would take 15 s); scaling, destroying and
//! releasing work from their buttons; a token guards the dashboard and never shows.
//!
//! `make test` provisions chromium and chromedriver; without them these tests fail
//! and say how to get them. Screenshots of every page go to target/ui-screenshots/.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use boilerhouse_testkit::{free_port, web_daemon, workload, Daemon};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_boilerhouse");

/// The pages of the dashboard, by screenshot name, path and a word of their heading.
const PAGES: &[(&str, &str, &str)] = &[
    ("overview", "/ui", "Overview"),
    ("pool", "/ui/pools/web", "Pool"),
    ("tenants", "/ui/tenants", "Tenants"),
    ("tenant", "/ui/tenants/alice", "Tenant"),
    ("activity", "/ui/activity", "Activity"),
    ("metrics", "/ui/metrics", "Metrics"),
    ("try", "/ui/try", "Try"),
];

/// How long a live update may take to show (the bound; the periodic
/// refresh that would also show it runs every 15 s).
const LIVE: Duration = Duration::from_secs(2);

/// Longer than any page takes to load; a page still loading then has hung.
const PAGE_LOAD: Duration = Duration::from_secs(10);

/// Generous bound for what needs Docker (containers created, removed).
const DOCKER: Duration = Duration::from_secs(60);

/// Moves this test's thread, and every thread and process it starts from now on (the
/// daemon, chromedriver, chromium), into a network namespace of its own with only a
/// loopback interface. Chromium fails requests under way whenever the host's network
/// changes, and Docker adds and removes an interface for every container the other
/// tests create; in here it sees none of that. Docker itself is reached through its
/// Unix socket, which no network namespace hides.
fn private_network() {
    // SAFETY: unshare(2) with CLONE_NEWNET changes only the calling thread's network
    // namespace; it touches no memory of ours.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {} (the dashboard tests need root, as the Docker tests do)",
        std::io::Error::last_os_error()
    );
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("run ip (iproute2)");
    assert!(up.success(), "ip link set lo up: {up}");
}

fn find_bin(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/lib/chromium"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is missing: the dashboard tests drive Debian's chromium through \
                 chromedriver; run scripts/provision-test-deps.sh (`make test` provisions them)"
            )
        })
}

/// A headless chromium behind its own chromedriver. Dropping it kills both (the
/// driver runs in its own process group, which the browser's processes join).
struct Browser {
    client: Client,
    driver: Child,
    driver_url: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        use std::os::unix::process::CommandExt;
        let chromium = find_bin("chromium");
        let chromedriver = find_bin("chromedriver");
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let driver_url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen on {port} in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::Builder::new()
            .prefix("bh-chromium-")
            .tempdir()
            .unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // The test runs as root in a container: chromium's sandbox needs
                    // user namespaces it does not get there.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver_url)
            .await
            .unwrap_or_else(|e| panic!("no browser session from chromedriver: {e}"));
        // A page that does not load in 10 s hangs (they load in well under a second):
        // the seventh page once waited a minute for a connection (see app.js).
        client
            .update_timeouts(fantoccini::wd::TimeoutConfiguration::new(
                Some(Duration::from_secs(10)),
                Some(PAGE_LOAD),
                None,
            ))
            .await
            .expect("set WebDriver timeouts");
        let session = client
            .session_id()
            .await
            .unwrap()
            .expect("a WebDriver session id");
        Browser {
            client,
            driver,
            driver_url,
            session,
            http: reqwest::Client::new(),
            _profile: profile,
        }
    }

    /// Opens `url`; a browser error page (the daemon unreachable) fails the test.
    async fn open(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
        let error = self
            .js("var e = document.querySelector('.error-code'); \
                 return document.body.classList.contains('neterror') ? (e ? e.textContent : 'a network error') : null;")
            .await;
        if let Some(code) = error.as_str() {
            panic!("open {url}: chromium shows {code}");
        }
    }

    /// The browser console's entries since the last call (chromedriver hands each
    /// entry out once), as "LEVEL message".
    async fn console(&self) -> Vec<String> {
        let url = format!("{}/session/{}/se/log", self.driver_url, self.session);
        let v: Value = self
            .http
            .post(&url)
            .json(&json!({"type": "browser"}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"))
            .json()
            .await
            .expect("chromedriver's log as JSON");
        v["value"]
            .as_array()
            .unwrap_or_else(|| panic!("chromedriver's log: {v}"))
            .iter()
            .map(|e| format!("{} {}", e["level"].as_str().unwrap_or("?"), e["message"]))
            .collect()
    }

    async fn assert_no_console_errors(&self, page: &str) {
        let errors: Vec<String> = self
            .console()
            .await
            .into_iter()
            .filter(|e| e.starts_with("SEVERE") || e.starts_with("WARNING"))
            .collect();
        assert!(errors.is_empty(), "{page}: console says {errors:#?}");
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target dir")
            .join("ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    /// The text of the first element matching `css`, or None when there is none.
    async fn text(&self, css: &str) -> Option<String> {
        let v = self
            .js(&format!(
                "var e = document.querySelector({}); return e ? e.textContent.trim() : null;",
                json!(css)
            ))
            .await;
        v.as_str().map(str::to_owned)
    }

    /// Polls until the element matching `css` has text for which `ok` holds.
    async fn wait_text(&self, css: &str, within: Duration, ok: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let text = self.text(css).await;
            if let Some(t) = text.as_deref().filter(|t| ok(t)) {
                return t.to_owned();
            }
            if started.elapsed() >= within {
                let url = self.client.current_url().await.map(|u| u.to_string());
                panic!("{css} did not reach the expected text in {within:?} at {url:?}: {text:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_gone(&self, css: &str, within: Duration) {
        let started = Instant::now();
        while self.text(css).await.is_some() {
            assert!(
                started.elapsed() < within,
                "{css} still on the page after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Waits for the page's event stream to be connected (its live dot says so).
    async fn wait_live(&self) {
        self.wait_text("#live", PAGE_LOAD, |t| t == "live").await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = -(self.driver.id() as i32);
        let _ = Command::new("kill")
            .args(["-9", "--", &group.to_string()])
            .status();
        let _ = self.driver.wait();
    }
}

async fn pool_daemon(min: usize, max: usize) -> Daemon {
    let d = web_daemon(
        BIN,
        &format!("pool:\n  min_size: {min}\n  max_size: {max}\n"),
    )
    .await;
    d.wait_idle("web", min as u64).await;
    d
}

#[tokio::test]
async fn every_page_loads_without_console_errors_at_desktop_and_phone_width() {
    private_network();
    let d = pool_daemon(2, 4).await;
    d.claim("alice", json!({})).await;
    let b = Browser::start().await;
    for (width, height, prefix) in [(1280, 900, "desktop"), (390, 844, "phone")] {
        b.client.set_window_size(width, height).await.unwrap();
        for (name, path, heading) in PAGES {
            b.open(&d.url(path)).await;
            let h1 = b
                .wait_text("h1", Duration::from_secs(10), |t| t.contains(heading))
                .await;
            assert!(h1.contains(heading), "{path}: {h1}");
            if b.text("[data-live]").await.is_some() {
                b.wait_live().await;
            }
            // The page itself fits the window; wide tables scroll in their own box.
            let overflow = b
                .js("return document.documentElement.scrollWidth - window.innerWidth;")
                .await;
            if overflow.as_i64().unwrap_or(i64::MAX) > 0 {
                let culprits = b
                    .js("return Array.from(document.querySelectorAll('body *'))\
                         .filter(e => e.getBoundingClientRect().right > window.innerWidth)\
                         .slice(0, 8).map(e => e.tagName + '.' + e.className + ' ' + \
                         Math.round(e.getBoundingClientRect().right));")
                    .await;
                panic!("{path} at {width} px is {overflow} px wider than the window: {culprits}");
            }
            b.screenshot(&format!("{prefix}-{name}")).await;
            b.assert_no_console_errors(&format!("{path} at {width} px"))
                .await;
        }
    }
}

#[tokio::test]
async fn a_claim_made_through_the_api_shows_on_the_overview_without_a_reload() {
    private_network();
    let d = pool_daemon(1, 3).await;
    let b = Browser::start().await;
    b.open(&d.url("/ui")).await;
    b.wait_live().await;
    assert_eq!(b.text("#card-tenants").await.as_deref(), Some("0"));
    // A mark on this document: a reload would make a new one without it.
    b.js("window.__boilerhouseMark = 'same document'; return null;")
        .await;
    d.claim("bob", json!({})).await;
    b.wait_text("#card-tenants", LIVE, |t| t == "1").await;
    b.wait_text("#pool-web [data-col=claimed]", LIVE, |t| t == "1")
        .await;
    let mark = b.js("return window.__boilerhouseMark || null;").await;
    assert_eq!(mark, json!("same document"), "the page was reloaded");
    // The newest activity lists the claim.
    b.wait_text("#overview-live", LIVE, |t| t.contains("bob"))
        .await;
    b.assert_no_console_errors("/ui after a live update").await;
}

#[tokio::test]
async fn scale_and_destroy_from_the_pool_page_change_the_pool() {
    private_network();
    let d = pool_daemon(1, 4).await;
    let b = Browser::start().await;
    b.open(&d.url("/ui/pools/web")).await;
    b.wait_live().await;
    let input = b.client.find(Locator::Css("#target-size")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys("3").await.unwrap();
    b.click("#scale-form button[type=submit]").await;
    // The API sees the new size, and so does the page, without a reload.
    d.wait_pool("web", DOCKER, |v| {
        v["currentSize"] == 3 && v["idleCount"] == 3
    })
    .await;
    b.wait_text("#pool-size", LIVE, |t| t == "3").await;
    b.wait_text("#pool-idle", DOCKER, |t| t == "3").await;

    // Destroy one idle container, confirming the dialog.
    let button = b
        .client
        .find(Locator::Css("button[id^=destroy-]"))
        .await
        .expect("a destroy button for an idle container");
    let id = button
        .attr("id")
        .await
        .unwrap()
        .unwrap()
        .trim_start_matches("destroy-")
        .to_owned();
    button.click().await.unwrap();
    let question = b.client.get_alert_text().await.expect("a confirm dialog");
    assert!(question.contains(&id), "{question}");
    b.client.accept_alert().await.unwrap();
    b.wait_gone(&format!("#c-{id}"), DOCKER).await;
    let (_, containers) = d.get("/containers?poolId=web").await;
    assert!(
        !containers.to_string().contains(&id),
        "{id} still listed: {containers}"
    );
    b.assert_no_console_errors("/ui/pools/web after scale and destroy")
        .await;
}

#[tokio::test]
async fn release_from_the_tenant_page_ends_the_claim() {
    private_network();
    let d = pool_daemon(1, 3).await;
    let grant = d.claim("carol", json!({})).await;
    let b = Browser::start().await;
    b.open(&d.url("/ui/tenants/carol")).await;
    b.wait_live().await;
    let shown = b.text("#claim-web").await.unwrap_or_default();
    assert!(
        shown.contains(grant["containerId"].as_str().unwrap()),
        "{shown}"
    );
    b.click("#release-web").await;
    b.wait_text("#flash", DOCKER, |t| t.starts_with("Released"))
        .await;
    let (_, status) = d.get("/tenants/carol/status").await;
    assert_eq!(status["status"], "cold", "{status}");
    b.wait_text("#no-claims", LIVE, |t| t.contains("holds no claim"))
        .await;
    b.assert_no_console_errors("/ui/tenants/carol after release")
        .await;
}

#[tokio::test]
async fn a_token_guards_the_dashboard_and_never_shows_in_it() {
    private_network();
    const TOKEN: &str = "ui-test-token-8f3a91c2";
    let d = Daemon::builder(BIN)
        .workload(
            "web.yaml",
            &workload("web", "pool:\n  min_size: 1\n  max_size: 3\n"),
        )
        .env("BOILERHOUSE_API_TOKEN", TOKEN)
        .start()
        .await;
    d.wait_idle("web", 1).await;
    let b = Browser::start().await;

    // Without the cookie every page is the token form.
    b.open(&d.url("/ui/pools/web")).await;
    b.wait_text("h1", Duration::from_secs(10), |t| t == "Log in")
        .await;
    // A wrong token is refused, with the reason, on the form.
    b.client
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys("not-the-token")
        .await
        .unwrap();
    b.click("#login-form button[type=submit]").await;
    b.wait_text("#login-error", Duration::from_secs(10), |t| !t.is_empty())
        .await;
    b.console().await; // the refused form answers 401: expected, not an error of the page

    // The right one leads to the page asked for.
    b.client
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    b.click("#login-form button[type=submit]").await;
    b.wait_text("h1", Duration::from_secs(10), |t| t.starts_with("Pool"))
        .await;
    b.wait_live().await;
    let url = b.client.current_url().await.unwrap();
    assert_eq!(url.path(), "/ui/pools/web");
    assert!(!url.as_str().contains(TOKEN), "{url}");

    // The cookie is HttpOnly and strict, and carries no token.
    let cookies = b.client.get_all_cookies().await.unwrap();
    let session = cookies
        .iter()
        .find(|c| c.name() == "boilerhouse_session")
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    assert_eq!(session.http_only(), Some(true), "{session:?}");
    assert_eq!(
        format!("{:?}", session.same_site()),
        "Some(Strict)",
        "{session:?}"
    );
    assert!(!session.value().contains(TOKEN));
    let script_sees = b.js("return document.cookie;").await;
    assert!(
        !script_sees.to_string().contains("boilerhouse_session"),
        "{script_sees}"
    );

    // An action from the page works with the cookie (same origin)...
    let input = b.client.find(Locator::Css("#target-size")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys("2").await.unwrap();
    b.click("#scale-form button[type=submit]").await;
    d.wait_pool("web", DOCKER, |v| v["currentSize"] == 2).await;

    // ...and the token appears in no page, URL or log line.
    for (_, path, _) in PAGES {
        b.open(&d.url(path)).await;
        let source = b.client.source().await.unwrap();
        assert!(!source.contains(TOKEN), "{path} shows the token");
        b.assert_no_console_errors(path).await;
    }
    assert!(!d.log_text().contains(TOKEN), "the log shows the token");

    // The same cookie from another origin, or with no Origin, changes nothing.
    let cookie = format!("boilerhouse_session={}", session.value());
    let http = reqwest::Client::new();
    for origin in [Some("http://evil.example"), None] {
        let mut req = http
            .post(d.url("/pools/web/scale"))
            .header("Cookie", &cookie)
            .json(&json!({"targetSize": 3}));
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 403, "Origin {origin:?}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("Origin"),
            "{body}"
        );
    }
    let v = d.pool("web").await;
    assert_eq!(
        v["currentSize"], 2,
        "a refused request scaled the pool: {v}"
    );
}
