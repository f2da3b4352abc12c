//! One handler and one template struct per page. Handlers gather the manager's views
//! and shape them into rows of display strings; templates only lay them out (askama
//! escapes every value). Times go out as ISO 8601 in `data-since`/`data-deadline`
//! attributes so the script can keep ages and countdowns ticking between refreshes.

use std::collections::BTreeSet;

use askama::Template;
use axum::extract::{Form, Query, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;

use super::charts;
use super::samples::{self, Outcome};
use super::session;
use crate::activity::Event;
use crate::api::body::PathParam;
use crate::api::{ApiError, AppState};
use crate::pool::{ClaimView, ContainerView, PoolView};
use crate::sync::SyncState;
use crate::tenant::TenantId;

/// Every event type the daemon records; the script follows these on `/events`.
pub const EVENT_KINDS: &[&str] = &[
    "container.created",
    "container.healthy",
    "container.claimed",
    "container.released",
    "container.unhealthy",
    "container.destroyed",
    "pool.scaled",
    "pool.error",
    "sync.started",
    "sync.completed",
    "sync.failed",
];

/// Renders a template, or a plain 500 naming the failure.
fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => ApiError::Internal(format!("rendering the page failed: {e}")).into_response(),
    }
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// What every page's frame needs.
pub struct Frame {
    pub active: &'static str,
    /// A token guards the daemon: offer to log out.
    pub logout: bool,
    pub events: String,
}

impl Frame {
    fn new(state: &AppState, active: &'static str) -> Self {
        Self {
            active,
            logout: state.api_token.is_some(),
            events: EVENT_KINDS.join(" "),
        }
    }
}

pub struct EventRow {
    pub kind: String,
    pub at: String,
    pub time: String,
    pub pool: String,
    pub tenant: String,
    pub container: String,
    pub message: String,
}

impl From<&Event> for EventRow {
    fn from(e: &Event) -> Self {
        Self {
            kind: e.kind.to_owned(),
            at: iso(e.timestamp),
            time: e.timestamp.format("%H:%M:%S").to_string(),
            pool: e.pool_id.clone().unwrap_or_default(),
            tenant: e.tenant_id.clone().unwrap_or_default(),
            container: e.container_id.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
        }
    }
}

pub struct PoolRow {
    pub id: String,
    pub idle: usize,
    pub starting: usize,
    pub claimed: usize,
    pub current: usize,
    pub min: usize,
    pub max: usize,
    pub status: String,
    pub last_error: String,
    pub warning: String,
}

impl From<&PoolView> for PoolRow {
    fn from(p: &PoolView) -> Self {
        Self {
            id: p.id.clone(),
            idle: p.idle_count,
            starting: p.starting_count,
            claimed: p.claimed_count,
            current: p.current_size,
            min: p.min_size,
            max: p.max_size,
            status: p.status.to_owned(),
            last_error: p
                .last_error
                .as_ref()
                .map(|e| format!("{} ({})", e.message, e.timestamp.format("%H:%M:%S")))
                .unwrap_or_default(),
            warning: p.warning.clone().unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "overview.html")]
pub struct Overview {
    pub frame: Frame,
    pub pools: Vec<PoolRow>,
    pub used: usize,
    pub cap: usize,
    pub tenants: usize,
    pub sync: String,
    pub sync_bad: bool,
    pub events: Vec<EventRow>,
}

/// "n of m syncing fine", over the claims whose pool syncs.
fn sync_health(claims: &[ClaimView]) -> (String, bool) {
    let synced: Vec<_> = claims
        .iter()
        .filter_map(|c| c.sync_status.as_ref())
        .collect();
    if synced.is_empty() {
        return ("no synced claims".into(), false);
    }
    let failing = synced
        .iter()
        .filter(|s| matches!(s.state, SyncState::Error) || s.last_error.is_some())
        .count();
    if failing == 0 {
        (format!("{} claims, all in sync", synced.len()), false)
    } else {
        (
            format!("{failing} of {} claims failing", synced.len()),
            true,
        )
    }
}

pub async fn overview(State(state): State<AppState>) -> Response {
    let views = state.manager.pool_views().await;
    let claims = state.manager.claims().await;
    let tenants: BTreeSet<&str> = claims.iter().map(|c| c.tenant_id.as_str()).collect();
    let (sync, sync_bad) = sync_health(&claims);
    render(&Overview {
        frame: Frame::new(&state, "overview"),
        pools: views.iter().map(PoolRow::from).collect(),
        used: state.manager.node_used(),
        cap: state.manager.config().max_containers,
        tenants: tenants.len(),
        sync,
        sync_bad,
        events: state
            .manager
            .activity()
            .recent(12)
            .iter()
            .map(EventRow::from)
            .collect(),
    })
}

pub struct ContainerRow {
    pub id: String,
    pub tenant: String,
    pub status: String,
    pub health: String,
    pub created: String,
    /// When an inactive claim is released (empty: never / not claimed).
    pub expires: String,
    pub claimed: bool,
    pub idle: bool,
}

pub struct StartingRow {
    pub id: String,
    pub since: String,
    pub ready_by: String,
}

#[derive(Template)]
#[template(path = "pool.html")]
pub struct PoolPage {
    pub frame: Frame,
    pub pool: PoolRow,
    pub image: String,
    pub size_bar: charts::SizeBar,
    pub starting: Vec<StartingRow>,
    pub containers: Vec<ContainerRow>,
    pub ready_timeout: String,
    pub idle_timeout: String,
}

pub async fn pool(State(state): State<AppState>, PathParam(id): PathParam) -> Response {
    let handle = match state.resolve_pool(Some(&id)) {
        Ok(h) => h,
        Err(e) => return not_found_page(&state, e),
    };
    let snapshot = match handle.snapshot().await {
        Ok(s) => s,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let idle_limit = state.manager.config().idle_timeout();
    let row = |c: &ContainerView| ContainerRow {
        id: c.id.clone(),
        tenant: c.tenant_id.clone().unwrap_or_default(),
        status: c.status.to_owned(),
        health: c.health.clone(),
        created: iso(c.created_at),
        expires: match (&c.tenant_id, idle_limit) {
            (Some(_), Some(limit)) => chrono::Duration::from_std(limit)
                .map(|l| iso(c.last_activity_at + l))
                .unwrap_or_default(),
            _ => String::new(),
        },
        claimed: c.tenant_id.is_some(),
        idle: c.status == "idle",
    };
    let p = &snapshot.pool;
    render(&PoolPage {
        frame: Frame::new(&state, "pools"),
        image: p.image.clone(),
        size_bar: charts::SizeBar::new(p),
        starting: p
            .starting
            .iter()
            .map(|s| StartingRow {
                id: s.container_id.clone(),
                since: iso(s.since),
                ready_by: s.ready_by.map(iso).unwrap_or_default(),
            })
            .collect(),
        containers: snapshot.containers.iter().map(row).collect(),
        ready_timeout: humantime::format_duration(std::time::Duration::from_millis(
            p.ready_timeout_ms,
        ))
        .to_string(),
        idle_timeout: idle_limit
            .map(|l| humantime::format_duration(l).to_string())
            .unwrap_or_else(|| "never".into()),
        pool: PoolRow::from(p),
    })
}

#[derive(Template)]
#[template(path = "missing.html")]
pub struct Missing {
    pub frame: Frame,
    pub message: String,
}

fn not_found_page(state: &AppState, e: ApiError) -> Response {
    let status = e.status();
    let mut response = render(&Missing {
        frame: Frame::new(state, ""),
        message: e.to_string(),
    });
    *response.status_mut() = status;
    response
}

pub struct ClaimRow {
    pub tenant: String,
    pub pool: String,
    pub container: String,
    pub status: String,
    pub health: String,
    pub claimed: String,
    pub sync: String,
}

fn sync_label(c: &ClaimView) -> String {
    match &c.sync_status {
        None => "—".into(),
        Some(s) => match (&s.state, &s.last_error) {
            (SyncState::Syncing, _) => "syncing".into(),
            (_, Some(_)) | (SyncState::Error, _) => "error".into(),
            _ => "ok".into(),
        },
    }
}

impl From<&ClaimView> for ClaimRow {
    fn from(c: &ClaimView) -> Self {
        Self {
            tenant: c.tenant_id.clone(),
            pool: c.pool_id.clone(),
            container: c.container_id.clone(),
            status: c.status.to_owned(),
            health: c.health.clone(),
            claimed: iso(c.claimed_at),
            sync: sync_label(c),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct TenantsQuery {
    #[serde(default)]
    pub q: String,
}

#[derive(Template)]
#[template(path = "tenants.html")]
pub struct Tenants {
    pub frame: Frame,
    pub q: String,
    pub claims: Vec<ClaimRow>,
    pub total: usize,
}

pub async fn tenants(State(state): State<AppState>, Query(query): Query<TenantsQuery>) -> Response {
    let claims = state.manager.claims().await;
    let needle = query.q.trim().to_ascii_lowercase();
    let rows = claims
        .iter()
        .filter(|c| c.tenant_id.to_ascii_lowercase().contains(&needle))
        .map(ClaimRow::from)
        .collect();
    render(&Tenants {
        frame: Frame::new(&state, "tenants"),
        q: query.q,
        claims: rows,
        total: claims.len(),
    })
}

pub struct TenantClaim {
    pub row: ClaimRow,
    pub last_activity: String,
    pub last_sync: String,
    pub sync_error: String,
    pub bytes: u64,
    pub files: u64,
    /// The pool's workload allows `POST /tenants/{id}/sync`.
    pub manual_sync: bool,
}

#[derive(Template)]
#[template(path = "tenant.html")]
pub struct TenantPage {
    pub frame: Frame,
    pub tenant: String,
    pub claims: Vec<TenantClaim>,
    pub syncs: Vec<EventRow>,
}

pub async fn tenant(State(state): State<AppState>, PathParam(id): PathParam) -> Response {
    let tenant = match TenantId::parse(&id) {
        Ok(t) => t,
        Err(e) => return not_found_page(&state, ApiError::InvalidTenantId(e)),
    };
    let claims = state.manager.tenant_claims(&tenant).await;
    let claims = claims
        .iter()
        .map(|c| {
            let status = c.sync_status.clone().unwrap_or_default();
            TenantClaim {
                row: ClaimRow::from(c),
                last_activity: iso(c.last_activity),
                last_sync: status.last_sync_at.map(iso).unwrap_or_default(),
                sync_error: status.last_error.clone().unwrap_or_default(),
                bytes: status.bytes_transferred,
                files: status.files_transferred,
                manual_sync: state
                    .manager
                    .pool(&c.pool_id)
                    .and_then(|p| p.workload.sync.as_ref())
                    .is_some_and(|s| s.policy.manual),
            }
        })
        .collect();
    let syncs = state
        .manager
        .activity()
        .recent(crate::activity::CAPACITY)
        .iter()
        .filter(|e| e.kind.starts_with("sync.") && e.tenant_id.as_deref() == Some(tenant.as_str()))
        .take(20)
        .map(EventRow::from)
        .collect();
    render(&TenantPage {
        frame: Frame::new(&state, "tenants"),
        tenant: tenant.to_string(),
        claims,
        syncs,
    })
}

#[derive(Debug, Default, Deserialize)]
pub struct ActivityQuery {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub pool: String,
    #[serde(default)]
    pub tenant: String,
}

#[derive(Template)]
#[template(path = "activity.html")]
pub struct ActivityPage {
    pub frame: Frame,
    pub kinds: Vec<&'static str>,
    pub pools: Vec<String>,
    pub kind: String,
    pub pool: String,
    pub tenant: String,
    pub events: Vec<EventRow>,
}

pub async fn activity(State(state): State<AppState>, Query(q): Query<ActivityQuery>) -> Response {
    let tenant = q.tenant.trim().to_owned();
    let events = state
        .manager
        .activity()
        .recent(crate::activity::CAPACITY)
        .iter()
        .filter(|e| q.kind.is_empty() || e.kind == q.kind)
        .filter(|e| q.pool.is_empty() || e.pool_id.as_deref() == Some(q.pool.as_str()))
        .filter(|e| tenant.is_empty() || e.tenant_id.as_deref() == Some(tenant.as_str()))
        .take(200)
        .map(EventRow::from)
        .collect();
    render(&ActivityPage {
        frame: Frame::new(&state, "activity"),
        kinds: EVENT_KINDS.to_vec(),
        pools: state.manager.pools().map(|p| p.id().to_owned()).collect(),
        kind: q.kind,
        pool: q.pool,
        tenant,
        events,
    })
}

pub struct LatencyRow {
    pub label: &'static str,
    pub count: usize,
    pub p50: String,
    pub p99: String,
}

#[derive(Template)]
#[template(path = "metrics.html")]
pub struct MetricsPage {
    pub frame: Frame,
    pub latency: Vec<LatencyRow>,
    pub ratio: charts::RatioBar,
    pub per_minute: charts::Bars,
    pub depth: Vec<charts::DepthChart>,
    pub sample_every: u64,
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let now = Utc::now();
    let samples = samples::global().lock().unwrap_or_else(|p| p.into_inner());
    let latency = [("warm", Outcome::Warm), ("cold", Outcome::Cold)]
        .into_iter()
        .map(|(label, outcome)| match samples.latency(outcome, now) {
            Some(l) => LatencyRow {
                label,
                count: l.count,
                p50: format!("{:.1} ms", l.p50_ms),
                p99: format!("{:.1} ms", l.p99_ms),
            },
            None => LatencyRow {
                label,
                count: 0,
                p50: "—".into(),
                p99: "—".into(),
            },
        })
        .collect();
    let ratio = charts::RatioBar::new(
        samples.outcome_count(Outcome::Warm, now),
        samples.outcome_count(Outcome::Cold, now),
        samples.outcome_count(Outcome::Exhausted, now),
    );
    let per_minute = charts::Bars::new(&samples.claims_per_minute(now));
    let depth = samples
        .depth(now)
        .into_iter()
        .map(|(pool, series)| charts::DepthChart::new(pool, &series, now))
        .collect();
    drop(samples);
    render(&MetricsPage {
        frame: Frame::new(&state, "metrics"),
        latency,
        ratio,
        per_minute,
        depth,
        sample_every: samples::SAMPLE_EVERY.as_secs(),
    })
}

#[derive(Template)]
#[template(path = "try.html")]
pub struct TryPage {
    pub frame: Frame,
    pub pools: Vec<String>,
}

pub async fn try_claim(State(state): State<AppState>) -> Response {
    render(&TryPage {
        frame: Frame::new(&state, "try"),
        pools: state.manager.pools().map(|p| p.id().to_owned()).collect(),
    })
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct Login {
    pub frame: Frame,
    pub next: String,
    pub error: String,
}

/// Only paths of the dashboard itself: the form must not become an open redirect.
fn safe_next(next: &str) -> String {
    let ok = next == "/ui" || (next.starts_with("/ui/") && !next.contains("//"));
    if ok {
        next.to_owned()
    } else {
        "/ui".to_owned()
    }
}

/// The token form (200: the page rendered; the API's own routes still answer 401).
pub fn login_page(next: &str, error: Option<&str>) -> Response {
    render(&Login {
        frame: Frame {
            active: "",
            logout: false,
            events: String::new(),
        },
        next: safe_next(next),
        error: error.unwrap_or_default().to_owned(),
    })
}

#[derive(Debug, Default, Deserialize)]
pub struct NextQuery {
    #[serde(default)]
    pub next: String,
}

pub async fn login_form(State(state): State<AppState>, Query(q): Query<NextQuery>) -> Response {
    if state.api_token.is_none() {
        return Redirect::to("/ui").into_response();
    }
    login_page(&q.next, None)
}

#[derive(Deserialize)]
pub struct LoginForm {
    pub token: String,
    #[serde(default)]
    pub next: String,
}

/// Checks the token (constant-time) and sets the session cookie. The token arrives in
/// a POST body, so it appears in no URL and no request log.
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(expected) = &state.api_token else {
        return Redirect::to("/ui").into_response();
    };
    if let Err(refused) = session::check_origin(&headers) {
        return ApiError::Forbidden(refused).into_response();
    }
    use subtle::ConstantTimeEq;
    if !bool::from(form.token.as_bytes().ct_eq(expected.as_bytes())) {
        let mut page = login_page(
            &form.next,
            Some("That is not this daemon's token (BOILERHOUSE_API_TOKEN)."),
        );
        *page.status_mut() = StatusCode::UNAUTHORIZED;
        return page;
    }
    let mut response = Redirect::to(&safe_next(&form.next)).into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, session::login_cookie(expected));
    response
}

pub async fn logout() -> Response {
    let mut response = Redirect::to("/ui/login").into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, session::logout_cookie());
    response
}
