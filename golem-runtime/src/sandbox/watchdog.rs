//! The thread that ends calls at their deadline or when they are stopped, by setting the
//! interrupt byte their instance checks (see `meter`).

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::lock;
use super::meter::interrupt;

/// Watches the calls running now, every `tick` while there are any; asleep while there are
/// none.
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a call is watched while the thread is idle, and on shutdown.
    wake: Condvar,
}

#[derive(Default)]
struct State {
    watched: HashMap<u64, Watched>,
    next: u64,
    /// Whether the thread waits to be woken (a wake-up is a system call: calls made while it
    /// is awake, one after another, need none).
    idle: bool,
    shutdown: bool,
}

struct Watched {
    /// The first byte of the call's interrupt memory: why the call was interrupted, a value of
    /// [`interrupt`], once it was.
    word: Word,
    deadline: Option<Instant>,
    stop: Option<Arc<AtomicBool>>,
}

/// A pointer to an instance's interrupt byte.
#[derive(Clone, Copy)]
struct Word(NonNull<u8>);

// SAFETY: the byte is only read and written atomically, and only while the `Watch` that
// registered it is alive, which the instance that owns the memory outlives (see
// `Watchdog::watch`).
#[allow(unsafe_code)]
unsafe impl Send for Word {}

impl Word {
    fn byte(&self) -> &AtomicU8 {
        #[allow(unsafe_code)]
        // SAFETY: the byte is valid while it is watched (`Watchdog::watch`), and a `Word` is
        // used only then.
        unsafe {
            AtomicU8::from_ptr(self.0.as_ptr())
        }
    }
}

impl Watchdog {
    /// Starts the thread; `None` (with a warning) if it cannot be started, and deadlines are
    /// then not enforced.
    pub(crate) fn start(tick: Duration) -> Option<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("golem-watchdog".into())
                .spawn(move || run(&shared, tick))
        };
        match thread {
            Ok(thread) => Some(Self {
                shared,
                thread: Some(thread),
            }),
            Err(error) => {
                tracing::warn!(%error, "cannot start the watchdog thread: wall-time deadlines are not enforced");
                None
            }
        }
    }

    /// Watches the call whose interrupt byte is `word` until the returned [`Watch`] is
    /// dropped: past `deadline` the byte is set to [`interrupt::DEADLINE`], once `stop` is set
    /// to [`interrupt::STOPPED`].
    ///
    /// # Safety
    ///
    /// `word` must stay valid for writes until the `Watch` is dropped: it points into the
    /// memory of an instance whose store outlives the `Watch`.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn watch(
        &self,
        word: NonNull<u8>,
        deadline: Duration,
        stop: Option<Arc<AtomicBool>>,
    ) -> Watch<'_> {
        let word = Word(word);
        let watched = Watched {
            word,
            deadline: Instant::now().checked_add(deadline),
            stop,
        };
        let mut state = lock(&self.shared.state);
        let id = state.next;
        state.next += 1;
        state.watched.insert(id, watched);
        if state.idle {
            state.idle = false;
            self.shared.wake.notify_one();
        }
        Watch {
            watchdog: self,
            id,
            word,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One call watched; dropping it ends the watch (before its instance goes).
pub(crate) struct Watch<'w> {
    watchdog: &'w Watchdog,
    id: u64,
    word: Word,
}

impl Watch<'_> {
    /// Why the call was interrupted: [`interrupt::DEADLINE`], [`interrupt::STOPPED`], or 0
    /// when it was not.
    pub(crate) fn reason(&self) -> u8 {
        // The byte the guest read: a guest that trapped on it finds it set here too.
        self.word.byte().load(Ordering::Relaxed)
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        lock(&self.watchdog.shared.state).watched.remove(&self.id);
    }
}

/// Ticks with no call watched before the thread waits to be woken: calls that follow each
/// other closely find it awake, and wake no thread.
const IDLE_AFTER_TICKS: u32 = 64;

fn run(shared: &Shared, tick: Duration) {
    let mut state = lock(&shared.state);
    let mut empty_ticks = 0;
    loop {
        if state.shutdown {
            return;
        }
        empty_ticks = if state.watched.is_empty() {
            empty_ticks + 1
        } else {
            0
        };
        if empty_ticks > IDLE_AFTER_TICKS {
            empty_ticks = 0;
            state.idle = true;
            state = shared
                .wake
                .wait_while(state, |state| state.idle && !state.shutdown)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            continue;
        }
        drop(state);
        std::thread::sleep(tick);
        state = lock(&shared.state);
        let now = Instant::now();
        for watched in state.watched.values() {
            // The state's lock is held: no watch ends, and no instance goes, meanwhile.
            let byte = watched.word.byte();
            if byte.load(Ordering::Relaxed) != 0 {
                continue;
            }
            let reason = if watched
                .stop
                .as_ref()
                .is_some_and(|stop| stop.load(Ordering::Relaxed))
            {
                interrupt::STOPPED
            } else if watched.deadline.is_some_and(|deadline| now >= deadline) {
                interrupt::DEADLINE
            } else {
                continue;
            };
            byte.store(reason, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_the_byte_at_the_deadline_and_on_a_stop() {
        let watchdog = Watchdog::start(Duration::from_millis(1)).unwrap();
        let mut late = Box::new(0u8);
        let mut stopped = Box::new(0u8);
        let mut running = Box::new(0u8);
        let stop = Arc::new(AtomicBool::new(false));
        #[allow(unsafe_code)]
        // SAFETY: the boxes outlive the watches, dropped at the end of the block.
        let (late_watch, stopped_watch, running_watch) = unsafe {
            (
                watchdog.watch(NonNull::from(&mut *late), Duration::from_millis(20), None),
                watchdog.watch(
                    NonNull::from(&mut *stopped),
                    Duration::from_secs(60),
                    Some(Arc::clone(&stop)),
                ),
                watchdog.watch(NonNull::from(&mut *running), Duration::from_secs(60), None),
            )
        };
        stop.store(true, Ordering::Relaxed);
        let start = Instant::now();
        while (late_watch.reason() == 0 || stopped_watch.reason() == 0)
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(late_watch.reason(), interrupt::DEADLINE);
        assert_eq!(stopped_watch.reason(), interrupt::STOPPED);
        assert_eq!(running_watch.reason(), 0);
        drop((late_watch, stopped_watch, running_watch));
        assert_eq!(
            (*late, *stopped, *running),
            (interrupt::DEADLINE, interrupt::STOPPED, 0)
        );
    }

    #[test]
    fn a_dropped_watch_is_never_written() {
        let watchdog = Watchdog::start(Duration::from_millis(1)).unwrap();
        let mut word = Box::new(0u8);
        #[allow(unsafe_code)]
        // SAFETY: the box outlives the watch, dropped at once.
        drop(unsafe { watchdog.watch(NonNull::from(&mut *word), Duration::ZERO, None) });
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(*word, 0);
        assert!(lock(&watchdog.shared.state).watched.is_empty());
    }
}
