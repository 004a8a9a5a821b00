//! Thread count resolution and one cached rayon pool of helpers per distinct count.
//!
//! A call runs on `threads` threads, from (in order) its `threads` argument, the environment variable
//! `APB_NUM_THREADS`, else every core (`std::thread::available_parallelism`). Kernels hand their tasks
//! to [`run_claimed`]: the calling thread works on them itself, joined by `threads − 1` helpers from
//! a local `rayon::ThreadPool` of exactly that size, built on first use and kept, so the count is
//! honoured exactly (the global pool would ignore it) and repeated calls pay no start-up cost.
//!
//! The pool has `threads − 1` threads, not `threads`: with the calling thread that makes exactly
//! `threads` threads working, and no extra pool thread left idle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

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

/// The pool with exactly `n` threads (built once, then shared): the helpers of a call on `n + 1`.
pub(crate) fn pool(n: usize) -> Result<Arc<ThreadPool>, String> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<ThreadPool>>>> = OnceLock::new();
    let pools = POOLS.get_or_init(|| Mutex::new(HashMap::new()));
    // A panic while holding the lock cannot leave the map inconsistent (insert is the only write),
    // so a poisoned lock is still usable.
    let mut map = pools.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = map.get(&n) {
        return Ok(Arc::clone(p));
    }
    let built = ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(move |i| format!("apb-kernels-{n}-{i}"))
        .build()
        .map_err(|e| format!("could not start a pool of {n} threads: {e}"))?;
    let p = Arc::new(built);
    map.insert(n, Arc::clone(&p));
    Ok(p)
}

/// Run `f` on every item with `n` threads: the calling thread and `n - 1` helpers (the pool of
/// `n - 1`) take items from one shared queue until it is empty, the caller from the front and the
/// helpers from the back. Returns whether every call returned true.
///
/// The calling thread starts at once instead of sleeping while pool threads wake up (tens of
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
    if n <= 1 || items.len() <= 1 {
        let mut state = init();
        return Ok(items.into_iter().fold(true, |ok, it| f(&mut state, it) & ok));
    }
    let helpers = (n - 1).min(items.len() - 1);
    let queue = Mutex::new(items.into_iter());
    let all_ok = AtomicBool::new(true);
    // The calling thread takes items from the front, helpers from the back: neighbouring items
    // (which may write neighbouring memory) then mostly run on the same thread.
    let work = |from_front: bool| {
        let mut state = init();
        loop {
            // Only `next`/`next_back` run under the lock, and they cannot panic, so the lock is never
            // poisoned (and a poisoned one would still hold a consistent iterator).
            let next = {
                let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                if from_front {
                    q.next()
                } else {
                    q.next_back()
                }
            };
            match next {
                Some(item) => {
                    if !f(&mut state, item) {
                        all_ok.store(false, Ordering::Relaxed);
                    }
                }
                None => break,
            }
        }
    };
    pool(n - 1)?.in_place_scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| work(false));
        }
        work(true);
    });
    // The scope has joined every helper, so every store is visible here.
    Ok(all_ok.load(Ordering::Relaxed))
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
    fn pools_honour_the_count_and_are_cached() {
        let p = pool(3).unwrap();
        assert_eq!(p.current_num_threads(), 3);
        assert!(Arc::ptr_eq(&p, &pool(3).unwrap()));
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
