//! Discovery at scale: 200 provider endpoints in this process announce themselves on the gossip
//! topic (every `ANNOUNCE_EVERY`, as provider nodes do); a node that joins through one of them
//! learns all 200 announcements. Prints how long that took and the gossip bytes each node
//! received.
//!
//! `GOLEM_SCALE_PROVIDERS=N` runs it with N providers instead (at least 200).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use golem_runtime::discovery::{
    ANNOUNCE_EVERY, Announcement, Discovery, DiscoveryConfig, unix_now,
};
use golem_runtime::identity::NodeKey;
use golem_runtime::net::{Endpoint, NetConfig};
use golem_runtime::proto::message::Offer;

struct Node {
    index: usize,
    endpoint: Endpoint,
    discovery: Arc<Discovery>,
}

fn key(index: usize) -> NodeKey {
    let mut secret = [0x5c; 32];
    secret[..8].copy_from_slice(&(index as u64).to_le_bytes());
    NodeKey::from_secret(secret)
}

/// A node on loopback in the topic, joined through `through` when given.
async fn node(index: usize, through: Option<&Node>) -> Node {
    let endpoint = Endpoint::bind(&key(index), &NetConfig::loopback())
        .await
        .expect("bind");
    let bootstrap = through
        .map(|other| {
            endpoint.remember(
                other.endpoint.node_id(),
                [other.endpoint.local_addr()],
                None,
            );
            other.endpoint.node_id()
        })
        .into_iter()
        .collect();
    let discovery = Discovery::join(&endpoint, bootstrap, DiscoveryConfig::default())
        .await
        .expect("join");
    Node {
        index,
        endpoint,
        discovery: Arc::new(discovery),
    }
}

fn announcement(key: &NodeKey, addr: SocketAddr, seq: u64) -> Vec<u8> {
    Announcement {
        node: key.node_id(),
        seq,
        expires_at: unix_now() + 60,
        offers: vec![Offer {
            flavor: "std".into(),
            memory_bytes: 1 << 30,
            fuel: 1 << 40,
            output_bytes: 64 << 20,
            log_bytes: 64 << 10,
            deadline_ms: 600_000,
            price_per_gfuel: 100,
            concurrency: 4,
        }],
        engine: None,
        payee: None,
        relay: None,
        addrs: vec![addr],
    }
    .sign(key)
    .expect("signs")
}

/// (announcements known, gossip neighbours) of the least informed nodes.
fn least_informed(nodes: &[Node]) -> Vec<(usize, u64)> {
    let mut counts: Vec<(usize, u64)> = nodes
        .iter()
        .map(|node| {
            (
                node.discovery.providers().len(),
                node.discovery.stats().neighbours,
            )
        })
        .collect();
    counts.sort();
    counts.truncate(5);
    counts
}

#[test]
fn a_node_that_joins_through_one_provider_learns_two_hundred() {
    let count: usize = std::env::var("GOLEM_SCALE_PROVIDERS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(200)
        .max(200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let started = Instant::now();
        // Each provider joins through one of those before it (a spread, not a chain or a star).
        let mut providers: Vec<Node> = Vec::with_capacity(count);
        for index in 0..count {
            let through = match index {
                0 => None,
                _ => Some(&providers[(index * 7919) % index]),
            };
            let node = node(index, through).await;
            providers.push(node);
        }
        eprintln!("{count} provider endpoints up in {:?}", started.elapsed());
        let announcing: Vec<_> = providers
            .iter()
            .map(|provider| {
                let (key, addr) = (key(provider.index), provider.endpoint.local_addr());
                let discovery = Arc::clone(&provider.discovery);
                tokio::spawn(async move {
                    for seq in 1.. {
                        if discovery
                            .publish(announcement(&key, addr, seq))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        tokio::time::sleep(ANNOUNCE_EVERY).await;
                    }
                })
            })
            .collect();

        // The providers hear each other (each misses only itself).
        let spread = Instant::now();
        while least_informed(&providers)[0].0 < count - 1 {
            assert!(
                spread.elapsed() < Duration::from_secs(60),
                "after {:?} the least informed providers know (announcements, neighbours) {:?}",
                spread.elapsed(),
                least_informed(&providers)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "every provider knew every other after {:?}",
            spread.elapsed()
        );

        // A newcomer (a requestor's part) joins through one provider only.
        let joined = Instant::now();
        let newcomer = node(count, Some(&providers[count / 2])).await;
        while newcomer.discovery.providers().len() < count {
            assert!(
                joined.elapsed() < Duration::from_secs(30),
                "the newcomer learned {} of {count} in {:?}",
                newcomer.discovery.providers().len(),
                joined.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = joined.elapsed();
        let stats = newcomer.discovery.stats();
        // Every provider once, and again for each that announced anew while the newcomer
        // joined (the spread can outlast the announce period on a busy machine).
        assert!(stats.accepted >= count as u64, "{stats:?}");
        let per_node: Vec<u64> = providers
            .iter()
            .map(|provider| provider.discovery.stats().received_bytes)
            .collect();
        let elapsed = started.elapsed().as_secs_f64();
        let mean = per_node.iter().sum::<u64>() as f64 / count as f64;
        eprintln!(
            "a newcomer joined through one provider learned all {count} announcements in \
             {took:?}, from {} gossip messages ({} bytes; {} refused as known already); \
             over the run ({elapsed:.0} s) a provider received {:.0} gossip bytes on average \
             ({:.0} bytes/s; max {}), announcements being {} bytes",
            stats.received,
            stats.received_bytes,
            stats.refused,
            mean,
            mean / elapsed,
            per_node.iter().max().copied().unwrap_or(0),
            announcement(&key(0), providers[0].endpoint.local_addr(), 0).len(),
        );
        for task in announcing {
            task.abort();
        }
        for node in providers.iter().chain([&newcomer]) {
            node.endpoint.close();
        }
    });
}
