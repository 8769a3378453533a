//! Discovery by gossip between real nodes on loopback: providers announce themselves on the
//! topic, and a requestor that joins through any one node learns every provider and dials each
//! by its node id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use golem_runtime::identity::{NodeId, NodeKey};
use golem_runtime::net::NetConfig;
use golem_runtime::node::{ProviderNode, ProviderNodeConfig, Requestor, RequestorConfig};
use golem_runtime::sandbox::{Sandbox, SandboxConfig};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_requestor_that_joins_through_one_node_learns_every_provider_by_gossip() {
    runtime().block_on(async {
        let sandbox = Arc::new(Sandbox::new(SandboxConfig::with_instances(16)).expect("engine"));
        // A chain: each provider joins the topic through the one before it, and knows no other.
        let mut providers: Vec<ProviderNode> = Vec::new();
        for index in 0..6u8 {
            let mut config = ProviderNodeConfig::local(&sandbox, 1);
            config.offers[0].price_per_gfuel = u64::from(index) * 10;
            config.bootstrap = providers
                .last()
                .map(ProviderNode::bootstrap)
                .into_iter()
                .collect();
            let key = NodeKey::from_secret([0x50 + index; 32]);
            let provider = ProviderNode::start(&key, Arc::clone(&sandbox), config)
                .await
                .expect("provider");
            providers.push(provider);
        }
        let requestor = Requestor::start(
            &NodeKey::from_secret([0x60; 32]),
            RequestorConfig {
                net: NetConfig::loopback(),
                ..RequestorConfig::default()
            },
        )
        .await
        .expect("requestor");
        // It is told of the last provider only.
        let started = Instant::now();
        requestor.join(providers[5].bootstrap());
        let found = requestor
            .wait_for_providers(6, Duration::from_secs(20))
            .await;
        eprintln!(
            "6 providers learned and connected in {:?}",
            started.elapsed()
        );
        assert_eq!(found, 6, "{:?}", requestor.discovery_stats());

        let mut expected: Vec<NodeId> = providers.iter().map(ProviderNode::node_id).collect();
        expected.sort();
        let connected: Vec<NodeId> = requestor.providers().iter().map(|p| p.node).collect();
        assert_eq!(connected, expected);
        // What it believes of each came from that provider's own signed announcement. The node
        // it joined through was dialed at once, so its announcement may come a moment later:
        // with the next pass to new neighbours, or its next announcement at the latest.
        let started = Instant::now();
        while requestor.announced().len() < 6 {
            assert!(
                started.elapsed() < golem_runtime::discovery::ANNOUNCE_EVERY,
                "announced: {:?}",
                requestor
                    .announced()
                    .iter()
                    .map(|a| a.node)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let announced = requestor.announced();
        assert_eq!(
            announced.iter().map(|a| a.node).collect::<Vec<_>>(),
            expected
        );
        for announcement in &announced {
            let provider = providers
                .iter()
                .find(|provider| provider.node_id() == announcement.node)
                .expect("an announced provider is one of ours");
            assert_eq!(announcement.offers, provider.offers());
        }
        // The providers learn each other too, from the topic alone, at the latest when each
        // has announced itself again.
        let started = Instant::now();
        while providers.iter().any(|p| p.known_providers().len() < 5) {
            assert!(
                started.elapsed() < golem_runtime::discovery::ANNOUNCE_EVERY * 2,
                "providers know {:?} others",
                providers
                    .iter()
                    .map(|p| p.known_providers().len())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "every provider knew the 5 others after {:?}",
            started.elapsed()
        );

        // A requestor that takes at most three providers dials no more, however many are
        // announced (a flood of announcements costs nothing to make).
        let capped = Requestor::start(
            &NodeKey::from_secret([0x61; 32]),
            RequestorConfig {
                net: NetConfig::loopback(),
                max_providers: 3,
                ..RequestorConfig::default()
            },
        )
        .await
        .expect("requestor");
        capped.join(providers[5].bootstrap());
        let connected = capped.wait_for_providers(6, Duration::from_secs(5)).await;
        assert_eq!(connected, 3, "{:?}", capped.discovery_stats());
        assert!(
            capped.announced().len() > 3,
            "it heard of more than it took"
        );
        capped.shutdown();

        // A provider that leaves is gone at once for the requestor connected to it.
        let left = providers.remove(2);
        let gone = left.node_id();
        left.shutdown();
        drop(left);
        let started = Instant::now();
        while requestor.providers().iter().any(|p| p.node == gone) {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "the provider that left is still scheduled on"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        requestor.shutdown();
    });
}

#[test]
fn a_provider_whose_announcement_would_not_fit_gossip_does_not_start() {
    runtime().block_on(async {
        let sandbox = Arc::new(Sandbox::new(SandboxConfig::with_instances(2)).expect("engine"));
        let mut config = ProviderNodeConfig::local(&sandbox, 1);
        let offer = config.offers[0].clone();
        config.offers = (0..100)
            .map(|index| golem_runtime::proto::message::Offer {
                flavor: format!("flavor-{index:03}-with-a-name-long-enough-to-matter"),
                ..offer.clone()
            })
            .collect();
        let refused = ProviderNode::start(&NodeKey::from_secret([0x70; 32]), sandbox, config)
            .await
            .expect_err("a hundred long flavors do not fit one announcement");
        assert!(
            matches!(
                refused,
                golem_runtime::node::NodeError::Announcement(
                    golem_runtime::discovery::AnnouncementError::TooLarge { .. }
                )
            ),
            "{refused:?}"
        );
        assert!(refused.to_string().contains("fewer"), "{refused}");
    });
}
