//! Which node takes a tenant no node holds yet, when the node the claim arrived at
//! has no idle container in the pool itself (it keeps the tenant then: no forwarding
//! hop, see `api/forward.rs`).
//!
//! The rule, in order: a node with an idle container in the pool (a warm claim
//! there costs no Docker call); among those, the most idle containers; then the
//! most headroom (`max - claimed - starting`: room to cold-start); ties broken by
//! a hash of (tenant, node), so equal nodes share new tenants evenly and every node
//! that places the same tenant from the same view picks the same node. Capacity
//! comes from the node records, which lag the nodes by at most one publish tick;
//! this node's own figures are read live.

use sha2::{Digest, Sha256};

use super::{NodeRecord, PoolCapacity};

fn tie_break(tenant: &str, node: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    h.update([0]);
    h.update(node.as_bytes());
    h.finalize().into()
}

/// The node to place `tenant` in `pool` on; None when no node runs that pool.
pub fn choose<'a>(nodes: &'a [NodeRecord], tenant: &str, pool: &str) -> Option<&'a NodeRecord> {
    nodes
        .iter()
        .filter_map(|n| {
            let cap: &PoolCapacity = n.pools.iter().find(|p| p.pool_id == pool)?;
            let headroom = cap.max.saturating_sub(cap.claimed + cap.starting);
            Some((n, cap.idle > 0, cap.idle, headroom))
        })
        .max_by(|a, b| {
            (a.1, a.2, a.3)
                .cmp(&(b.1, b.2, b.3))
                .then_with(|| tie_break(tenant, &a.0.node_id).cmp(&tie_break(tenant, &b.0.node_id)))
        })
        .map(|(n, ..)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, idle: usize, claimed: usize, max: usize) -> NodeRecord {
        NodeRecord {
            node_id: id.into(),
            url: format!("http://{id}"),
            lease: 1,
            pools: vec![PoolCapacity {
                pool_id: "web".into(),
                idle,
                starting: 0,
                claimed,
                max,
            }],
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn idle_capacity_wins_then_headroom() {
        let nodes = vec![
            node("a", 0, 1, 10),
            node("b", 2, 5, 10),
            node("c", 1, 0, 10),
        ];
        assert_eq!(
            choose(&nodes, "t", "web").map(|n| n.node_id.as_str()),
            Some("b")
        );
        let full = vec![node("a", 0, 9, 10), node("b", 0, 2, 10)];
        assert_eq!(
            choose(&full, "t", "web").map(|n| n.node_id.as_str()),
            Some("b")
        );
    }

    #[test]
    fn equal_nodes_split_tenants_and_agree() {
        let nodes = vec![
            node("a", 1, 0, 10),
            node("b", 1, 0, 10),
            node("c", 1, 0, 10),
        ];
        let picks: std::collections::BTreeSet<String> = (0..30)
            .map(|i| {
                choose(&nodes, &format!("t{i}"), "web")
                    .map(|n| n.node_id.clone())
                    .unwrap_or_default()
            })
            .collect();
        assert!(picks.len() > 1, "{picks:?}");
        let again = choose(&nodes, "t1", "web").map(|n| n.node_id.clone());
        assert_eq!(
            again,
            choose(&nodes, "t1", "web").map(|n| n.node_id.clone())
        );
        assert!(choose(&nodes, "t", "other").is_none());
    }
}
