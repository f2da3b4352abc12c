//! The node-wide cap on managed containers (`BOILERHOUSE_MAX_CONTAINERS`), shared by
//! every pool. A slot is a [`Permit`] held by the container's record in its pool and
//! given back when that record is dropped, so no code path can forget to release it
//! or release it twice.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Clone)]
pub struct NodeCapacity(Arc<Slots>);

struct Slots {
    used: AtomicUsize,
    max: usize,
}

/// One container's slot; dropping it frees the slot.
pub struct Permit(Arc<Slots>);

impl NodeCapacity {
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Slots {
            used: AtomicUsize::new(0),
            max,
        }))
    }

    /// A slot for a new container, if the node has one free.
    pub fn try_acquire(&self) -> Option<Permit> {
        self.0
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < self.0.max).then_some(u + 1)
            })
            .ok()
            .map(|_| Permit(self.0.clone()))
    }

    /// A slot for a container that already runs (recovered at start-up): it counts
    /// even when the node is over its cap, e.g. after the cap was lowered.
    pub fn adopt(&self) -> Permit {
        self.0.used.fetch_add(1, Ordering::AcqRel);
        Permit(self.0.clone())
    }

    pub fn available(&self) -> bool {
        self.used() < self.0.max
    }

    pub fn used(&self) -> usize {
        self.0.used.load(Ordering::Acquire)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permit_holds_a_slot_until_dropped() {
        let cap = NodeCapacity::new(2);
        let a = cap.try_acquire().expect("first slot");
        let b = cap.try_acquire().expect("second slot");
        assert!(cap.try_acquire().is_none(), "the cap holds");
        assert!(!cap.available());
        drop(a);
        assert_eq!(cap.used(), 1);
        let c = cap.try_acquire().expect("a freed slot is reusable");
        let over = cap.adopt();
        assert_eq!(cap.used(), 3, "recovered containers count beyond the cap");
        drop((b, c, over));
        assert_eq!(cap.used(), 0);
    }
}
