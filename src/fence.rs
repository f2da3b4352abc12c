//! Whether this node may write tenant state to object storage right now.
//!
//! In cluster mode a node that has not reached etcd within its lease fences itself:
//! another node may already hold its tenants and be writing their state, so an
//! upload from here — a periodic one, or the auto-release of an inactive claim —
//! could overwrite the newer owner's files (docs/cluster.md). The cluster installs its
//! check here; the pools ask it before every upload. Single-node mode installs
//! nothing, and nothing is ever held.

use std::sync::{Arc, OnceLock};

type Check = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// Cheap to clone; every clone sees the check installed on any of them.
#[derive(Clone, Default)]
pub struct Fence(Arc<OnceLock<Check>>);

impl Fence {
    /// Installs the check: Some(why) while uploads must wait. Only the first call
    /// counts (there is one cluster membership per daemon).
    pub fn install(&self, check: impl Fn() -> Option<String> + Send + Sync + 'static) {
        let _ = self.0.set(Box::new(check));
    }

    /// Some(why) when no upload may start now.
    pub fn held(&self) -> Option<String> {
        self.0.get().and_then(|check| check())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn holds_only_while_the_installed_check_says_so() {
        let fence = Fence::default();
        assert_eq!(fence.held(), None, "nothing installed: never held");
        let cut = Arc::new(AtomicBool::new(false));
        let seen = cut.clone();
        fence
            .clone()
            .install(move || seen.load(Ordering::SeqCst).then(|| "fenced".to_owned()));
        assert_eq!(fence.held(), None);
        cut.store(true, Ordering::SeqCst);
        assert_eq!(fence.held().as_deref(), Some("fenced"));
    }
}
