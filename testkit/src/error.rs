//! The kit's one error type. Benchmarks propagate it (a bench ends with a message,
//! never a panic); tests call the panicking wrappers, which print it.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {}: {source}", bin.display())]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon exited with {status} during start-up:\n{log}")]
    Exited {
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("the daemon did not answer /health within {timeout:?}:\n{log}")]
    NotHealthy { timeout: Duration, log: String },
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(
        "Docker is unreachable or the image {image} is missing ({detail}): run `make test` \
         or scripts/provision-test-deps.sh (they build it)"
    )]
    ImageMissing { image: String, detail: String },
}

impl KitError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

pub type KitResult<T> = Result<T, KitError>;
