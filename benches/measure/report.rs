//! The bench's output: latency rows, other figures (rates, ratios, memory) and the
//! product owner's targets with met/missed, rendered as a markdown table for the
//! terminal and as JSON for `target/bench/claim_latency.json`.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::stats::{fmt_duration, Summary};
use super::BenchResult;

struct LatencyRow {
    key: String,
    label: String,
    summary: Summary,
}

struct Figure {
    key: String,
    label: String,
    shown: String,
    value: Value,
}

/// A target is reported, never asserted. `met` is None when it could not be measured.
struct Target {
    name: String,
    goal: String,
    measured: String,
    met: Option<bool>,
}

#[derive(Default)]
pub struct Report {
    meta: Vec<(String, String)>,
    latency: Vec<LatencyRow>,
    figures: Vec<Figure>,
    targets: Vec<Target>,
    notes: Vec<String>,
}

impl Report {
    pub fn meta(&mut self, key: &str, value: impl Into<String>) {
        self.meta.push((key.to_owned(), value.into()));
    }

    /// Adds a latency row (skipped when there are no samples) and returns its summary.
    pub fn latency(&mut self, key: &str, label: &str, samples: &[Duration]) -> Option<Summary> {
        let summary = Summary::of(samples)?;
        self.latency.push(LatencyRow {
            key: key.to_owned(),
            label: label.to_owned(),
            summary,
        });
        Some(summary)
    }

    pub fn figure(&mut self, key: &str, label: &str, shown: impl Into<String>, value: Value) {
        self.figures.push(Figure {
            key: key.to_owned(),
            label: label.to_owned(),
            shown: shown.into(),
            value,
        });
    }

    pub fn target(&mut self, name: &str, goal: &str, measured: Option<String>, met: Option<bool>) {
        self.targets.push(Target {
            name: name.to_owned(),
            goal: goal.to_owned(),
            measured: measured.unwrap_or_else(|| "not measured".into()),
            met,
        });
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let meta: Vec<String> = self.meta.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        out.push_str(&format!("**claim_latency** — {}\n\n", meta.join(" · ")));
        out.push_str("| latency | n | p50 | p90 | p99 | max |\n|---|--:|--:|--:|--:|--:|\n");
        for r in &self.latency {
            let s = r.summary;
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.label,
                s.n,
                fmt_duration(s.p50),
                fmt_duration(s.p90),
                fmt_duration(s.p99),
                fmt_duration(s.max)
            ));
        }
        out.push_str("\n| figure | value |\n|---|--:|\n");
        for f in &self.figures {
            out.push_str(&format!("| {} | {} |\n", f.label, f.shown));
        }
        out.push_str("\n| target | goal | measured | |\n|---|---|--:|---|\n");
        for t in &self.targets {
            let verdict = match t.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "n/a",
            };
            out.push_str(&format!(
                "| {} | {} | {} | {verdict} |\n",
                t.name, t.goal, t.measured
            ));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                out.push_str(&format!("- {n}\n"));
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        let meta: Map<String, Value> = self
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let latency: Map<String, Value> = self
            .latency
            .iter()
            .map(|r| {
                let mut v = r.summary.to_json();
                v["label"] = Value::String(r.label.clone());
                (r.key.clone(), v)
            })
            .collect();
        let figures: Map<String, Value> = self
            .figures
            .iter()
            .map(|f| {
                (
                    f.key.clone(),
                    json!({"label": f.label, "value": f.value, "shown": f.shown}),
                )
            })
            .collect();
        let targets: Vec<Value> = self
            .targets
            .iter()
            .map(
                |t| json!({"target": t.name, "goal": t.goal, "measured": t.measured, "met": t.met}),
            )
            .collect();
        json!({
            "meta": meta,
            "latency": latency,
            "figures": figures,
            "targets": targets,
            "notes": self.notes,
        })
    }

    pub fn write_json(&self, path: &Path) -> BenchResult<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(&self.json())?)?;
        Ok(())
    }
}
