//! Builds the whole application — manager (recovery, pools, event watcher), router
//! and shutdown — in one function, for `main`, for the in-process API tests on the
//! in-memory runtime, and for anything else that embeds the daemon (zero2prod's
//! `spawn_app`). Binding a port and handling signals stay in `startup`.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;

use crate::activity::ActivityLog;
use crate::api::{self, AppState};
use crate::config::Config;
use crate::manager::{ContainerManager, StartError};
use crate::runtime::Runtime;
use crate::shutdown::Shutdown;
use crate::workload::Workload;

pub struct App {
    pub router: Router,
    pub manager: Arc<ContainerManager>,
    pub shutdown: Shutdown,
}

impl App {
    /// Recovers this instance's containers and claims and starts the pools.
    pub async fn build(
        config: Config,
        runtime: Arc<dyn Runtime>,
        workloads: Vec<Workload>,
    ) -> Result<Self, StartError> {
        let config = Arc::new(config);
        let shutdown = Shutdown::new();
        let manager = Arc::new(
            ContainerManager::start(
                config.clone(),
                runtime,
                workloads,
                Arc::new(ActivityLog::default()),
                &shutdown,
            )
            .await?,
        );
        // Cluster mode joins before the router exists, so this node's first request
        // already finds its tenants reconciled with etcd.
        let cluster = match crate::cluster::ClusterConfig::from_config(&config) {
            Ok(Some(c)) => {
                let cluster = Arc::new(crate::cluster::Cluster::new(c, manager.clone()));
                // A fenced node uploads nothing: its tenants may be someone else's now.
                let member = Arc::downgrade(&cluster);
                manager
                    .fence()
                    .install(move || member.upgrade().and_then(|c| c.fenced()));
                cluster.start(&shutdown).await;
                Some(cluster)
            }
            // Config::validate refused a bad cluster configuration already.
            _ => None,
        };
        let state = AppState {
            manager: manager.clone(),
            api_token: config.api_token.as_deref().map(Arc::from),
            started: Instant::now(),
            metrics: crate::metrics::install(),
            request_timeout: config.request_timeout(),
            shutdown: shutdown.clone(),
            cluster,
        };
        Ok(Self {
            router: api::router(state),
            manager,
            shutdown,
        })
    }

    /// Ends streams and background tasks and stops the pools; containers keep
    /// running for the next start to adopt.
    pub async fn stop(&self) {
        self.shutdown.begin();
        self.manager.shutdown().await;
        self.shutdown.finish().await;
    }
}
