//! When a new (or restarted) container may be handed out: it is `starting` until it
//! runs and its healthcheck passes, within a deadline learned from the healthcheck's
//! timings. Docker's health events move it along; periodic inspections catch a
//! missed event; failures back off creation and say why in `lastError`. Under load
//! (probes that time out) the pool creates fewer containers at once and gives
//! slow-but-alive ones more time.

use std::time::{Duration, Instant};

use chrono::Utc;

use super::actor::Pool;
use super::containers::Status;
use super::handle::Msg;
use super::views::LastError;
use crate::activity::Event;
use crate::runtime::docker::probe_summary;
use crate::runtime::{ContainerReport, EngineHealth, EventKind, Readiness, RuntimeError};
use crate::workload::ready_deadline;

/// Most create calls one pool has in flight at once; the pool adapts below it.
pub(super) const CREATE_CONCURRENCY: usize = 24;
/// Create calls in flight a new pool starts with, before it has seen how the node copes.
pub(super) const INITIAL_CREATE_CONCURRENCY: usize = 8;
/// How long a creation watches a new container itself before handing it to the
/// engine's health events (a container without healthcheck is ready once running).
pub(super) const FIRST_LOOK: Duration = Duration::from_millis(500);
/// How often a starting container is inspected in case a health event was missed.
const STARTING_CHECK: Duration = Duration::from_secs(5);
/// Probe time-outs within this window mark the pool as under load.
const PRESSURE_WINDOW: Duration = Duration::from_secs(60);
/// Probe time-outs within [`PRESSURE_WINDOW`] from which the node counts as overloaded.
const PRESSURE_TIMEOUTS: usize = 3;
/// Deadline extensions a container whose probes only time out gets under load.
const MAX_EXTENSIONS: u8 = 3;
/// How long a container must stay idle before creation failures are forgiven.
pub(super) const STABLE: Duration = Duration::from_secs(10);
/// Lines of a failed container's output quoted in `lastError`.
pub(super) const LOG_LINES: usize = 10;

/// Why the actor inspects a container that is starting or idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Look {
    /// A periodic look, in case a health event was missed.
    Check,
    /// Its readiness deadline passed.
    Deadline,
    /// The engine says it exited or was OOM-killed.
    Died,
    /// The engine says its healthcheck failed.
    Unhealthy,
}

/// `; its last output: "..."` for an error message.
pub(super) fn output_tail(log: Option<&Result<String, String>>) -> String {
    match log {
        Some(Err(e)) => format!("; its output could not be read: {e}"),
        Some(Ok(l)) if !l.trim().is_empty() => {
            let lines: Vec<&str> = l.trim().lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_LINES)..].join(" | ");
            let mut short: String = tail.chars().take(600).collect();
            if short.len() < tail.len() {
                short.push('…');
            }
            format!("; its last output: {short:?}")
        }
        _ => "; it wrote no output".into(),
    }
}

impl Pool {
    /// How long a container with these timings may take to become ready.
    pub(super) fn ready_timeout(&self) -> Duration {
        ready_deadline(
            self.timings.as_ref(),
            self.workload.pool.ready_timeout,
            self.ctx.config.claim_timeout().max(Duration::from_secs(5)),
        )
    }

    /// When the engine first probes a new container of this pool.
    pub(super) fn first_probe(&self) -> Option<Duration> {
        let newer = self.ctx.runtime.supports_start_interval();
        self.timings.map(|t| t.first_probe(newer))
    }

    pub(super) fn on_created(
        &mut self,
        container_id: String,
        result: Result<(String, Readiness), String>,
    ) {
        self.creating = self.creating.saturating_sub(1);
        match result {
            Ok((docker_id, readiness)) => {
                let Some(entry) = self.containers.get_mut(&container_id) else {
                    return;
                };
                entry.info.docker_id = Some(docker_id);
                entry.creating = false;
                if entry.cancelled || self.stopping {
                    if !self.stopping {
                        self.remove_container(&container_id);
                    }
                    return;
                }
                let early = entry.early.take();
                let started = entry.starting_since;
                match readiness {
                    Readiness::Ready => self.mark_ready(&container_id),
                    Readiness::Starting(timings) => {
                        self.timings = timings.or(self.timings);
                        let elapsed = (Utc::now() - started).to_std().unwrap_or_default();
                        let since = Instant::now()
                            .checked_sub(elapsed)
                            .unwrap_or_else(Instant::now);
                        self.await_health(&container_id, since);
                        match early {
                            Some(EventKind::Healthy) => self.mark_ready(&container_id),
                            Some(EventKind::Unhealthy) => {
                                self.inspect(&container_id, Look::Unhealthy)
                            }
                            Some(EventKind::Died { .. } | EventKind::Oom) => {
                                self.inspect(&container_id, Look::Died)
                            }
                            None => {}
                        }
                    }
                }
            }
            Err(message) => {
                // Dropping the record frees its node slot.
                self.containers.remove(&container_id);
                self.creation_failed(message);
            }
        }
        self.refill();
    }

    /// Puts a created (or restarted) container in `Starting` until its healthcheck
    /// passes, with its readiness deadline counted from `since`.
    pub(super) fn await_health(&mut self, container_id: &str, since: Instant) {
        let timeout = self.ready_timeout();
        let first = self.first_probe().unwrap_or(STARTING_CHECK);
        let Some(entry) = self.containers.get_mut(container_id) else {
            return;
        };
        if entry.status != Status::Starting {
            entry.status = Status::Starting;
            entry.health = "starting".into();
            entry.starting_since = Utc::now();
        }
        let deadline = since + timeout;
        let left = deadline.saturating_duration_since(Instant::now());
        let wall = Utc::now() + chrono::Duration::from_std(left).unwrap_or_default();
        entry.ready_by = Some((deadline, wall));
        // Look first just after the first probe is due, then every few seconds.
        entry.next_check = since + first + Duration::from_secs(1);
    }

    /// A starting container passed its healthcheck: it joins the idle set.
    pub(super) fn mark_ready(&mut self, container_id: &str) {
        let Some(entry) = self.containers.get_mut(container_id) else {
            return;
        };
        if entry.status != Status::Starting || entry.creating {
            return;
        }
        if self.retire_instead_of_idle(container_id) {
            return;
        }
        let Some(entry) = self.containers.get_mut(container_id) else {
            return;
        };
        entry.status = Status::Idle;
        entry.health = "healthy".into();
        entry.idle_since = Instant::now();
        entry.ready_by = None;
        let again = std::mem::replace(&mut entry.was_ready, true);
        self.idle.push_back(container_id.to_owned());
        self.create_limit = (self.create_limit + 1).min(CREATE_CONCURRENCY);
        let kind = if again {
            "container.healthy"
        } else {
            "container.created"
        };
        self.record(Event::new(kind, self.id()).container(container_id));
        self.serve_queue();
    }

    /// Something went wrong creating a container: back off, say why, and fail the
    /// claims that were waiting for it when nothing else is on its way.
    pub(super) fn creation_failed(&mut self, message: String) {
        self.next_create_at = Instant::now() + self.failures.fail();
        tracing::warn!(pool = %self.workload.id, failures = self.failures.failures(), error = %message, "container creation failed");
        self.last_error = Some(LastError {
            message: message.clone(),
            timestamp: Utc::now(),
        });
        self.record(Event::new("pool.error", self.id()).message(message));
        if self.starting_count() == 0 && self.creating == 0 {
            let err = self.unavailable();
            for tenant in std::mem::take(&mut self.queue) {
                if let Some(w) = self.waiting.remove(&tenant) {
                    for r in w.replies {
                        r.answer(Err(err.clone()));
                    }
                }
            }
        }
    }

    /// Inspects a starting or idle container in the background; `on_inspected` decides.
    pub(super) fn inspect(&mut self, container_id: &str, cause: Look) {
        let Some(entry) = self.containers.get_mut(container_id) else {
            return;
        };
        let Some(docker_id) = entry.info.docker_id.clone() else {
            return;
        };
        if entry.inspecting || entry.creating || entry.status == Status::Removing {
            return;
        }
        entry.inspecting = true;
        if entry.status == Status::Idle {
            // No claim may take it while the engine is asked what is wrong with it.
            self.idle.retain(|c| c != container_id);
            entry.status = Status::Starting;
            entry.starting_since = Utc::now();
        }
        let runtime = self.ctx.runtime.clone();
        let container_id = container_id.to_owned();
        self.spawn_report(async move {
            let report = runtime.report(&docker_id, LOG_LINES).await;
            Msg::Inspected {
                container_id,
                cause,
                report,
            }
        });
    }

    pub(super) fn on_inspected(
        &mut self,
        container_id: String,
        cause: Look,
        report: Result<ContainerReport, RuntimeError>,
    ) {
        let timeout = self.ready_timeout();
        let first_probe = self.first_probe();
        let Some(entry) = self.containers.get_mut(&container_id) else {
            return;
        };
        entry.inspecting = false;
        if entry.status != Status::Starting {
            return;
        }
        let name = entry.info.name.clone();
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                // The engine could not say: try again at the next check.
                entry.next_check = Instant::now() + STARTING_CHECK;
                if cause == Look::Deadline || cause == Look::Died {
                    self.give_up(
                        &container_id,
                        format!("container {name} cannot be inspected: {e}"),
                    );
                }
                return;
            }
        };
        let probe = report
            .last_probe
            .as_ref()
            .map(|p| format!("; last probe: {}", probe_summary(p)))
            .unwrap_or_default();
        if !report.running {
            let message = format!(
                "container {name} exited before it was claimed ({}){}",
                report.detail,
                output_tail(report.log_tail.as_ref())
            );
            self.give_up(&container_id, message);
            return;
        }
        match report.health {
            EngineHealth::Healthy | EngineHealth::None => self.mark_ready(&container_id),
            EngineHealth::Unhealthy => {
                if report.last_probe.as_ref().is_some_and(|p| p.timed_out) {
                    // A probe that timed out says more about the node than the image:
                    // keep the container (the engine goes on probing and it may pass
                    // again) until its deadline, and create more slowly.
                    if cause == Look::Unhealthy {
                        self.probe_timed_out();
                    }
                    if let Some(entry) = self.containers.get_mut(&container_id) {
                        entry.health = "unhealthy (probe timed out)".into();
                        entry.next_check = Instant::now() + STARTING_CHECK;
                        if entry.ready_by.is_none() {
                            // Held back from the idle set: it has a deadline again.
                            let wall = Utc::now()
                                + chrono::Duration::from_std(timeout).unwrap_or_default();
                            entry.ready_by = Some((Instant::now() + timeout, wall));
                        }
                    }
                    if cause != Look::Deadline || self.extend_under_pressure(&container_id) {
                        return;
                    }
                }
                self.give_up(
                    &container_id,
                    format!("container {name} turned unhealthy{probe}"),
                );
            }
            EngineHealth::Starting => {
                let timed_out = report.last_probe.as_ref().is_some_and(|p| p.timed_out);
                if cause == Look::Deadline && timed_out && self.extend_under_pressure(&container_id)
                {
                    return;
                }
                if cause == Look::Deadline {
                    let why = match (&report.last_probe, first_probe) {
                        (Some(_), _) => format!("its healthcheck has not passed yet{probe}"),
                        (None, Some(first)) => format!(
                            "no health probe has run yet (its healthcheck first probes {} after start)",
                            humantime::format_duration(first)
                        ),
                        (None, None) => "its healthcheck has not reported yet".into(),
                    };
                    self.give_up(
                        &container_id,
                        format!(
                            "container {name} did not become ready within {}: {why}",
                            humantime::format_duration(timeout)
                        ),
                    );
                } else if let Some(entry) = self.containers.get_mut(&container_id) {
                    entry.next_check = Instant::now() + STARTING_CHECK;
                }
            }
        }
    }

    /// A container whose probes only time out while the node is overloaded (several
    /// time-outs across the pool in the last minute) gets its deadline again, up to
    /// [`MAX_EXTENSIONS`] times: replacing it would add the load of a new container
    /// to a node already too slow to run its probes.
    fn extend_under_pressure(&mut self, container_id: &str) -> bool {
        if self.recent_probe_timeouts() < PRESSURE_TIMEOUTS {
            return false;
        }
        let timeout = self.ready_timeout();
        let Some(entry) = self.containers.get_mut(container_id) else {
            return false;
        };
        if entry.extensions >= MAX_EXTENSIONS {
            return false;
        }
        entry.extensions += 1;
        let wall = Utc::now() + chrono::Duration::from_std(timeout).unwrap_or_default();
        entry.ready_by = Some((Instant::now() + timeout, wall));
        true
    }

    /// A starting container failed for good: remove it and count the failure.
    fn give_up(&mut self, container_id: &str, message: String) {
        self.create_limit = (self.create_limit / 2).max(1);
        self.remove_container(container_id);
        self.creation_failed(message);
    }

    fn probe_timed_out(&mut self) {
        self.probe_timeouts.push_back(Instant::now());
        self.create_limit = (self.create_limit / 2).max(1);
    }

    pub(super) fn recent_probe_timeouts(&self) -> usize {
        self.probe_timeouts
            .iter()
            .filter(|t| t.elapsed() < PRESSURE_WINDOW)
            .count()
    }

    pub(super) fn forget_old_probe_timeouts(&mut self) {
        while self
            .probe_timeouts
            .front()
            .is_some_and(|t| t.elapsed() >= PRESSURE_WINDOW)
        {
            self.probe_timeouts.pop_front();
        }
    }
}
