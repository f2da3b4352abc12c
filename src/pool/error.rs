//! What a pool answers when it cannot do what it was asked. Each variant carries the
//! sentence the API shows; `api::error` maps variants to status codes.

#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    /// No free container (at capacity, or none became ready within the claim's wait).
    #[error("{0}")]
    Exhausted(String),
    /// The pool cannot create containers (its last error says why).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    SyncFailed(String),
    #[error("tenant holds no claim in this pool")]
    NotClaimed,
    /// The claim or container is in a transition; retrying shortly will do.
    #[error("{0}")]
    Busy(String),
    #[error("no container with id {0:?} in this pool")]
    ContainerNotFound(String),
    #[error("container {0} is claimed by tenant {1}; add ?force=true to destroy it anyway (the claim ends without upload)")]
    ContainerClaimed(String, String),
    #[error("{0}")]
    Invalid(String),
    /// The claim record could not be written: the claim was not made.
    #[error("{0}")]
    Ledger(String),
    #[error("{0}")]
    Internal(String),
    #[error("the pool is shutting down")]
    Stopped,
    /// Its workload file was removed by a reload: the pool takes no claims and ends
    /// once its claimed containers are released.
    #[error("pool {0} was removed (its workload file is gone); it takes no new claims")]
    Removed(String),
}
