//! The `docker` CLI, for what tests and benchmarks check or clean up from outside the
//! daemon, and [`InstanceGuard`], the one place that removes an instance's containers.
//! Only containers carrying the caller's own `boilerhouse.instance` label are touched.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// `docker <args>`: (success, stdout + stderr, trimmed). Bounded by `timeout 120`: an
/// engine call that hangs fails the caller instead of stalling the run. A missing
/// CLI is reported as a failed call.
pub fn docker(args: &[&str]) -> (bool, String) {
    match Command::new("timeout")
        .arg("120")
        .arg("docker")
        .args(args)
        .output()
    {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            (out.status.success(), text.trim().to_owned())
        }
        Err(e) => (false, format!("cannot run docker: {e}")),
    }
}

/// `docker inspect name`, the first object; panics when it fails.
pub fn docker_inspect(name: &str) -> Value {
    let (ok, out) = docker(&["inspect", name]);
    assert!(ok, "docker inspect {name}: {out}");
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("docker inspect {name} is not JSON ({e}): {out}"));
    v[0].clone()
}

/// Runs `sh -c script` in the container as `user`; returns (exit ok, output).
pub fn docker_exec(name: &str, user: &str, script: &str) -> (bool, String) {
    docker(&["exec", "-u", user, name, "sh", "-c", script])
}

/// [`docker_exec`] that must succeed; returns the output.
pub fn docker_exec_ok(name: &str, user: &str, script: &str) -> String {
    let (ok, out) = docker_exec(name, user, script);
    assert!(
        ok,
        "docker exec -u {user} {name} sh -c {script:?} failed: {out}"
    );
    out
}

/// Ids of every container (any state) labelled with `instance`.
pub fn containers_of(instance: &str) -> Vec<String> {
    let (ok, out) = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=boilerhouse.instance={instance}"),
    ]);
    if !ok {
        eprintln!("cleanup: `docker ps` failed for instance {instance}: {out}");
        return Vec::new();
    }
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Every container of `instance` as (its `boilerhouse.container-id` label, its Docker
/// name): what the engine holds, to compare with what the daemon lists.
pub fn labelled_containers(instance: &str) -> Vec<(String, String)> {
    let (ok, out) = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=boilerhouse.instance={instance}"),
        "--format",
        "{{.Label \"boilerhouse.container-id\"}} {{.Names}}",
    ]);
    assert!(ok, "docker ps: {out}");
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(cid, name)| (cid.to_owned(), name.to_owned()))
        .collect()
}

/// `docker rm -f -v` on the instance's containers; returns how many there were.
pub fn remove_instance_containers(instance: &str) -> usize {
    let ids = containers_of(instance);
    // Chunks keep the command line short; docker removes each chunk in parallel.
    for chunk in ids.chunks(100) {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(chunk.iter().map(String::as_str));
        let (ok, out) = docker(&args);
        if !ok && !out.contains("No such container") {
            eprintln!("cleanup: `docker rm -f` failed for instance {instance}: {out}");
        }
    }
    ids.len()
}

/// Removes every container of `instance` when dropped — after an error, a panic or a
/// Ctrl-C too. A [`crate::Daemon`] holds one (and stops its process first, so nothing
/// refills behind the sweep); a bench that creates containers itself holds its own.
pub struct InstanceGuard {
    instance: String,
}

impl InstanceGuard {
    pub fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Removes the instance's containers until none has appeared for three looks in a
    /// row: the engine may still finish a create a killed daemon sent just before it
    /// died. Gives up after about ten seconds. Returns how many were removed.
    pub fn sweep(&self) -> usize {
        let mut removed = 0;
        let mut quiet = 0;
        for _ in 0..40 {
            removed += remove_instance_containers(&self.instance);
            // A pause between looks: the condition is "stayed empty for a while".
            std::thread::sleep(Duration::from_millis(250));
            if containers_of(&self.instance).is_empty() {
                quiet += 1;
                if quiet == 3 {
                    break;
                }
            } else {
                quiet = 0;
            }
        }
        removed
    }
}

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        let removed = self.sweep();
        if removed > 0 {
            eprintln!(
                "cleanup: removed {removed} container(s) of instance {}",
                self.instance
            );
        }
    }
}
