//! A small crew of worker threads for the per-file work of a tree move.
//!
//! A tree move spends its time in per-file system calls, which other cores
//! can make at the same time. [`crew`] runs a body with a [`Crew`] that
//! takes jobs (a batch of files each, so that handing work over costs a
//! few futex calls per batch, not per file), each under a key (the
//! directory its files are in), and gives back their results by key at
//! [`Crew::collect`] or all at once at [`Crew::drain`]: the barrier before
//! anything that depends on them (a directory's metadata after its
//! children). The jobs of several directories may wait at once; a worker
//! takes a job of a directory no other thread is working in where there is
//! one, since creating or removing entries in one directory serialises on
//! its lock.
//!
//! The guarantees the rest of the engine relies on:
//! - **No thread is left behind**: the crew lives inside
//!   [`std::thread::scope`]; every worker is joined before [`crew`] returns,
//!   whether the body returned an error, panicked, or succeeded. A worker
//!   ends when the crew is closed and the queue is empty.
//! - **Workers are spawned lazily**, only when enough jobs are waiting
//!   ([`SPAWN_AT`]): a small tree never pays for a thread. A thread that
//!   cannot be made (`RLIMIT_NPROC`, a seccomp filter, no memory) is not an
//!   error: the calling thread runs the jobs itself.
//! - The calling thread **helps**: while it waits at [`Crew::collect`] or
//!   [`Crew::drain`] it runs
//!   queued jobs itself, and a job that does not fit in the bounded queue
//!   ([`QUEUE`]) runs at once on the caller, so memory stays bounded.
//! - **Signals** go to the program's own threads: workers start with every
//!   signal but SIGSYS blocked (a seccomp trap must still reach the
//!   program's handler), so no handler of the program ever runs on them
//!   and their calls are never interrupted.
//! - A job that panics is reported as a panic result; the others go on.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Jobs waiting before the first worker is spawned; each further worker
/// when more jobs wait than there are workers.
pub const SPAWN_AT: usize = 4;

/// Most jobs waiting in the queue; the caller runs the next one itself.
pub const QUEUE: usize = 64;

/// Stack of a worker: the per-file work needs little, and a worker's
/// stack counts in the program's memory.
const STACK: usize = 256 << 10;

/// The result of one job: its value, or the panic it raised.
pub type Outcome<R> = std::thread::Result<R>;

struct State<J, R> {
    queue: VecDeque<(u64, J)>,
    /// Results, by the key of their job.
    done: HashMap<u64, Vec<Outcome<R>>>,
    /// Jobs of each key queued or running.
    open: HashMap<u64, usize>,
    /// Keys of the running jobs.
    busy: Vec<u64>,
    closed: bool,
    /// Workers waiting for a job: only then is one woken (a futex call).
    sleeping: usize,
    /// Whether the caller waits for the last job.
    draining: bool,
}

struct Shared<J, R> {
    state: Mutex<State<J, R>>,
    /// Workers wait here for jobs (or for the crew to close).
    work: Condvar,
    /// The caller waits here for the last running job.
    idle: Condvar,
}

impl<J, R> Shared<J, R> {
    fn lock(&self) -> MutexGuard<'_, State<J, R>> {
        // A panic is caught around every job, never while the lock is held.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<J, R> State<J, R> {
    /// The next job to run, marked running: of `want` if given and queued,
    /// else the first of a key no thread is running, else the first.
    fn take(&mut self, want: Option<u64>) -> Option<(u64, J)> {
        let wanted = want.and_then(|k| self.queue.iter().position(|(key, _)| *key == k));
        let at = wanted.or_else(|| self.queue.iter().position(|(key, _)| !self.busy.contains(key))).unwrap_or(0);
        let job = self.queue.remove(at)?;
        self.busy.push(job.0);
        Some(job)
    }

    /// Records the result of a job of `key` that ran.
    fn finish(&mut self, key: u64, r: Outcome<R>) {
        if let Some(i) = self.busy.iter().position(|k| *k == key) {
            self.busy.swap_remove(i);
        }
        self.ended(key, r);
    }

    /// Records the result of a job of `key` that is no longer open.
    fn ended(&mut self, key: u64, r: Outcome<R>) {
        if let Some(n) = self.open.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(&key);
            }
        }
        self.done.entry(key).or_default().push(r);
    }
}

/// Jobs handed to up to `threads` workers running `work`, for the length of
/// one call of [`crew`].
pub struct Crew<'scope, 'env, J, R> {
    scope: &'scope std::thread::Scope<'scope, 'env>,
    shared: &'env Shared<J, R>,
    work: &'env (dyn Fn(J) -> R + Sync),
    /// Workers still to spawn, at most.
    spare: usize,
    spawned: usize,
}

/// Runs `body` with a crew of at most `threads` workers, each running
/// `work` on the jobs given to it; every worker has ended when this
/// returns. With `threads` 0, every job runs on the calling thread.
pub fn crew<J: Send, R: Send, T>(
    threads: usize,
    work: &(dyn Fn(J) -> R + Sync),
    body: impl FnOnce(&mut Crew<'_, '_, J, R>) -> T,
) -> T {
    let shared = Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            done: HashMap::new(),
            open: HashMap::new(),
            busy: Vec::new(),
            closed: false,
            sleeping: 0,
            draining: false,
        }),
        work: Condvar::new(),
        idle: Condvar::new(),
    };
    std::thread::scope(|scope| {
        let mut crew = Crew { scope, shared: &shared, work, spare: threads, spawned: 0 };
        // Closed however the body ends (a panic included), so that the
        // scope's join finds every worker leaving.
        struct Close<'a, J, R>(&'a Shared<J, R>);
        impl<J, R> Drop for Close<'_, J, R> {
            fn drop(&mut self) {
                let mut st = self.0.lock();
                st.closed = true;
                st.queue.clear();
                drop(st);
                self.0.work.notify_all();
            }
        }
        let _close = Close(&shared);
        body(&mut crew)
    })
}

impl<J: Send, R: Send> Crew<'_, '_, J, R> {
    /// How many workers may run: those running and those still to spawn.
    pub fn threads(&self) -> usize {
        self.spawned + self.spare
    }

    /// How many workers run now.
    pub fn workers(&self) -> usize {
        self.spawned
    }

    /// Hands over a job under `key`: queued for a worker, or run at once
    /// on the calling thread when the queue is full.
    pub fn submit(&mut self, key: u64, job: J) {
        let mut st = self.shared.lock();
        *st.open.entry(key).or_insert(0) += 1;
        if st.queue.len() >= QUEUE {
            drop(st);
            let r = run(self.work, job);
            self.shared.lock().ended(key, r);
            return;
        }
        st.queue.push_back((key, job));
        let waiting = st.queue.len();
        let wake = st.sleeping > 0;
        drop(st);
        if self.spare > 0 && waiting >= SPAWN_AT && waiting > self.spawned {
            self.spawn();
        }
        if wake {
            self.shared.work.notify_one();
        }
    }

    /// Cuts the files of one directory into the batches to hand over: about
    /// four a thread (the caller's included), each of 8 to 32 files, so
    /// that threads finishing early find more, while a hand-over stays a
    /// few futex calls for many files.
    pub fn batches<T>(&self, items: Vec<T>) -> Vec<Vec<T>> {
        let per = items.len().div_ceil(4 * (self.threads() + 1)).clamp(8, 32);
        let mut items = items.into_iter().peekable();
        let mut out = Vec::new();
        while items.peek().is_some() {
            out.push(items.by_ref().take(per).collect());
        }
        out
    }

    /// Whether every job handed over under `key` has ended.
    pub fn is_done(&self, key: u64) -> bool {
        !self.shared.lock().open.contains_key(&key)
    }

    /// Waits until every job handed over under `key` has ended, running
    /// queued ones on the calling thread meanwhile (that key's first);
    /// returns their results, in no particular order.
    pub fn collect(&mut self, key: u64) -> Vec<Outcome<R>> {
        let mut out = Vec::new();
        self.wait(Some(key), |st| {
            if st.open.contains_key(&key) {
                return false;
            }
            out = st.done.remove(&key).unwrap_or_default();
            true
        });
        out
    }

    /// Waits until every job handed over has ended, running queued ones on
    /// the calling thread meanwhile; returns their results, in no
    /// particular order.
    pub fn drain(&mut self) -> Vec<Outcome<R>> {
        let mut out = Vec::new();
        self.wait(None, |st| {
            if !st.open.is_empty() {
                return false;
            }
            out = std::mem::take(&mut st.done).into_values().flatten().collect();
            true
        });
        out
    }

    /// Runs queued jobs (of `want` first) until `ready` says the wait is over.
    fn wait(&mut self, want: Option<u64>, mut ready: impl FnMut(&mut State<J, R>) -> bool) {
        let mut st = self.shared.lock();
        loop {
            if ready(&mut st) {
                return;
            }
            if let Some((key, job)) = st.take(want) {
                drop(st);
                let r = run(self.work, job);
                st = self.shared.lock();
                st.finish(key, r);
                continue;
            }
            st.draining = true;
            st = self.shared.idle.wait(st).unwrap_or_else(|e| e.into_inner());
            st.draining = false;
        }
    }

    fn spawn(&mut self) {
        let shared = self.shared;
        let work = self.work;
        let spawned = super::sys::with_signals_blocked(|| {
            std::thread::Builder::new()
                .name("xrename".into())
                .stack_size(STACK)
                .spawn_scoped(self.scope, move || worker(shared, work))
                .is_ok()
        });
        if spawned {
            self.spawned += 1;
            self.spare -= 1;
        } else {
            // No more threads to be had: the caller does the rest.
            self.spare = 0;
        }
    }
}

fn run<J, R>(work: &(dyn Fn(J) -> R + Sync), job: J) -> Outcome<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(job)))
}

fn worker<J, R>(shared: &Shared<J, R>, work: &(dyn Fn(J) -> R + Sync)) {
    let mut st = shared.lock();
    loop {
        if let Some((key, job)) = st.take(None) {
            drop(st);
            let r = run(work, job);
            st = shared.lock();
            st.finish(key, r);
            // The caller waits for some keys: it looks whether its own are done.
            if st.draining {
                shared.idle.notify_all();
            }
            continue;
        }
        if st.closed {
            return;
        }
        st.sleeping += 1;
        st = shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
        st.sleeping -= 1;
    }
}

/// Runs `body`, which may start `background` (once: [`Later::start`]) on a
/// thread of its own (every signal but SIGSYS blocked); that thread is
/// told to stop (its flag set) when the body has ended, and is joined
/// before this returns. Without a thread to be had, only `body` runs.
pub fn alongside<'env, T, B>(background: B, body: impl for<'scope> FnOnce(&Later<'scope, 'env, B>) -> T) -> T
where
    B: FnOnce(&AtomicBool) + Send + 'env,
{
    std::thread::scope(|scope| {
        let later = Later {
            scope,
            stop: Arc::new(AtomicBool::new(false)),
            background: Mutex::new(Some(background)),
            thread: Mutex::new(None),
        };
        // Told to stop (and woken, if it waits) however the body ends, a
        // panic included.
        struct Stop<'a, 's, 'e, B>(&'a Later<'s, 'e, B>);
        impl<B> Drop for Stop<'_, '_, '_, B> {
            fn drop(&mut self) {
                self.0.stop.store(true, std::sync::atomic::Ordering::Relaxed);
                if let Some(t) = self.0.thread.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    t.unpark();
                }
            }
        }
        let _stop = Stop(&later);
        body(&later)
    })
}

/// A background job [`alongside`] a body, not started yet.
pub struct Later<'scope, 'env, B> {
    scope: &'scope std::thread::Scope<'scope, 'env>,
    stop: Arc<AtomicBool>,
    background: Mutex<Option<B>>,
    /// The background thread once started, to wake when it is to stop.
    thread: Mutex<Option<std::thread::Thread>>,
}

impl<'env, B: FnOnce(&AtomicBool) + Send + 'env> Later<'_, 'env, B> {
    /// Starts the background job, if it has not been started yet.
    pub fn start(&self) {
        let Some(job) = self.background.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let stop = Arc::clone(&self.stop);
        let started = super::sys::with_signals_blocked(|| {
            std::thread::Builder::new()
                .name("xrename".into())
                .stack_size(STACK)
                .spawn_scoped(self.scope, move || job(&stop))
        });
        if let Ok(handle) = started {
            *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle.thread().clone());
        }
    }
}

/// Workers for a tree move: one fewer than the CPUs this thread may run on
/// (the calling thread works too), at most 7, and at most one per 16
/// descriptors the process may still open (each worker holds two).
/// `XRENAME_THREADS` is read by the front ends and passed as `limit`.
pub fn workers_for_tree(limit: Option<usize>, free_descriptors: usize) -> usize {
    let cpus = rustix::thread::sched_getaffinity(None).map_or(1, |set| set.count() as usize);
    let n = cpus.saturating_sub(1).min(7).min(free_descriptors / 16);
    limit.map_or(n, |l| n.min(l.saturating_sub(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_job_runs_once_and_drain_is_a_barrier() {
        let ran = AtomicUsize::new(0);
        let work = |n: usize| {
            ran.fetch_add(1, Ordering::SeqCst);
            n * 2
        };
        let total = crew(3, &work, |c| {
            let mut total = 0;
            for round in 0..5 {
                for i in 0..200 {
                    c.submit(0, round * 1000 + i);
                }
                let out = c.drain();
                assert_eq!(out.len(), 200);
                assert_eq!(ran.load(Ordering::SeqCst), (round + 1) * 200);
                total += out.into_iter().map(|r| r.unwrap()).sum::<usize>();
            }
            total
        });
        let want: usize = (0..5).flat_map(|r| (0..200).map(move |i| (r * 1000 + i) * 2)).sum();
        assert_eq!(total, want);
    }

    #[test]
    fn collect_waits_for_its_key_and_takes_only_its_results() {
        let work = |(k, n): (u64, usize)| (k, n);
        crew(2, &work, |c| {
            for k in 0..3 {
                for i in 0..50 {
                    c.submit(k, (k, i));
                }
            }
            let one = c.collect(1);
            assert!(c.is_done(1));
            assert_eq!(one.len(), 50);
            assert!(one.iter().all(|r| r.as_ref().unwrap().0 == 1));
            let rest = c.drain();
            assert_eq!(rest.len(), 100);
            assert!(rest.iter().all(|r| r.as_ref().unwrap().0 != 1));
            assert!(c.is_done(0) && c.is_done(2));
            assert!(c.collect(1).is_empty());
        });
    }

    #[test]
    fn a_job_of_a_key_no_one_runs_is_taken_first() {
        let mut st: State<usize, ()> = State {
            queue: [(7, 0), (7, 1), (8, 2)].into(),
            done: HashMap::new(),
            open: HashMap::from([(7, 2), (8, 1)]),
            busy: Vec::new(),
            closed: false,
            sleeping: 0,
            draining: false,
        };
        assert_eq!(st.take(None), Some((7, 0)));
        // Key 7 is busy: the other thread takes key 8's job.
        assert_eq!(st.take(None), Some((8, 2)));
        st.finish(8, Ok(()));
        assert!(!st.open.contains_key(&8));
        // Only busy keys left: the first.
        assert_eq!(st.take(None), Some((7, 1)));
        // A waiter asking for a key gets its job first.
        st.queue = [(9, 3), (7, 4)].into();
        assert_eq!(st.take(Some(7)), Some((7, 4)));
    }

    #[test]
    fn a_panicking_job_is_reported_and_the_others_run() {
        let work = |n: usize| {
            if n == 7 {
                panic!("job 7");
            }
            n
        };
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let out = crew(2, &work, |c| {
            (0..20).for_each(|i| c.submit(0, i));
            c.drain()
        });
        std::panic::set_hook(prev);
        assert_eq!(out.iter().filter(|r| r.is_err()).count(), 1);
        assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 19);
    }

    #[test]
    fn without_threads_jobs_run_on_the_caller_and_no_thread_is_made() {
        let me = std::thread::current().id();
        let work = |_: ()| std::thread::current().id();
        let out = crew(0, &work, |c| {
            (0..100).for_each(|_| c.submit(0, ()));
            assert_eq!(c.workers(), 0);
            c.drain()
        });
        assert!(out.into_iter().all(|r| r.unwrap() == me));
    }

    #[test]
    fn an_early_return_leaves_no_worker_behind() {
        let live = AtomicUsize::new(0);
        let work = |_: usize| {
            live.fetch_add(1, Ordering::SeqCst);
            live.fetch_sub(1, Ordering::SeqCst);
        };
        let r: Result<(), ()> = crew(3, &work, |c| {
            (0..50).for_each(|i| c.submit(0, i));
            Err(()) // no drain: the queue is dropped, running jobs end
        });
        assert!(r.is_err());
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }
}
