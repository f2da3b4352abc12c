//! Registry credentials for image pulls, taken from the Docker client configuration
//! operators already have — `$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json` — read the way the docker CLI reads it:
//!
//! - `auths`: per registry, `auth` (base64 of `user:password`), or `username` and
//!   `password`, or an `identitytoken`. Keys may be a bare host (`r.io:5000`) or a URL
//!   (`https://index.docker.io/v1/`); only the host counts.
//! - `credHelpers` (per registry) and `credsStore` (all registries): the named helper
//!   `docker-credential-<name>` is run with `get`, the registry on stdin, and answers
//!   `{"Username", "Secret"}` on stdout. A helper that has nothing for the registry
//!   leaves the `auths` entry (if any) in force, as the CLI does.
//!
//! This module only finds credentials; it never logs them. [`Credentials`]' `Debug`
//! shows where they came from, never what they are.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

/// How long a credential helper may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// The registry the docker CLI stores Docker Hub's credentials under.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// Credentials for one registry, and where they were found.
#[derive(Clone)]
pub struct Credentials {
    pub docker: DockerCredentials,
    /// `"<config path>"` or `"docker-credential-<name>"`: for messages and logs.
    pub source: String,
}

impl Credentials {
    /// The secret parts, to be scrubbed from any message that might echo them.
    pub fn secrets(&self) -> Vec<String> {
        let d = &self.docker;
        [&d.password, &d.auth, &d.identitytoken, &d.registrytoken]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// What a pull of one image has to go on.
#[derive(Debug)]
pub struct Lookup {
    /// The registry host (`docker.io` for Docker Hub).
    pub registry: String,
    /// The configuration file looked at.
    pub config: PathBuf,
    pub credentials: Option<Credentials>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    #[serde(default)]
    username: String,
    #[serde(default)]
    secret: String,
}

/// The registry host an image reference pulls from, by Docker's rule: the first path
/// component is a registry when it has a `.` or a `:`, or is `localhost`.
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_owned(),
        _ => "docker.io".to_owned(),
    }
}

/// `DOCKER_CONFIG`'s `config.json`, else `$HOME/.docker/config.json`.
pub fn config_path(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(dir) = env("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(Path::new(&dir).join("config.json"));
    }
    env("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| Path::new(&home).join(".docker").join("config.json"))
}

/// Finds the credentials for pulling `image`. No configuration file, or nothing in it
/// for the registry, is `credentials: None` (an anonymous pull); a file that cannot
/// be read or parsed, or a helper that fails, is an error naming it.
pub async fn lookup(image: &str) -> Result<Lookup, String> {
    let registry = registry_of(image);
    let Some(config) = config_path(|name| std::env::var(name).ok()) else {
        return Ok(Lookup {
            registry,
            config: PathBuf::from("~/.docker/config.json"),
            credentials: None,
        });
    };
    let file = match tokio::fs::read(&config).await {
        Ok(bytes) => serde_json::from_slice::<ConfigFile>(&bytes).map_err(|e| {
            format!(
                "the Docker configuration {} is not valid: {e}",
                config.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ConfigFile::default(),
        Err(e) => return Err(format!("cannot read {}: {e}", config.display())),
    };
    let from_file = file_credentials(&file, &registry, &config)?;
    let helper = file
        .cred_helpers
        .iter()
        .find(|(key, _)| hostname(key) == registry)
        .map(|(_, helper)| helper.clone())
        .or_else(|| file.creds_store.clone())
        .filter(|h| !h.is_empty());
    let from_helper = match helper {
        Some(helper) => {
            let program = PathBuf::from(format!("docker-credential-{helper}"));
            run_helper(&program, &server_address(&registry)).await?
        }
        None => None,
    };
    Ok(Lookup {
        registry,
        config,
        credentials: from_helper.or(from_file),
    })
}

/// The `auths` entry for `registry`, decoded.
fn file_credentials(
    file: &ConfigFile,
    registry: &str,
    config: &Path,
) -> Result<Option<Credentials>, String> {
    let Some((_, entry)) = file
        .auths
        .iter()
        .find(|(key, _)| same_registry(&hostname(key), registry))
    else {
        return Ok(None);
    };
    let mut docker = DockerCredentials {
        serveraddress: Some(server_address(registry)),
        ..Default::default()
    };
    match entry.auth.as_deref().filter(|a| !a.is_empty()) {
        Some(auth) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .and_then(|pair| {
                    pair.split_once(':')
                        .map(|(u, p)| (u.to_owned(), p.to_owned()))
                });
            let Some((username, password)) = decoded else {
                return Err(format!(
                    "the `auth` of registry {registry} in {} is not base64 of `user:password`",
                    config.display()
                ));
            };
            docker.username = Some(username);
            docker.password = Some(password);
        }
        None => {
            docker.username = entry.username.clone();
            docker.password = entry.password.clone();
        }
    }
    docker.identitytoken = entry.identitytoken.clone().filter(|t| !t.is_empty());
    docker.registrytoken = entry.registrytoken.clone().filter(|t| !t.is_empty());
    let has_any = docker.password.is_some()
        || docker.identitytoken.is_some()
        || docker.registrytoken.is_some();
    Ok(has_any.then(|| Credentials {
        docker,
        source: config.display().to_string(),
    }))
}

/// Runs `<program> get` for `server`; `Ok(None)` when the helper has nothing for it.
pub async fn run_helper(program: &Path, server: &str) -> Result<Option<Credentials>, String> {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut child = tokio::process::Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run the credential helper {name}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes()).await;
    }
    let output = tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("the credential helper {name} did not answer in {HELPER_TIMEOUT:?}"))?
        .map_err(|e| format!("the credential helper {name} failed: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // The helpers' protocol: this sentence on stdout means "nothing stored".
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        return Err(format!(
            "the credential helper {name} failed ({}) for {server}",
            output.status
        ));
    }
    let answer: HelperAnswer = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("the credential helper {name} answered something unreadable: {e}"))?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    let mut docker = DockerCredentials {
        serveraddress: Some(server.to_owned()),
        ..Default::default()
    };
    // By the helpers' convention, `<token>` as the user name means an identity token.
    if answer.username == "<token>" {
        docker.identitytoken = Some(answer.secret);
    } else {
        docker.username = Some(answer.username);
        docker.password = Some(answer.secret);
    }
    Ok(Some(Credentials {
        docker,
        source: name,
    }))
}

/// `https://r.io:5000/v2/` → `r.io:5000`, as the docker CLI compares `auths` keys.
fn hostname(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or_default().to_owned()
}

fn same_registry(host: &str, registry: &str) -> bool {
    let hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    host == registry || (hub(host) && hub(registry))
}

/// The address the credentials are for, as the docker CLI sends it.
fn server_address(registry: &str) -> String {
    if registry == "docker.io" {
        DOCKER_HUB_KEY.to_owned()
    } else {
        registry.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn parse(json: &str) -> ConfigFile {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn registries_follow_dockers_rule() {
        assert_eq!(registry_of("alpine:3"), "docker.io");
        assert_eq!(registry_of("myregistry/my-worker:latest"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:5000/a/b:c"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/x"), "localhost");
        assert_eq!(registry_of("ghcr.io/o/i@sha256:ab"), "ghcr.io");
    }

    #[test]
    fn config_path_prefers_docker_config() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            config_path(env(&[("DOCKER_CONFIG", "/etc/d"), ("HOME", "/root")])),
            Some(PathBuf::from("/etc/d/config.json"))
        );
        assert_eq!(
            config_path(env(&[("HOME", "/root")])),
            Some(PathBuf::from("/root/.docker/config.json"))
        );
        assert_eq!(config_path(env(&[])), None);
    }

    #[test]
    fn auths_entries_decode_like_the_cli() {
        let path = Path::new("/c/config.json");
        let file = parse(
            r#"{"auths": {
                "http://127.0.0.1:5000/v2/": {"auth": "dXNlcjpwYTpzcw=="},
                "https://index.docker.io/v1/": {"username": "hub", "password": "pw"},
                "tok.io": {"identitytoken": "idt"},
                "empty.io": {}
            }}"#,
        );
        let c = file_credentials(&file, "127.0.0.1:5000", path)
            .unwrap()
            .unwrap();
        assert_eq!(c.docker.username.as_deref(), Some("user"));
        assert_eq!(c.docker.password.as_deref(), Some("pa:ss"));
        assert_eq!(c.docker.serveraddress.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(c.source, "/c/config.json");
        let hub = file_credentials(&file, "docker.io", path).unwrap().unwrap();
        assert_eq!(hub.docker.username.as_deref(), Some("hub"));
        assert_eq!(hub.docker.serveraddress.as_deref(), Some(DOCKER_HUB_KEY));
        let tok = file_credentials(&file, "tok.io", path).unwrap().unwrap();
        assert_eq!(tok.docker.identitytoken.as_deref(), Some("idt"));
        assert!(file_credentials(&file, "empty.io", path).unwrap().is_none());
        assert!(file_credentials(&file, "other.io", path).unwrap().is_none());
        let bad = parse(r#"{"auths": {"b.io": {"auth": "!!"}}}"#);
        assert!(file_credentials(&bad, "b.io", path)
            .unwrap_err()
            .contains("not base64"));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = Credentials {
            docker: DockerCredentials {
                username: Some("u".into()),
                password: Some("hunter2".into()),
                ..Default::default()
            },
            source: "/c/config.json".into(),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && shown.contains("/c/config.json"));
        assert_eq!(c.secrets(), ["hunter2"]);
    }

    /// A helper script in its own directory: rewriting one file that another test's
    /// fork may still hold open would make its exec fail (ETXTBSY).
    fn helper(dir: &Path, body: &str) -> PathBuf {
        let sub = tempfile::tempdir_in(dir).unwrap().keep();
        let path = sub.join("docker-credential-test");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn credential_helpers_are_asked_with_the_registry_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let found = helper(
            dir.path(),
            r#"read server; [ "$1" = get ] && printf '{"ServerURL":"%s","Username":"u-%s","Secret":"s3"}' "$server" "$server""#,
        );
        let c = run_helper(&found, "r.io:5000").await.unwrap().unwrap();
        assert_eq!(c.docker.username.as_deref(), Some("u-r.io:5000"));
        assert_eq!(c.docker.password.as_deref(), Some("s3"));
        assert_eq!(c.source, "docker-credential-test");

        let token = helper(
            dir.path(),
            r#"echo '{"ServerURL":"x","Username":"<token>","Secret":"idt"}'"#,
        );
        let c = run_helper(&token, "x").await.unwrap().unwrap();
        assert_eq!(c.docker.identitytoken.as_deref(), Some("idt"));
        assert!(c.docker.username.is_none());

        let none = helper(
            dir.path(),
            "echo 'credentials not found in native keychain'; exit 1",
        );
        assert!(run_helper(&none, "x").await.unwrap().is_none());
        let broken = helper(dir.path(), "echo boom >&2; exit 2");
        assert!(run_helper(&broken, "x")
            .await
            .unwrap_err()
            .contains("failed"));
    }
}
