//! The daemon's one shutdown signal and the tasks that must end with it, after
//! mini-redis's `Shutdown`: a [`CancellationToken`] every long-lived task and stream
//! watches, and a [`TaskTracker`] that knows which tasks to wait for. `main`, the
//! in-process API tests and the Docker integration tests stop the daemon the same
//! way: [`Shutdown::begin`], then [`Shutdown::finish`].

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` until it ends or shutdown begins; [`Shutdown::finish`] waits for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.token.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Streams and tasks end from now on; no new request is accepted.
    pub fn begin(&self) {
        self.token.cancel();
    }

    pub fn is_begun(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when shutdown has begun.
    pub async fn begun(&self) {
        self.token.cancelled().await
    }

    /// Waits for every spawned task to have ended.
    pub async fn finish(&self) {
        self.begin();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn finish_ends_and_waits_for_every_task() {
        let shutdown = Shutdown::new();
        let ended = Arc::new(AtomicBool::new(false));
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        // Owned by the task's future, so it drops when the task is ended.
        let guard = SetOnDrop(ended.clone());
        shutdown.spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await
        });
        assert!(!shutdown.is_begun());
        shutdown.finish().await;
        assert!(shutdown.is_begun());
        assert!(
            ended.load(Ordering::SeqCst),
            "the task was ended and dropped"
        );
    }
}
