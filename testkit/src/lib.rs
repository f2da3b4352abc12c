//! The fixtures Boilerhouse's integration tests (`tests/`) and benchmarks (`benches/`)
//! share, one room per fixture:
//!
//! - [`daemon`] (+ `api`): the daemon binary as a child process on a free port, with
//!   its own instance label and directories, healthy before use, its containers
//!   removed when it drops; the HTTP API as tests call it;
//! - [`docker`]: the `docker` CLI for checks from outside, and [`InstanceGuard`];
//! - [`image`]: the provisioned test image;
//! - [`s3`]: `rclone serve s3` behind a serialising, fault-injecting proxy;
//! - [`hold`]: a proxy that holds a chosen request, for crash tests;
//! - [`registry`]: a loopback container registry;
//! - [`etcd`]: a 3-member etcd cluster on loopback ports, for cluster mode;
//! - [`files`], [`net`], [`poll`], [`bench`]: small helpers.
//!
//! The kit does not depend on the `boilerhouse` crate: it drives the daemon as an
//! operator would, through its binary, environment and HTTP API. Everything a user or
//! Docker can make fail either returns [`KitError`] (the `try_` paths benches use) or
//! panics with the context a failing test needs.

mod api;
pub mod bench;
pub mod daemon;
pub mod docker;
pub mod error;
pub mod etcd;
pub mod files;
pub mod hold;
pub mod image;
pub mod net;
pub mod poll;
pub mod registry;
pub mod s3;

pub use daemon::{unique_instance, web_daemon, workload, Daemon, DaemonBuilder};
pub use docker::{
    containers_of, docker, docker_exec, docker_exec_ok, docker_inspect, labelled_containers,
    remove_instance_containers, InstanceGuard,
};
pub use error::{KitError, KitResult};
pub use etcd::{EtcdCluster, EtcdLink};
pub use files::{file_tree, listing, read};
pub use image::{require_docker, require_image, test_image};
pub use net::{free_port, raw_request, try_free_port};
pub use poll::eventually;
