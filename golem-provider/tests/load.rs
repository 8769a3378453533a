//! A provider daemon under attack while it serves an honest job: attackers on the same machine
//! mount, all at once, junk datagrams, connections held open, batches beyond the flavor,
//! batches cancelled while they run, floods of batches that wait for blobs, replies never
//! read, blobs nobody asked for, blob streams that stall, blobs that fill the disk, and modules
//! that take long to compile. The honest job must come back correct; the daemon's memory and
//! disk stay within what its flags allow. Figures are printed: memory and disk at the start and
//! at the peak, and the honest job's time with and without attackers.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use golem::{Golem, Task};
use golem_examples::monte_carlo::count_hits;
use golem_runtime::adversarial::RawRequestor;
use golem_runtime::identity::NodeKey;
use golem_runtime::net::{NetConfig, RECEIVE_WINDOW};
use golem_runtime::node::Bootstrap;
use golem_runtime::proto::message::{Batch, BlobId, Input, Item, JobSpec, Reply, Request};
use golem_runtime::sandbox::Limits;

use crate::common::Daemon;

const MIB: u64 = 1 << 20;

/// The daemon's limits, as flags and as figures for the budget.
const BATCH_MEMORY: u64 = 64 * MIB;
const BLOB_RECEIVE: u64 = 64 * MIB;
const BLOB_MEMORY: u64 = 64 * MIB;
const BLOB_DISK: u64 = 32 * MIB;
const COMPILED_DISK: u64 = 64 * MIB;

/// How long the attackers keep at it, at most.
const ATTACK: Duration = Duration::from_secs(90);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Resident and peak resident memory of process `pid`, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Bytes of the files under `dir`.
fn disk(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => disk(&entry.path()),
            Ok(metadata) => metadata.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The honest job: 32 subtasks of 200,000 samples, seeded, and how long it took.
async fn honest(golem: &Golem) -> (Vec<u64>, Duration) {
    let started = Instant::now();
    let hits = golem
        .par_for(vec![200_000u64; 32], count_hits)
        .with(&())
        .seed(7)
        .await
        .expect("the honest job completes");
    (hits, started.elapsed())
}

/// A batch of `count_hits` over `inputs` (encoded), with `module` and `context`.
fn batch(id: u64, module: BlobId, context: BlobId, inputs: Vec<Vec<u8>>, limits: Limits) -> Batch {
    Batch {
        id,
        job: JobSpec {
            module,
            task: count_hits::NAME.into(),
            context,
            seed: [3; 32],
            nonce: [4; 16],
            limits,
        },
        items: inputs
            .into_iter()
            .enumerate()
            .map(|(index, input)| Item {
                index: index as u64,
                input: Input::Inline(input),
            })
            .collect(),
    }
}

fn samples(n: u64) -> Vec<u8> {
    postcard::to_allocvec(&n).expect("encodes")
}

/// A module with one long function, `salt` making each one different: it takes the compiler
/// a while.
fn compile_bomb(salt: u32) -> Vec<u8> {
    let adds = "(local.set 0 (i32.add (local.get 0) (i32.const 3)))".repeat(200_000);
    wat::parse_str(format!(
        r#"(module (memory (export "memory") 1)
            (func (export "golem_abi_version") (result i32) (i32.const 1))
            (func (export "golem_task_bomb") (local i32) (local.set 0 (i32.const {salt})) {adds}))"#
    ))
    .expect("valid module")
}

/// What the attackers share: where the daemon is, and when to stop.
#[derive(Clone)]
struct Target {
    node: golem_runtime::identity::NodeId,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    until: Instant,
    /// Requests the attackers got sent, for the figures.
    sent: Arc<AtomicU64>,
}

impl Target {
    fn going(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < self.until
    }

    async fn dial(&self, seed: u8, net: NetConfig) -> Option<RawRequestor> {
        let key = NodeKey::from_secret([seed; 32]);
        RawRequestor::dial(&key, &net, self.node, self.addr)
            .await
            .ok()
    }
}

/// Reads and drops every reply until the attack ends.
async fn drain(client: &mut RawRequestor, target: &Target) {
    while target.going() {
        match tokio::time::timeout(Duration::from_millis(200), client.reply()).await {
            Ok(Ok(Some(_))) | Err(_) => {}
            Ok(_) => return,
        }
    }
}

/// Finding 1 and 4: junk datagrams at the daemon's port, and connections held open.
async fn junk_and_idle(target: Target) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("socket");
    let mut idle = Vec::new();
    for seed in 0..20u8 {
        if let Some(client) = target.dial(0x80 + seed, NetConfig::loopback()).await {
            idle.push(client);
        }
    }
    let mut junk = [0u8; 1200];
    let mut sent = 0u64;
    while target.going() && sent < 200_000 {
        for byte in &mut junk[..8] {
            *byte = byte.wrapping_add(sent as u8 | 1);
        }
        let _ = socket.send_to(&junk, target.addr);
        sent += 1;
        target.sent.fetch_add(1, Ordering::Relaxed);
        if sent.is_multiple_of(100) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(idle);
}

/// Findings 2, 3 and 5: batches beyond the flavor, CPU-heavy batches cancelled while they run.
async fn cancel_and_overask(target: Target, module: BlobId) {
    let Some(mut client) = target.dial(0x90, NetConfig::loopback()).await else {
        return;
    };
    let context = BlobId::of(&[]);
    let limits = Limits::default().deadline(Duration::from_secs(2));
    let mut id = 0;
    while target.going() {
        id += 3;
        let heavy = batch(
            id,
            module,
            context,
            vec![samples(50_000_000); 8],
            limits.clone(),
        );
        let beyond = batch(
            id + 1,
            module,
            context,
            vec![samples(1)],
            limits.clone().deadline(Duration::from_secs(86_400)),
        );
        let sent = client.send(&Request::Run(heavy)).await.is_ok()
            && client.send(&Request::Run(beyond)).await.is_ok()
            && client.send(&Request::Cancel { batch: id }).await.is_ok();
        if !sent {
            return;
        }
        target.sent.fetch_add(3, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_millis(100), client.reply()).await;
    }
}

/// Finding 4: floods of batches of large inputs that wait for a context that never comes,
/// from a client that reads no reply and gives the provider a small window.
async fn flood(target: Target, seed: u8, module: BlobId, read: bool) {
    let net = NetConfig {
        stream_window: 64 << 10,
        ..NetConfig::loopback()
    };
    let Some(mut client) = target.dial(seed, net).await else {
        return;
    };
    let input = vec![0x5a; 60 << 10];
    let mut id = 0u64;
    while target.going() {
        id += 1;
        let mut context = [seed; 32];
        context[..8].copy_from_slice(&id.to_le_bytes());
        let run = batch(
            id,
            module,
            BlobId::of(&context),
            vec![input.clone(); 64],
            Limits::default(),
        );
        let run = Request::Run(run);
        match tokio::time::timeout(Duration::from_secs(5), client.send(&run)).await {
            Ok(Ok(())) => target.sent.fetch_add(1, Ordering::Relaxed),
            _ => return,
        };
        if read {
            let _ = tokio::time::timeout(Duration::from_millis(20), client.reply()).await;
        }
    }
}

/// Findings 6 and 8: contexts of 1 MiB sent whenever asked (filling the blob cache), blobs
/// nobody asked for, and blob streams that stall half-way.
async fn blobs(target: Target, module: BlobId) {
    let Some(mut client) = target.dial(0xA0, NetConfig::loopback()).await else {
        return;
    };
    let mut id = 0u64;
    let mut stalled = Vec::new();
    while target.going() {
        id += 1;
        let mut context = vec![0u8; MIB as usize];
        context[..8].copy_from_slice(&id.to_le_bytes());
        let context_id = BlobId::of(&context);
        let run = batch(id, module, context_id, vec![samples(10)], Limits::default());
        if client.send(&Request::Run(run)).await.is_err() {
            return;
        }
        target.sent.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(Duration::from_secs(5), client.reply()).await {
            Ok(Ok(Some(Reply::Need { .. }))) => {
                // Every third asked blob stalls after its first kilobyte; the others arrive.
                let stalls = id.is_multiple_of(3);
                let part = if stalls {
                    &context[..1024]
                } else {
                    &context[..]
                };
                let opened = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.blob_stream(context_id, MIB, part),
                );
                if let Ok(Ok(mut stream)) = opened.await {
                    if stalls {
                        stalled.push(stream);
                    } else {
                        let _ = stream.finish();
                    }
                }
            }
            Ok(Ok(Some(_))) | Err(_) => {}
            Ok(_) => return,
        }
        // And one nobody asked for.
        let mut junk = vec![1u8; 256 << 10];
        junk[..8].copy_from_slice(&id.to_le_bytes());
        let unasked = tokio::time::timeout(
            Duration::from_secs(2),
            client.blob_stream(BlobId::of(&junk), junk.len() as u64, &junk),
        );
        if let Ok(Ok(mut stream)) = unasked.await {
            let _ = stream.finish();
        }
        drain_some(&mut client).await;
    }
}

async fn drain_some(client: &mut RawRequestor) {
    while let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::from_millis(1), client.reply()).await
    {
    }
}

/// Finding 7: modules that take long to compile, sent when asked.
async fn bombs(target: Target) {
    let Some(mut client) = target.dial(0xB0, NetConfig::loopback()).await else {
        return;
    };
    let context = BlobId::of(&[]);
    for salt in 0..3u32 {
        if !target.going() {
            return;
        }
        let bomb = compile_bomb(salt);
        let module = BlobId::of(&bomb);
        for id in 0..4u64 {
            let run = batch(
                u64::from(salt) * 10 + id,
                module,
                context,
                vec![samples(1)],
                Limits::default(),
            );
            if client.send(&Request::Run(run)).await.is_err() {
                return;
            }
            target.sent.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(Ok(Some(Reply::Need { .. }))) =
            tokio::time::timeout(Duration::from_secs(5), client.reply()).await
            && let Ok(mut stream) = client.blob_stream(module, bomb.len() as u64, &bomb).await
        {
            let _ = stream.finish();
        }
    }
    drain(&mut client, &target).await;
}

#[test]
fn hostile_peers_all_at_once_do_not_stop_an_honest_job() {
    let megabytes = |bytes: u64| format!("{}M", bytes / MIB);
    let daemon = Daemon::start(
        "load",
        &[
            "--flavor",
            "std:concurrency=2,deadline=5m",
            "--max-connections-per-ip",
            "256",
            "--max-batch-memory",
            &megabytes(BATCH_MEMORY),
            "--blob-receive-memory",
            &megabytes(BLOB_RECEIVE),
            "--max-blob",
            "16M",
            "--blob-memory",
            &megabytes(BLOB_MEMORY),
            "--blob-disk",
            &megabytes(BLOB_DISK),
            "--compiled-disk",
            &megabytes(COMPILED_DISK),
            "--blob-wait",
            "5s",
            "--reply-timeout",
            "3s",
            "--compile-timeout",
            "1s",
        ],
    );
    let pid = daemon.child.id();
    let bootstrap: Bootstrap = daemon.address.parse().expect("the daemon's address");
    runtime().block_on(async {
        let golem = Golem::builder()
            .providers(0)
            .join(daemon.address.as_str())
            .build()
            .await
            .expect("the daemon is found");
        // The first run ships the module and compiles it; the figures compare the runs after.
        let (expected, _) = honest(&golem).await;
        let mut calm = Duration::ZERO;
        for _ in 0..3 {
            let (hits, took) = honest(&golem).await;
            assert_eq!(hits, expected, "the honest job's outputs without attackers");
            calm = calm.max(took);
        }
        let (start_memory, _) = memory(pid);
        let start_disk = disk(daemon.dir());

        let target = Target {
            node: bootstrap.node,
            addr: bootstrap.addr,
            stop: Arc::new(AtomicBool::new(false)),
            until: Instant::now() + ATTACK,
            sent: Arc::new(AtomicU64::new(0)),
        };
        let module: BlobId = count_hits::module().hash();
        let mut attackers = vec![
            tokio::spawn(junk_and_idle(target.clone())),
            tokio::spawn(cancel_and_overask(target.clone(), module)),
            tokio::spawn(blobs(target.clone(), module)),
            tokio::spawn(bombs(target.clone())),
        ];
        for seed in 0..6u8 {
            attackers.push(tokio::spawn(flood(
                target.clone(),
                0xC0 + seed,
                module,
                seed % 2 == 0,
            )));
        }
        // The peaks, sampled while the attack goes on.
        let peak_disk = Arc::new(AtomicU64::new(start_disk));
        let sampler = {
            let (peak_disk, target, dir) = (
                Arc::clone(&peak_disk),
                target.clone(),
                daemon.dir().to_owned(),
            );
            tokio::spawn(async move {
                while target.going() {
                    peak_disk.fetch_max(disk(&dir), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        // Under way for a while (the bombs are compiling, the cache is filling), then the
        // honest job three times over; the slowest counts.
        tokio::time::sleep(Duration::from_secs(8)).await;
        let mut attacked = Duration::ZERO;
        for _ in 0..3 {
            let (hits, took) = tokio::time::timeout(ATTACK, honest(&golem))
                .await
                .expect("the honest job completes under attack");
            assert_eq!(hits, expected, "the honest job's outputs under attack");
            attacked = attacked.max(took);
        }
        target.stop.store(true, Ordering::Relaxed);
        for attacker in attackers {
            let _ = attacker.await;
        }
        let _ = sampler.await;

        let (_, peak_memory) = memory(pid);
        let peak_disk = peak_disk.load(Ordering::Relaxed);
        // What the flags allow, besides what the daemon held at the start: batches, blobs in
        // flight and kept, the QUIC windows of the attackers' connections (30 of them), and
        // the compiler (one module at a time).
        let windows = 30 * u64::from(RECEIVE_WINDOW);
        let memory_budget =
            start_memory + BATCH_MEMORY + BLOB_RECEIVE + BLOB_MEMORY + windows + 256 * MIB;
        let disk_budget = start_disk + BLOB_DISK + COMPILED_DISK + 16 * MIB;
        println!(
            "attackers sent {} requests and datagrams",
            target.sent.load(Ordering::Relaxed)
        );
        println!(
            "daemon memory: {} MiB at the start, {} MiB at the peak (budget {} MiB)",
            start_memory / MIB,
            peak_memory / MIB,
            memory_budget / MIB
        );
        println!(
            "daemon disk: {} MiB at the start, {} MiB at the peak (budget {} MiB)",
            start_disk / MIB,
            peak_disk / MIB,
            disk_budget / MIB
        );
        println!(
            "honest job, the slowest of three: {calm:?} alone, {attacked:?} under attack ({:.1}x)",
            attacked.as_secs_f64() / calm.as_secs_f64()
        );
        assert!(peak_memory <= memory_budget, "memory past the budget");
        assert!(peak_disk <= disk_budget, "disk past the budget");
        // And it still serves, once the attackers are gone.
        let (again, _) = honest(&golem).await;
        assert_eq!(again, expected);
    });
}
