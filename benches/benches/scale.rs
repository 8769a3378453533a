//! The scheduler at scale: the deterministic simulation (`golem_runtime::proto::sim`) with 10,
//! 100 and 1,000 providers (any sizes named on the command line), the same work for each, on a
//! clean network. Prints, for each size:
//!
//! * the requestor session's CPU time per subtask: every call into the scheduler, receipt
//!   checks included, and nothing of the simulated providers or network;
//! * the requestor's memory per connected provider (heap bytes it holds after they connect);
//! * the time to cut and send the first batches (the job's submission, which gives every
//!   provider its first batches).
//!
//! Run: `cargo bench -p golem-benches --bench scale` (`-- quick` for 10 and 100 providers, or
//! `-- 300 3000` for those sizes). 10,000 is not among the defaults while the session's timers
//! (`poll_timeout`, `handle_timeout`) and backups still scan every batch: the cost per subtask
//! grows with the providers connected.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use golem_runtime::proto::requestor::SchedulerConfig;
use golem_runtime::proto::sim::{Behavior, Network, Sim};

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

#[allow(unsafe_code)]
// SAFETY: every call is passed on to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller's contract for `realloc` is the system allocator's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Subtasks each provider gets.
const PER_PROVIDER: usize = 40;

fn main() {
    // Sizes named on the command line, or `quick` for the two smallest.
    let named: Vec<usize> = std::env::args()
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let quick = std::env::args().any(|arg| arg == "quick");
    let sizes: &[usize] = match (named.is_empty(), quick) {
        (false, _) => &named,
        (true, true) => &[10, 100],
        (true, false) => &[10, 100, 1_000],
    };
    println!(
        "| providers | subtasks | scheduler CPU per subtask | requestor memory per provider | \
         first batches cut and sent | virtual time | wall time |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &providers in sizes {
        let started = Instant::now();
        let network = Network {
            drop_percent: 0,
            max_delay_ms: 2,
        };
        let behaviors = vec![Behavior::Honest; providers];
        let mut sim = Sim::new(1, &behaviors, network, SchedulerConfig::default());
        let before = LIVE.load(Ordering::Relaxed);
        sim.connect_all();
        let per_provider = (LIVE.load(Ordering::Relaxed) - before) as f64 / providers as f64;
        let subtasks = providers * PER_PROVIDER;
        let inputs = (0..subtasks as u32)
            .map(|index| index.to_le_bytes().to_vec())
            .collect();
        let (result, _) = sim.run(inputs);
        let outputs = result.expect("the job finishes").outputs;
        assert_eq!(outputs.len(), subtasks, "every subtask has its output");
        let per_subtask = sim.scheduler_time().as_secs_f64() / subtasks as f64;
        println!(
            "| {providers} | {subtasks} | {:.1} µs | {:.0} bytes | {:.2} ms | {:.1} s | {:.1} s |",
            per_subtask * 1e6,
            per_provider,
            sim.submit_time().as_secs_f64() * 1e3,
            sim.virtual_time().as_secs_f64(),
            started.elapsed().as_secs_f64(),
        );
    }
}
