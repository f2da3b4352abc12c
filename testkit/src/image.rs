//! The test image every daemon runs by default. It is built once by
//! scripts/provision-test-deps.sh (`make test` / `make provision`): a `FROM scratch`
//! image around a static busybox. Here it is only looked up, so a missing image fails
//! the run with the command that builds it — never a skip.

use crate::docker::docker;
use crate::error::{KitError, KitResult};

/// `BOILERHOUSE_TEST_IMAGE`, else `boilerhouse-test:busybox`.
pub fn test_image() -> String {
    std::env::var("BOILERHOUSE_TEST_IMAGE")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "boilerhouse-test:busybox".into())
}

/// Checks that the engine answers and has `image`.
pub fn require_image(image: &str) -> KitResult<()> {
    let (ok, out) = docker(&["image", "inspect", "--format", "{{.Id}}", image]);
    if ok {
        Ok(())
    } else {
        Err(KitError::ImageMissing {
            image: image.to_owned(),
            detail: out,
        })
    }
}

/// Fails (never skips) when Docker or the test image is missing.
pub fn require_docker() {
    if let Err(e) = require_image(&test_image()) {
        panic!("{e}");
    }
}
