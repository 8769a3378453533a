//! A requestor attacking a provider, over real QUIC on loopback: each test mounts one attack
//! with a raw protocol client (the frames a hostile peer may send, not what our requestor
//! sends) against a real provider node, and checks that the provider bounds what it spends and
//! keeps serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use golem::Task;
use golem_runtime::adversarial::RawRequestor;
use golem_runtime::identity::NodeKey;
use golem_runtime::net::{BAD_FRAME, NetConfig};
use golem_runtime::node::{ProviderLimits, ProviderNode, ProviderNodeConfig};
use golem_runtime::payment::{Books, Credit};
use golem_runtime::proto::message::{Batch, BlobId, Input, Item, JobSpec, Outcome, Reply, Request};
use golem_runtime::sandbox::{Limits, Sandbox, SandboxConfig};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A provider of one worker thread whose flavor holds subtasks of up to `deadline`, with
/// `limits`; the fixture's module and the empty context are in its store.
async fn provider(limits: ProviderLimits, deadline: Duration) -> ProviderNode {
    provider_with(limits, deadline, |_| {}).await
}

/// [`provider`], with its configuration changed by `adjust` before it starts.
async fn provider_with(
    limits: ProviderLimits,
    deadline: Duration,
    adjust: impl FnOnce(&mut ProviderNodeConfig),
) -> ProviderNode {
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::with_instances(4)).expect("engine"));
    let mut config = ProviderNodeConfig::local(&sandbox, 1);
    config.offers[0].deadline_ms = deadline.as_millis() as u64;
    config.offers[0].output_bytes = Limits::default().output_bytes as u64;
    config.threads = Some(1);
    config.limits = limits;
    adjust(&mut config);
    let provider = ProviderNode::start(&NodeKey::from_secret([0xA0; 32]), sandbox, config)
        .await
        .expect("provider");
    provider
        .blobs()
        .insert(golem_fixture::spin::module().bytes().to_vec())
        .expect("module stored");
    provider.blobs().insert(Vec::new()).expect("context stored");
    provider
}

async fn dial(provider: &ProviderNode, seed: u8) -> Result<RawRequestor, String> {
    dial_with(provider, seed, NetConfig::loopback()).await
}

async fn dial_with(
    provider: &ProviderNode,
    seed: u8,
    net: NetConfig,
) -> Result<RawRequestor, String> {
    let key = NodeKey::from_secret([seed; 32]);
    RawRequestor::dial(&key, &net, provider.node_id(), provider.addr()).await
}

/// Dials `provider` (seed 1) with a stream window of 64 KiB: a few replies fill it.
async fn dial_narrow(provider: &ProviderNode) -> RawRequestor {
    let net = NetConfig {
        stream_window: 64 << 10,
        ..NetConfig::loopback()
    };
    dial_with(provider, 1, net).await.expect("dials")
}

async fn send(client: &mut RawRequestor, request: Request) {
    client.send(&request).await.expect("request sent");
}

async fn reply(client: &mut RawRequestor) -> Reply {
    tokio::time::timeout(Duration::from_secs(60), client.reply())
        .await
        .expect("a reply within a minute")
        .expect("the reply decodes")
        .expect("the stream is open")
}

/// A batch of `task` (a fixture task with no context) over `inputs`, under `limits`.
fn batch<T: Task>(id: u64, inputs: &[T::Input], limits: Limits) -> Batch {
    Batch {
        id,
        job: JobSpec {
            module: T::module().hash(),
            task: T::NAME.into(),
            context: BlobId::of(&[]),
            seed: [1; 32],
            nonce: [2; 16],
            limits,
        },
        items: inputs
            .iter()
            .enumerate()
            .map(|(index, input)| Item {
                index: index as u64,
                input: Input::Inline(postcard::to_allocvec(input).expect("encodes")),
            })
            .collect(),
    }
}

fn spin_limits(deadline: Duration) -> Limits {
    Limits::default().fuel(u64::MAX / 4).deadline(deadline)
}

fn is_retry(reply: &Reply, id: u64) -> bool {
    matches!(reply, Reply::Done { batch, outcome: Outcome::Retry(_) } if *batch == id)
}

/// `double(21)` answers 42 on `client`, as batch `id`.
async fn assert_serves(client: &mut RawRequestor, id: u64) {
    let limits = Limits::default().deadline(Duration::from_millis(500));
    let double = batch::<golem_fixture::double>(id, &[21], limits);
    send(client, Request::Run(double)).await;
    match reply(client).await {
        Reply::Done {
            batch,
            outcome: Outcome::Outputs { outputs, .. },
        } if batch == id => {
            let value: u64 = postcard::from_bytes(&outputs[0].bytes).expect("decodes");
            assert_eq!(value, 42);
        }
        other => panic!("expected batch {id} done, got {other:?}"),
    }
}

/// Waits until the books say every requestor together owes `owed`: the provider enters what it
/// delivered just after the reply leaves.
async fn on_credit(books: &Books, owed: u128) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while books.on_credit() != owed {
        assert!(
            Instant::now() < deadline,
            "the books say {} is owed, not {owed}",
            books.on_credit()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `double(21)` as batch `id` on `client` is refused for non-payment.
async fn assert_unpaid(client: &mut RawRequestor, id: u64) -> Outcome {
    let limits = Limits::default().deadline(Duration::from_millis(500));
    let double = batch::<golem_fixture::double>(id, &[21], limits);
    send(client, Request::Run(double)).await;
    match reply(client).await {
        Reply::Done { batch, outcome } if batch == id => {
            assert!(matches!(outcome, Outcome::Unpaid { .. }), "{outcome:?}");
            outcome
        }
        other => panic!("expected batch {id} refused as unpaid, got {other:?}"),
    }
}

/// A provider that keeps books and charges one unit per unit of fuel, so each batch is owed
/// for, with no credit limit yet; a requestor (seed 1) it served one batch (id 1); and what
/// that batch cost, once the books hold it.
async fn priced_provider() -> (Arc<Books>, ProviderNode, RawRequestor, u128) {
    let books = Arc::new(Books::in_memory().expect("books"));
    let provider = provider_with(ProviderLimits::default(), Duration::from_secs(1), |c| {
        c.offers[0].price_per_gfuel = 1_000_000_000;
        c.books = Some(Arc::clone(&books));
    })
    .await;
    let mut first = dial(&provider, 1).await.expect("dials");
    assert_serves(&mut first, 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while books.on_credit() == 0 {
        assert!(
            Instant::now() < deadline,
            "the batch never entered the books"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cost = books.on_credit();
    (books, provider, first, cost)
}

/// Finding 9: node ids cost nothing, so a credit per requestor alone is a credit per key. A
/// requestor that has never paid gets the first credit only, credit grows by what a requestor
/// pays, those that never paid share a part of the total only, and once every requestor
/// together owes the total no one is served on credit, however many fresh keys ask.
#[test]
fn fresh_keys_cannot_take_unpaid_work_past_the_total_credit() {
    runtime().block_on(async {
        let (books, provider, mut first, cost) = priced_provider().await;
        provider.set_credit(Some(Credit {
            per_requestor: 100 * cost,
            first: 0,
            strangers: 3 * cost,
            total: 3 * cost,
        }));

        // Never paid, it may owe nothing more.
        let refused = assert_unpaid(&mut first, 2).await;
        assert_eq!(
            refused,
            Outcome::Unpaid {
                owed: cost,
                limit: 0
            }
        );

        // Fresh keys: each owes nothing, so each is served once, until all together owe the
        // total; from then on a fresh key is refused before it runs anything.
        let mut served = 0;
        for seed in 2..10 {
            let mut fresh = dial(&provider, seed).await.expect("dials");
            if books.on_credit() >= 3 * cost {
                assert_unpaid(&mut fresh, 1).await;
                continue;
            }
            assert_serves(&mut fresh, 1).await;
            served += 1;
            on_credit(&books, (served + 1) * cost).await;
            assert_unpaid(&mut fresh, 2).await;
        }
        assert_eq!(served, 2, "two fresh keys before the total");
        assert_eq!(books.on_credit(), 3 * cost);

        // Credit is earned by paying: with room in the total, the first key pays for its batch
        // and may then owe what it has paid, while a fresh key that never paid still may not.
        provider.set_credit(Some(Credit {
            per_requestor: 100 * cost,
            first: 0,
            strangers: 100 * cost,
            total: 100 * cost,
        }));
        let key = NodeKey::from_secret([1; 32]).node_id();
        assert_eq!(books.arrived(key, cost, [7; 32]), Ok(true));
        on_credit(&books, 2 * cost).await;
        assert_serves(&mut first, 3).await;
        on_credit(&books, 3 * cost).await;
        assert_serves(&mut first, 4).await;
        on_credit(&books, 4 * cost).await;
        let refused = assert_unpaid(&mut first, 5).await;
        assert_eq!(
            refused,
            Outcome::Unpaid {
                owed: 2 * cost,
                limit: cost
            }
        );
        let mut fresh = dial(&provider, 2).await.expect("dials");
        let refused = assert_unpaid(&mut fresh, 3).await;
        assert_eq!(
            refused,
            Outcome::Unpaid {
                owed: cost,
                limit: 0
            }
        );

        // Keys that never paid share their part of the total only: once they owe it, a fresh
        // key is refused, and the requestor that pays is still served.
        let strangers = books.owed_on_credit().strangers;
        assert_eq!(strangers, 2 * cost, "the two fresh keys served above");
        provider.set_credit(Some(Credit {
            per_requestor: 100 * cost,
            first: cost,
            strangers: 3 * cost,
            total: 100 * cost,
        }));
        let mut fresh = dial(&provider, 10).await.expect("dials");
        assert_serves(&mut fresh, 1).await;
        on_credit(&books, 5 * cost).await;
        assert_eq!(books.owed_on_credit().strangers, 3 * cost);
        let mut fresh = dial(&provider, 11).await.expect("dials");
        let refused = assert_unpaid(&mut fresh, 1).await;
        assert_eq!(refused, Outcome::Unpaid { owed: 0, limit: 0 });
        assert_serves(&mut first, 6).await;
        on_credit(&books, 6 * cost).await;
        println!(
            "a batch costs {cost}; refused {} batches for non-payment",
            provider.unpaid_refusals()
        );
    });
}

/// Finding 9: requests sent together do not all pass the credit before the first result is in
/// the books: the work run and not yet entered counts as owed, and each batch is asked again as
/// it starts (with one worker, as here, no batch passes the credit; with more, one per worker
/// may).
#[test]
fn batches_sent_together_take_no_more_than_the_credit() {
    runtime().block_on(async {
        let (books, provider, _first, cost) = priced_provider().await;
        // A stranger may owe one batch: it is served while it owes no more than that.
        provider.set_credit(Some(Credit {
            per_requestor: cost,
            first: cost,
            strangers: 100 * cost,
            total: 100 * cost,
        }));
        let mut attacker = dial(&provider, 2).await.expect("dials");
        // A spin holds the one worker (and costs nothing: it fails) while five batches are
        // accepted behind it, each passing the credit as it arrives.
        let spin = batch::<golem_fixture::spin>(1, &[1], spin_limits(Duration::from_millis(300)));
        send(&mut attacker, Request::Run(spin)).await;
        let limits = Limits::default().deadline(Duration::from_millis(500));
        for id in 2..=6 {
            send(
                &mut attacker,
                Request::Run(batch::<golem_fixture::double>(id, &[21], limits.clone())),
            )
            .await;
        }
        let (mut served, mut unpaid) = (0, 0);
        for _ in 1..=6 {
            match reply(&mut attacker).await {
                Reply::Done {
                    outcome: Outcome::Outputs { .. },
                    ..
                } => served += 1,
                Reply::Done {
                    outcome: Outcome::Unpaid { .. },
                    ..
                } => unpaid += 1,
                Reply::Done { batch: 1, .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        // The first owes nothing as it starts, the second owes one batch (not more than the
        // credit), the third would owe two.
        assert_eq!((served, unpaid), (2, 3));
        on_credit(&books, 3 * cost).await;
        println!("five batches sent together: {served} served, {unpaid} refused until paid");
    });
}

/// Finding 5: a Cancel stops a batch where it is: one queued never runs, and one running stops
/// within a deadline tick, not at its deadline; either way its place comes free at once.
#[test]
fn a_cancelled_batch_stops_at_once_whether_queued_or_running() {
    runtime().block_on(async {
        let limits = ProviderLimits {
            batches_per_connection: 6,
            ..ProviderLimits::default()
        };
        let minute = Duration::from_secs(60);
        let provider = provider(limits, minute).await;
        let mut attacker = dial(&provider, 1).await.expect("dials");
        // Six spins of a minute each, on the one worker: one runs, five wait behind it.
        for id in 1..=6 {
            let spin = batch::<golem_fixture::spin>(id, &[1], spin_limits(minute));
            send(&mut attacker, Request::Run(spin)).await;
        }
        // While they hold every place, a new batch is given back.
        let spin = batch::<golem_fixture::spin>(7, &[1], spin_limits(minute));
        send(&mut attacker, Request::Run(spin)).await;
        let refused = reply(&mut attacker).await;
        assert!(
            is_retry(&refused, 7),
            "the spins hold their places: {refused:?}"
        );
        for id in 1..=6 {
            send(&mut attacker, Request::Cancel { batch: id }).await;
        }
        let cancelled = Instant::now();
        // No reply is owed for them, and their places come free as soon as they stop.
        let mut id = 8;
        loop {
            assert!(
                cancelled.elapsed() < Duration::from_secs(30),
                "never served"
            );
            let limits = Limits::default().deadline(Duration::from_millis(500));
            let double = batch::<golem_fixture::double>(id, &[21], limits);
            send(&mut attacker, Request::Run(double)).await;
            match reply(&mut attacker).await {
                Reply::Done {
                    outcome: Outcome::Outputs { .. },
                    batch,
                } if batch == id => break,
                reply if is_retry(&reply, id) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    id += 1;
                }
                other => panic!("no reply is owed for a cancelled batch: {other:?}"),
            }
        }
        let waited = cancelled.elapsed();
        eprintln!("served {waited:?} after the cancels");
        assert!(
            waited < Duration::from_secs(5),
            "the running spin went on after its cancel: {waited:?}"
        );
    });
}

/// Finding 5: batches run in turn by requestor, so one requestor's backlog delays another by
/// about one batch, not by the whole backlog.
#[test]
fn one_requestors_backlog_delays_another_by_one_batch_not_all_of_it() {
    runtime().block_on(async {
        let half = Duration::from_millis(500);
        let provider = provider(ProviderLimits::default(), half).await;
        let mut attacker = dial(&provider, 1).await.expect("dials");
        for id in 1..=8 {
            let spin = batch::<golem_fixture::spin>(id, &[1], spin_limits(half));
            send(&mut attacker, Request::Run(spin)).await;
        }
        let done = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&done);
        let reader = tokio::spawn(async move {
            while let Ok(Some(reply)) = attacker.replies.recv::<Reply>().await {
                if matches!(reply, Reply::Done { .. }) {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut honest = dial(&provider, 2).await.expect("dials");
        assert_serves(&mut honest, 1).await;
        let before = done.load(Ordering::SeqCst);
        eprintln!("the attacker's batches done before the honest one: {before} of 8");
        assert!(before <= 3, "the honest batch waited behind {before}");
        reader.abort();
    });
}

/// Finding 4: connections are capped per node id and in all; past a cap a connection is closed
/// as busy and the others go on.
#[test]
fn connections_past_the_caps_are_closed_as_busy() {
    runtime().block_on(async {
        let limits = ProviderLimits {
            connections: 3,
            connections_per_peer: 2,
            ..ProviderLimits::default()
        };
        let provider = provider(limits, Duration::from_secs(1)).await;
        let mut first = dial(&provider, 1).await.expect("first");
        let _second = dial(&provider, 1).await.expect("second");
        let third = dial(&provider, 1).await.expect_err("a third from one node");
        assert!(third.contains("busy"), "{third}");
        let _other = dial(&provider, 2).await.expect("another node");
        let fourth = dial(&provider, 3).await.expect_err("a fourth in all");
        assert!(fourth.contains("busy"), "{fourth}");
        assert_serves(&mut first, 1).await;
    });
}

/// Finding 6: a blob no batch asked for is not read, stored in memory, or written to disk.
#[test]
fn a_blob_nobody_asked_for_is_refused_unread() {
    runtime().block_on(async {
        let provider = provider(ProviderLimits::default(), Duration::from_secs(1)).await;
        let attacker = dial(&provider, 1).await.expect("dials");
        let junk = vec![7u8; 1 << 20];
        let id = BlobId::of(&junk);
        let mut stream = attacker
            .blob_stream(id, junk.len() as u64, &[])
            .await
            .expect("a blob stream");
        let stopped = tokio::time::timeout(Duration::from_secs(10), stream.stopped())
            .await
            .expect("the provider stops the stream");
        assert_eq!(
            stopped.expect("stopped").map(|code| code.into_inner()),
            Some(u64::from(BAD_FRAME))
        );
        let _ = stream.write_all(&junk).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !provider.blobs().contains(&id),
            "an unasked blob was stored"
        );
    });
}

/// Finding 4: a blob stream that stalls is given up once it falls below the minimum rate
/// (after its grace of 5 s), long before the blob wait of a minute: its room is freed and the
/// batch that waited for it given back.
#[test]
fn a_stalled_blob_stream_is_given_up() {
    runtime().block_on(async {
        let provider = provider(ProviderLimits::default(), Duration::from_secs(1)).await;
        let mut attacker = dial(&provider, 1).await.expect("dials");
        // A batch whose input is a blob the provider lacks: it asks for it.
        let missing = BlobId::of(b"an input never sent in full");
        let limits = Limits::default().deadline(Duration::from_millis(500));
        let mut run = batch::<golem_fixture::double>(1, &[1], limits);
        run.items[0].input = Input::Blob(missing);
        send(&mut attacker, Request::Run(run)).await;
        match reply(&mut attacker).await {
            Reply::Need { blobs, .. } => assert_eq!(blobs, vec![missing]),
            other => panic!("expected a need, got {other:?}"),
        }
        let stream = attacker
            .blob_stream(missing, 4 << 20, &[0; 1024])
            .await
            .expect("a blob stream");
        let stopped = tokio::time::timeout(Duration::from_secs(20), stream.stopped()).await;
        assert!(
            stopped.is_ok(),
            "the stalled stream was not given up within 20 s"
        );
        let given_back = reply(&mut attacker).await;
        assert!(is_retry(&given_back, 1), "{given_back:?}");
        assert_serves(&mut attacker, 2).await;
    });
}

/// Finding 4: a requestor that takes no replies (withholding QUIC flow-control credit) is
/// closed after the reply timeout instead of holding the connection's driver forever.
#[test]
fn a_requestor_that_takes_no_replies_is_closed() {
    runtime().block_on(async {
        let limits = ProviderLimits {
            reply_timeout: Duration::from_secs(1),
            ..ProviderLimits::default()
        };
        let provider = provider(limits, Duration::from_secs(5)).await;
        // A small window, so that few replies fill it.
        let mut attacker = dial_narrow(&provider).await;
        let limits = Limits::default().deadline(Duration::from_secs(5));
        // Four outputs of 64 KiB: more than the control stream's window.
        for id in 1..=4 {
            let flood = batch::<golem_fixture::flood>(id, &[64 << 10], limits.clone());
            send(&mut attacker, Request::Run(flood)).await;
        }
        let closed =
            tokio::time::timeout(Duration::from_secs(30), attacker.connection.quic().closed())
                .await
                .expect("the provider closes the connection");
        assert!(
            closed.to_string().contains("took no reply"),
            "closed for another reason: {closed}"
        );
        let mut honest = dial(&provider, 2).await.expect("dials");
        assert_serves(&mut honest, 1).await;
    });
}

/// Finding 4: the outputs of finished batches wait for their reply in the connection's room, so
/// a requestor that reads no replies makes the provider hold that much at most: the batches
/// past it are given back, not kept.
#[test]
fn the_outputs_a_requestor_does_not_take_are_held_up_to_its_room() {
    runtime().block_on(async {
        const MIB: usize = 1 << 20;
        // Room for three outputs of 1 MiB, not four.
        let limits = ProviderLimits {
            batch_bytes_per_connection: 3 * MIB + MIB / 2,
            reply_timeout: Duration::from_secs(60),
            ..ProviderLimits::default()
        };
        let provider = provider(limits, Duration::from_secs(5)).await;
        // A small window, so that the first output fills it.
        let mut attacker = dial_narrow(&provider).await;
        // A spin first, on the one worker, while every flood is accepted and queued behind it.
        let spin = batch::<golem_fixture::spin>(1, &[1], spin_limits(Duration::from_millis(300)));
        send(&mut attacker, Request::Run(spin)).await;
        let limits = Limits::default()
            .output_bytes(2 * MIB)
            .deadline(Duration::from_secs(5));
        for id in 2..=13 {
            let flood = batch::<golem_fixture::flood>(id, &[MIB], limits.clone());
            send(&mut attacker, Request::Run(flood)).await;
        }
        // Every batch runs; three floods' outputs are kept, unread, and nothing else.
        let deadline = Instant::now() + Duration::from_secs(30);
        while provider.held().0 != 3 || provider.held().1 < 3 * MIB {
            assert!(Instant::now() < deadline, "held {:?}", provider.held());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let held = provider.held();
        assert_eq!(held.0, 3, "{held:?}");
        assert!((3 * MIB..3 * MIB + MIB / 2).contains(&held.1), "{held:?}");
        let (mut kept, mut given_back) = (0, 0);
        for _ in 1..=13 {
            match reply(&mut attacker).await {
                Reply::Done {
                    outcome: Outcome::Outputs { outputs, .. },
                    ..
                } => {
                    assert_eq!(outputs[0].bytes.len(), MIB + 3, "a MiB, encoded");
                    kept += 1;
                }
                Reply::Done {
                    batch,
                    outcome: Outcome::Retry(_),
                } if batch > 1 => given_back += 1,
                Reply::Done { batch: 1, .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((kept, given_back), (3, 9));
        println!("held {held:?} while no reply was read; {kept} kept, {given_back} given back");
        // Taken, they leave no trace, and the connection is served as before.
        assert_serves(&mut attacker, 14).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while provider.held() != (0, 0) {
            assert!(Instant::now() < deadline, "held {:?}", provider.held());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// Finding 2: a batch whose outputs would not fit one reply frame is given back when its
/// outputs pass it, not held in memory and then failed on the wire.
#[test]
fn a_batch_whose_outputs_outgrow_a_reply_is_given_back() {
    runtime().block_on(async {
        let provider = provider(ProviderLimits::default(), Duration::from_secs(5)).await;
        let mut attacker = dial(&provider, 1).await.expect("dials");
        let limits = Limits::default()
            .output_bytes(9 << 20)
            .deadline(Duration::from_secs(5));
        let flood = batch::<golem_fixture::flood>(1, &[8 << 20; 12], limits);
        send(&mut attacker, Request::Run(flood)).await;
        let reply = reply(&mut attacker).await;
        assert!(is_retry(&reply, 1), "{reply:?}");
        assert_serves(&mut attacker, 2).await;
    });
}

/// Finding 2: a batch that asks more than every flavor holds is refused before any of its
/// blobs is asked for.
#[test]
fn a_batch_beyond_every_flavor_is_refused_before_its_blobs_are_fetched() {
    runtime().block_on(async {
        let provider = provider(ProviderLimits::default(), Duration::from_secs(1)).await;
        let mut attacker = dial(&provider, 1).await.expect("dials");
        let mut run = batch::<golem_fixture::double>(1, &[1], Limits::default());
        run.job.context = BlobId::of(b"a context the provider lacks");
        send(&mut attacker, Request::Run(run)).await;
        let reply = reply(&mut attacker).await;
        assert!(
            is_retry(&reply, 1),
            "a one-minute deadline is refused: {reply:?}"
        );
    });
}

/// A largest blob above the room for blobs being received would wait for room for ever: such
/// a provider does not start.
#[test]
fn a_provider_whose_largest_blob_exceeds_its_receive_room_does_not_start() {
    runtime().block_on(async {
        let sandbox = Arc::new(Sandbox::new(SandboxConfig::with_instances(2)).expect("engine"));
        let mut config = ProviderNodeConfig::local(&sandbox, 1);
        config.limits.max_blob_bytes = 2 << 20;
        config.limits.blob_receive_bytes = 1 << 20;
        let error = ProviderNode::start(&NodeKey::from_secret([0xA1; 32]), sandbox, config)
            .await
            .expect_err("refused");
        assert!(error.to_string().contains("largest blob"), "{error}");
    });
}
