//! Thread count resolution and one cached team of helper threads per distinct count.
//!
//! A call runs on `threads` threads, from (in order) its `threads` argument, the environment variable
//! `APB_NUM_THREADS`, else every core (`std::thread::available_parallelism`). Kernels hand their tasks
//! to [`run_claimed`]: the calling thread works on them itself, joined by the `threads − 1` helpers of
//! a [`Team`] of exactly that size, started on first use and kept, so the count is honoured exactly
//! and repeated calls pay no start-up cost.
//!
//! After a job a helper stays awake for [`LINGER`], spinning, before it sleeps: waking a sleeping
//! thread takes 10–20 µs in a VM, as long as a whole small GEMM, and calls come back to back (a
//! network's layers, a training step's kernels), so the next call usually finds its helpers running.
//! An idle process sleeps after [`LINGER`]. When one does sleep, a [`run_claimed`] call does not wait
//! for it: if the caller has claimed all the work before a helper joins, that helper skips the job.

use std::cell::{Cell, UnsafeCell};
use std::collections::HashMap;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Name of the environment variable that sets the thread count when the call does not.
pub(crate) const ENV_VAR: &str = "APB_NUM_THREADS";

/// Largest accepted thread count (a guard against typos that would spawn thousands of threads).
pub(crate) const MAX_THREADS: usize = 1024;

/// Every core this process may use (1 if that cannot be determined).
pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn check(n: i64, what: &str) -> Result<usize, String> {
    if n < 1 || n > MAX_THREADS as i64 {
        return Err(format!(
            "{what} must be an integer in [1, {MAX_THREADS}]; got {n}"
        ));
    }
    Ok(n as usize)
}

/// The thread count for one call: the argument, else `APB_NUM_THREADS`, else [`default_threads`].
///
/// `arg_name` names the argument in error messages (e.g. "bgemm_1x1: threads").
pub fn resolve(requested: Option<i64>, arg_name: &str) -> Result<usize, String> {
    if let Some(n) = requested {
        return check(n, arg_name);
    }
    let what = format!("environment variable {ENV_VAR}");
    match std::env::var(ENV_VAR) {
        Ok(v) if !v.trim().is_empty() => {
            let n = v
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("{what} must be an integer in [1, {MAX_THREADS}]; got {v:?}"))?;
            check(n, &what)
        }
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(default_threads()),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{what} is not valid unicode")),
    }
}

/// How long a helper keeps spinning for the next job before it sleeps.
pub(crate) const LINGER: Duration = Duration::from_micros(300);

/// A job for a team: called with 0 on the calling thread and 1..=n on the n helpers.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// The [`Team::state`] word: the job's epoch above bit 32, [`CLOSED`] at bit 32, the number of
/// helpers that joined it below. The epoch's 31 bits wrap after 2³¹ jobs; only equality is compared,
/// and a false match would need a helper stalled across all of them.
const EPOCH_ONE: u64 = 1 << 33;
/// Set by the caller of a job that does not need every helper, once its own part is done: helpers
/// that have not joined by then skip the job.
const CLOSED: u64 = 1 << 32;
const JOINED: u64 = CLOSED - 1;

/// The epoch part of a [`Team::state`] word.
const fn epoch_of(state: u64) -> u64 {
    state & !(CLOSED | JOINED)
}

/// `n` helper threads that run one job at a time with a calling thread.
pub(crate) struct Team {
    n: usize,
    /// The process that started the helpers: a forked child has none of them and starts its own.
    pid: u32,
    /// The current job's epoch (bumped once per job; a helper looks at each new one once), whether
    /// it is closed, and how many helpers joined it: one word, so that a helper joins exactly the
    /// job it saw published, and never one that was closed.
    state: AtomicU64,
    /// The current job, its lifetime erased: valid while [`Team::run`] waits for the helpers.
    job: UnsafeCell<Option<Job<'static>>>,
    /// Helpers done with the current job.
    done: AtomicUsize,
    panicked: AtomicBool,
    /// Per helper: asleep (or about to be), so a new job must wake it.
    parked: Vec<AtomicBool>,
    threads: OnceLock<Vec<Thread>>,
    /// One job at a time.
    busy: Mutex<()>,
}

// SAFETY: `job` is written only by the thread holding `busy`, before the epoch bump that publishes it
// (SeqCst), and read by a helper only after it joined that epoch (a CAS on `state` that fails once
// the job is closed or replaced), until it reports done; the writer waits for the done of every
// helper that joined before it returns (and before the next write).
unsafe impl Sync for Team {}

thread_local! {
    /// Whether this thread is running a team's job (a nested call then runs on this thread alone).
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

impl Team {
    /// Run `job(0)` here and `job(1..=n)` on the helpers; return when all are done. With `all`
    /// false (the job's parts are claims on shared work that any thread may finish), helpers that
    /// have not joined by the time `job(0)` returns skip it: a sleeping helper's wake-up (tens to
    /// hundreds of microseconds in a VM) then never holds up a call the caller finished alone.
    pub(crate) fn run(&self, job: Job, all: bool) -> Result<(), String> {
        let _one = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY (lifetime erasure): a helper calls the job only after joining its epoch and before
        // its `done` increment, and this function waits for the done of every helper that joined.
        let erased: Job<'static> = unsafe { std::mem::transmute::<Job, Job<'static>>(job) };
        // SAFETY: only the `busy` holder writes `job`; no helper reads it before joining the new
        // epoch published below.
        unsafe { *self.job.get() = Some(erased) };
        self.done.store(0, Ordering::SeqCst);
        self.panicked.store(false, Ordering::SeqCst);
        let epoch = epoch_of(self.state.load(Ordering::SeqCst)).wrapping_add(EPOCH_ONE);
        self.state.store(epoch, Ordering::SeqCst);
        let threads = self.threads.get().map_or(&[][..], Vec::as_slice);
        for (parked, thread) in self.parked.iter().zip(threads) {
            if parked.load(Ordering::SeqCst) {
                thread.unpark();
            }
        }
        let mine = catch_unwind(AssertUnwindSafe(|| in_job(|| job(0))));
        let joined = if all {
            self.n
        } else {
            (self.state.fetch_or(CLOSED, Ordering::SeqCst) & JOINED) as usize
        };
        let mut spins = 0u32;
        while self.done.load(Ordering::Acquire) < joined {
            spins = spins.saturating_add(1);
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now(); // a helper was descheduled: let it run
            }
        }
        // SAFETY: every helper that joined is done with the job, and no other can join it any more
        // (closed, or all joined); drop the erased reference before returning.
        unsafe { *self.job.get() = None };
        if mine.is_err() || self.panicked.load(Ordering::SeqCst) {
            return Err("internal error: a worker thread panicked".into());
        }
        Ok(())
    }

    /// Helper `h`'s loop: wait for a new epoch (spinning for [`LINGER`], then asleep), join its job
    /// unless it is closed, run it.
    fn serve(&self, h: usize) {
        let mut seen = 0;
        loop {
            let idle = Instant::now();
            let mut spins = 0u32;
            while epoch_of(self.state.load(Ordering::SeqCst)) == seen {
                // the clock is read every 64 spins: a read costs more than a spin on some VMs
                spins = spins.wrapping_add(1);
                if !spins.is_multiple_of(64) || idle.elapsed() < LINGER {
                    std::hint::spin_loop();
                    continue;
                }
                self.parked[h].store(true, Ordering::SeqCst);
                // A job published after the store above sees `parked` and unparks this thread; one
                // published before it is seen here. Either way no wake-up is lost.
                if epoch_of(self.state.load(Ordering::SeqCst)) == seen {
                    std::thread::park();
                }
                self.parked[h].store(false, Ordering::SeqCst);
            }
            // Join the epoch now current, unless its caller closed it (then skip it).
            let mut s = self.state.load(Ordering::SeqCst);
            let joined = loop {
                seen = epoch_of(s);
                if s & CLOSED != 0 {
                    break false;
                }
                match self
                    .state
                    .compare_exchange(s, s + 1, Ordering::SeqCst, Ordering::SeqCst)
                {
                    Ok(_) => break true,
                    Err(now) => s = now,
                }
            };
            if !joined {
                continue;
            }
            // SAFETY: joining the epoch (the CAS above) means its job is published and its caller
            // waits for this helper's `done` before the job goes away.
            let job = unsafe { *self.job.get() };
            if let Some(job) = job {
                if catch_unwind(AssertUnwindSafe(|| in_job(|| job(h + 1)))).is_err() {
                    self.panicked.store(true, Ordering::SeqCst);
                }
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// Run `f` marked as inside a team's job.
fn in_job<R>(f: impl FnOnce() -> R) -> R {
    /// Clears the mark however `f` ends (a panic too: the thread may run other calls after it).
    struct Unmark(bool);
    impl Drop for Unmark {
        fn drop(&mut self) {
            IN_JOB.with(|flag| flag.set(self.0));
        }
    }
    let _unmark = Unmark(IN_JOB.with(|flag| flag.replace(true)));
    f()
}

/// The team with exactly `n` helpers (started once, then shared): the helpers of a call on `n + 1`.
pub(crate) fn team(n: usize) -> Result<Arc<Team>, String> {
    static TEAMS: OnceLock<Mutex<HashMap<usize, Arc<Team>>>> = OnceLock::new();
    let teams = TEAMS.get_or_init(|| Mutex::new(HashMap::new()));
    // A panic while holding the lock cannot leave the map inconsistent (insert is the only write),
    // so a poisoned lock is still usable.
    let mut map = teams.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if let Some(t) = map.get(&n).filter(|t| t.pid == pid) {
        return Ok(Arc::clone(t));
    }
    let team = Arc::new(Team {
        n,
        pid,
        state: AtomicU64::new(0),
        job: UnsafeCell::new(None),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
        parked: (0..n).map(|_| AtomicBool::new(false)).collect(),
        threads: OnceLock::new(),
        busy: Mutex::new(()),
    });
    let mut threads = Vec::with_capacity(n);
    for h in 0..n {
        let t = Arc::clone(&team);
        let handle = std::thread::Builder::new()
            .name(format!("apb-kernels-{n}-{h}"))
            .spawn(move || t.serve(h))
            .map_err(|e| format!("could not start a team of {n} threads: {e}"))?;
        threads.push(handle.thread().clone());
    }
    let _ = team.threads.set(threads);
    map.insert(n, Arc::clone(&team));
    Ok(team)
}

/// Run `job(t)` for t in 0..n: 0 on the calling thread, the rest on the team of n − 1 helpers. Inside
/// another team's job there are no helpers to give: `Err` (its team may be this one, busy).
pub(crate) fn with_helpers(n: usize, job: Job) -> Result<(), String> {
    if n <= 1 {
        job(0);
        return Ok(());
    }
    if nested() {
        return Err("a parallel job may not start another on several threads".into());
    }
    team(n - 1)?.run(job, true)
}

/// Whether this thread is running a team's job.
pub(crate) fn nested() -> bool {
    IN_JOB.with(Cell::get)
}

/// Run `f` on every item with `n` threads: the calling thread and `n - 1` helpers (the team of
/// `n - 1`) each take the items of their own contiguous share in order, then what is left of the
/// others' from their backs ([`Claims`]). Returns whether every call returned true.
///
/// The calling thread starts at once instead of sleeping while helpers wake up (tens of
/// microseconds in a VM, as long as a whole paper-shape GEMM), and a helper that wakes late finds
/// less (or nothing) left to do, so extra threads never cost much more than their wake-up. Runs
/// everything on the calling thread when `n <= 1` or there is one item.
pub(crate) fn run_claimed<T: Send>(
    n: usize,
    items: Vec<T>,
    f: impl Fn(T) -> bool + Sync,
) -> Result<bool, String> {
    run_claimed_with(n, items, || (), |_, item| f(item))
}

/// [`run_claimed`] where each worker owns a state made by `init` (a scratch buffer, say) that it
/// passes to every call of `f` it makes.
pub(crate) fn run_claimed_with<T: Send, S>(
    n: usize,
    items: Vec<T>,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, T) -> bool + Sync,
) -> Result<bool, String> {
    let serial = |items: Vec<T>| {
        let mut state = init();
        items.into_iter().fold(true, |ok, it| f(&mut state, it) & ok)
    };
    if n <= 1 || items.len() <= 1 || nested() {
        return Ok(serial(items));
    }
    let queue = match Claims::new(items, n) {
        Ok(queue) => queue,
        Err(items) => return Ok(serial(items)), // more than 2^32 items: never in this crate
    };
    let all_ok = AtomicBool::new(true);
    let work = |t: usize| {
        let mut state = init();
        while let Some(item) = queue.claim(t) {
            if !f(&mut state, item) {
                all_ok.store(false, Ordering::Relaxed);
            }
        }
    };
    // Claims: a helper that joins late finds its share taken by the others, so one that is still
    // waking up when the caller has emptied every share is not waited for (`run` with `all` false).
    team(n - 1)?.run(&work, false)?;
    // Every helper that joined is done (`Team::run` waited), so every store is visible here.
    Ok(all_ok.load(Ordering::Relaxed))
}

/// Share `t` of `n` of `0..items`: contiguous, in order, sizes differing by at most one.
pub(crate) fn share(items: usize, t: usize, n: usize) -> Range<usize> {
    (items * t / n)..(items * (t + 1) / n)
}

/// Items shared out as one contiguous range per thread: a thread takes its own from the front, and
/// when they are gone, the others' from their backs. Neighbouring items (which may write
/// neighbouring memory) then mostly run on the same thread, and a claim is one compare-and-swap on a
/// word that, until the ranges run dry, only its owner touches: no cache line moves between cores
/// per item (with one word for all threads, two threads claiming in turn moved it on every claim).
struct Claims<T> {
    items: Vec<UnsafeCell<Option<T>>>,
    ranges: Vec<Ends>,
}

/// A range of items: its next front index (low 32 bits) and one past its next back index (high 32
/// bits), alone on its cache lines (128 bytes: the pair of lines the prefetcher fetches together).
#[repr(align(128))]
struct Ends(AtomicU64);

impl Ends {
    fn new(front: u64, back: u64) -> Ends {
        Ends(AtomicU64::new(back << 32 | front))
    }

    /// The index taken from the front (or the back), or None when the range is empty.
    fn take(&self, front: bool) -> Option<usize> {
        let mut ends = self.0.load(Ordering::Acquire);
        loop {
            let (f, b) = (ends & u64::from(u32::MAX), ends >> 32);
            if f >= b {
                return None;
            }
            let (next, index) = if front {
                (ends + 1, f)
            } else {
                (ends - (1 << 32), b - 1)
            };
            match self
                .0
                .compare_exchange_weak(ends, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(index as usize),
                Err(now) => ends = now,
            }
        }
    }
}

// SAFETY: an item is taken only by the thread whose CAS moved an end of its range past its index,
// exactly once (the ranges are disjoint).
unsafe impl<T: Send> Sync for Claims<T> {}

impl<T> Claims<T> {
    /// The items in `threads` ranges, or all of them back if there are more than the 32-bit ends can
    /// count.
    fn new(items: Vec<T>, threads: usize) -> Result<Self, Vec<T>> {
        let Ok(len) = u32::try_from(items.len()) else {
            return Err(items);
        };
        let threads = threads.max(1);
        let ranges = (0..threads)
            .map(|t| share(len as usize, t, threads))
            .map(|r| Ends::new(r.start as u64, r.end as u64))
            .collect();
        Ok(Claims {
            items: items.into_iter().map(|t| UnsafeCell::new(Some(t))).collect(),
            ranges,
        })
    }

    /// Thread `t`'s next item: from the front of its own range, else from the back of the first of
    /// the next ranges in turn (t + 1, t + 2, … around) that has one; None when all are empty (ranges
    /// only shrink, so none will refill).
    fn claim(&self, t: usize) -> Option<T> {
        let n = self.ranges.len();
        let index = (0..n).find_map(|k| self.ranges[(t + k) % n].take(k == 0))?;
        // SAFETY: the CAS in `take` moved an end past `index`, which no other claim can return now.
        unsafe { (*self.items[index].get()).take() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_counts_are_checked() {
        assert_eq!(resolve(Some(3), "t"), Ok(3));
        assert!(resolve(Some(0), "f: threads")
            .unwrap_err()
            .starts_with("f: threads must be"));
        assert!(resolve(Some(-2), "t").is_err());
        assert!(resolve(Some(MAX_THREADS as i64 + 1), "t").is_err());
    }

    #[test]
    fn teams_honour_the_count_and_are_cached() {
        let t = team(3).unwrap();
        assert_eq!(t.threads.get().unwrap().len(), 3);
        assert!(Arc::ptr_eq(&t, &team(3).unwrap()));
        // every thread index runs once per job, on as many distinct threads, job after job, and after
        // the helpers have gone to sleep
        for round in 0..3 {
            let seen: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
            let ids = Mutex::new(std::collections::HashSet::new());
            with_helpers(4, &|t| {
                seen[t].fetch_add(1, Ordering::Relaxed);
                ids.lock().unwrap().insert(std::thread::current().id());
            })
            .unwrap();
            assert!(
                seen.iter().all(|s| s.load(Ordering::Relaxed) == 1),
                "round {round}"
            );
            assert_eq!(ids.lock().unwrap().len(), 4);
            if round == 1 {
                std::thread::sleep(LINGER * 3);
            }
        }
    }

    #[test]
    fn a_panicking_job_is_an_error_not_a_hang() {
        let r = with_helpers(3, &|t| {
            if t == 2 {
                panic!("boom");
            }
        });
        assert!(r.unwrap_err().contains("panicked"));
        assert!(with_helpers(3, &|_| ()).is_ok()); // and the team still works
                                                   // the calling thread's own part panicking: an error too, and the thread is not left marked
                                                   // as inside a job (its later calls would run alone, or be refused)
        assert!(with_helpers(3, &|t| assert!(t != 0, "boom")).is_err());
        assert!(!nested());
        assert!(with_helpers(3, &|_| ()).is_ok());
    }

    #[test]
    fn nested_calls_run_on_the_calling_thread() {
        let hits = AtomicUsize::new(0);
        with_helpers(2, &|_| {
            let ok = run_claimed(2, (0..5).collect(), |_: usize| {
                hits.fetch_add(1, Ordering::Relaxed);
                true
            });
            assert_eq!(ok, Ok(true));
        })
        .unwrap();
        assert_eq!(hits.load(Ordering::Relaxed), 10);
    }

    /// Claimed jobs may leave late helpers out; jobs for every thread may not. Mixed back to back,
    /// with pauses that let the helpers fall asleep mid-sequence, each keeps its guarantee.
    #[test]
    fn claimed_and_all_thread_jobs_interleave() {
        for round in 0..300 {
            let seen: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            with_helpers(3, &|t| {
                seen[t].fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
            assert!(
                seen.iter().all(|s| s.load(Ordering::Relaxed) == 1),
                "round {round}"
            );
            let hits: Vec<AtomicUsize> = (0..7).map(|_| AtomicUsize::new(0)).collect();
            let ok = run_claimed(3, (0..7).collect(), |i: usize| {
                hits[i].fetch_add(1, Ordering::Relaxed);
                true
            });
            assert_eq!(ok, Ok(true));
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "round {round}"
            );
            if round % 50 == 7 {
                std::thread::sleep(LINGER * 2);
            }
        }
    }

    #[test]
    fn shares_cover_the_items_once_in_order() {
        for chunks in [0, 1, 2, 3, 16, 17] {
            for n in 1..=5 {
                let parts: Vec<Range<usize>> = (0..n).map(|t| share(chunks, t, n)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[n - 1].end, chunks);
                assert!(parts.windows(2).all(|p| p[0].end == p[1].start), "{chunks} {n}");
                assert!(parts.iter().all(|p| p.len() <= chunks.div_ceil(n)));
            }
        }
    }

    #[test]
    fn a_thread_takes_its_share_in_order_then_the_others_from_their_backs() {
        let claims = Claims::new((0..10).collect::<Vec<usize>>(), 3).unwrap();
        // shares: 0..3, 3..6, 6..10
        assert_eq!(claims.claim(1), Some(3));
        let alone: Vec<usize> = std::iter::from_fn(|| claims.claim(1)).collect();
        assert_eq!(alone, [4, 5, 9, 8, 7, 6, 2, 1, 0]);
        assert_eq!(claims.claim(0), None);
    }

    #[test]
    fn run_claimed_runs_every_item_once() {
        use std::sync::atomic::AtomicUsize;
        for n in [1, 2, 3, 8] {
            for items in [0usize, 1, 2, 5, 100] {
                let hits: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
                let ok = run_claimed(n, (0..items).collect(), |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                    i != 3
                })
                .unwrap();
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "n = {n}, items = {items}"
                );
                assert_eq!(ok, items <= 3, "n = {n}, items = {items}");
            }
        }
    }
}
