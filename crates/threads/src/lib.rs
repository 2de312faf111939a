//! A persistent thread pool for whole-token SPMD execution, as ggml runs its graphs: every
//! thread runs the same function (the whole forward pass) and takes its share of each step.
//!
//! - Workers are started once. Between jobs they spin for a while (the next token's job usually
//!   arrives within microseconds), then park, so an idle program does not burn a core.
//! - Work inside a step is claimed in chunks from an atomic counter rather than split statically,
//!   and a step ends when all its chunks are done, not when every thread has arrived: on a
//!   shared or oversubscribed machine a descheduled thread then delays nothing but a chunk it
//!   holds. When it runs again it finds the steps it missed finished and catches up.
//! - Nothing is allocated or spawned per job.

#![deny(unsafe_op_in_unsafe_fn)]

use std::cell::Cell;
use std::marker::PhantomData;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks, and a thread at a barrier before it starts
/// yielding its core.
const SPIN_BEFORE_PARK: Duration = Duration::from_millis(2);
const SPINS_BEFORE_YIELD: u32 = 20_000;

/// Keeps a hot atomic on its own cache line so threads polling one don't slow writes to another.
#[repr(align(128))]
struct Padded<T>(T);

#[derive(Default)]
#[repr(align(64))]
struct StepCounters {
    claimed: AtomicUsize,
    finished: AtomicUsize,
}

/// Steps (calls of `for_each_chunk`) one job may have; a forward pass of a 100-layer model
/// takes about a thousand.
const MAX_STEPS: usize = 1 << 14;

type Job = dyn Fn(&Ctx<'_>) + Sync;

struct Shared {
    n_threads: usize,
    /// Bumped by `run` to publish a job; workers wait for it to change.
    generation: Padded<AtomicU64>,
    /// The current job, valid while a `run` call is in progress.
    job: Mutex<Option<&'static Job>>,
    /// Workers that have finished the current job.
    finished: Padded<AtomicUsize>,
    barrier_arrived: Padded<AtomicUsize>,
    barrier_generation: Padded<AtomicU64>,
    /// Per step of the current job: chunks claimed and chunks finished. Steps are numbered in
    /// the order every thread meets them; the counters of a job are reset before it starts.
    steps: Box<[StepCounters]>,
    /// Steps the previous job used (their counters need resetting).
    steps_used: AtomicUsize,
    /// Set when a thread panicked inside the job, so the others leave barriers instead of
    /// waiting for it forever.
    poisoned: AtomicBool,
    panic_payload: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    shutdown: AtomicBool,
    sleeping: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

/// What one thread sees while running a job.
pub struct Ctx<'a> {
    /// This thread's index: 0 is the caller of [`ThreadPool::run`].
    pub ith: usize,
    /// Number of threads running the job.
    pub nth: usize,
    shared: &'a Shared,
    /// Index of this thread's next step.
    step: Cell<usize>,
}

impl Ctx<'_> {
    /// Waits until every thread of the job has reached this barrier.
    pub fn barrier(&self) {
        if self.nth == 1 {
            return;
        }
        let s = self.shared;
        let generation = s.barrier_generation.0.load(Ordering::Acquire);
        if s.barrier_arrived.0.fetch_add(1, Ordering::AcqRel) == self.nth - 1 {
            // Last to arrive: reset the count before releasing the others, so that their next
            // barrier starts from zero.
            s.barrier_arrived.0.store(0, Ordering::Relaxed);
            s.barrier_generation.0.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while s.barrier_generation.0.load(Ordering::Acquire) == generation {
            if s.poisoned.load(Ordering::Acquire) {
                panic!("another thread of the pool panicked");
            }
            spins += 1;
            if spins < SPINS_BEFORE_YIELD {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Calls `f` for chunks of `0..n_items` (each at most `chunk` long) claimed by whichever
    /// thread is free, and returns once every chunk is finished, so what the step wrote can be
    /// read. Every thread of the job must call it with the same arguments, in the same order.
    pub fn for_each_chunk(&self, n_items: usize, chunk: usize, f: impl FnMut(Range<usize>)) {
        let chunk = chunk.max(1);
        self.run_chunks(n_items.div_ceil(chunk), |k| k * chunk..((k + 1) * chunk).min(n_items), f);
    }

    /// Like [`for_each_chunk`](Self::for_each_chunk), with chunks that shrink as the work runs
    /// out ("guided" scheduling): each takes a share `1/(2·threads)` of what is left, at least
    /// `min_chunk`. Early chunks are long runs (good for streaming memory), late ones short (so
    /// the threads finish together).
    pub fn for_each_guided(&self, n_items: usize, min_chunk: usize, f: impl FnMut(Range<usize>)) {
        let min_chunk = min_chunk.max(1);
        let share = 2 * self.nth;
        let next =
            |start: usize| start + (n_items - start).div_ceil(share).max(min_chunk).min(n_items - start);
        let (mut n_chunks, mut at) = (0, 0);
        while at < n_items {
            at = next(at);
            n_chunks += 1;
        }
        let chunk_range = |k: usize| {
            let mut start = 0;
            for _ in 0..k {
                start = next(start);
            }
            start..next(start)
        };
        self.run_chunks(n_chunks, chunk_range, f);
    }

    fn run_chunks(
        &self,
        n_chunks: usize,
        chunk_range: impl Fn(usize) -> Range<usize>,
        mut f: impl FnMut(Range<usize>),
    ) {
        let index = self.step.get();
        self.step.set(index + 1);
        let step = self.shared.steps.get(index).expect("a job ran more than MAX_STEPS steps");
        loop {
            let claimed = step.claimed.fetch_add(1, Ordering::Relaxed);
            if claimed >= n_chunks {
                break;
            }
            f(chunk_range(claimed));
            // Release: what `f` wrote is visible to whoever sees the count.
            step.finished.fetch_add(1, Ordering::Release);
        }
        let mut spins = 0u32;
        while step.finished.load(Ordering::Acquire) < n_chunks {
            if self.shared.poisoned.load(Ordering::Acquire) {
                panic!("another thread of the pool panicked");
            }
            spins += 1;
            if spins < SPINS_BEFORE_YIELD {
                std::hint::spin_loop();
            } else {
                // The chunk we wait for may belong to a thread sharing our core.
                std::thread::yield_now();
            }
        }
    }

    /// This thread's contiguous share of `0..n` (for cheap, even work that needs no balancing).
    pub fn split(&self, n: usize) -> Range<usize> {
        n * self.ith / self.nth..n * (self.ith + 1) / self.nth
    }
}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serializes `run` calls: a pool runs one job at a time.
    running: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `n_threads` threads in all: the caller of `run` and `n_threads - 1` workers.
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            n_threads,
            generation: Padded(AtomicU64::new(0)),
            job: Mutex::new(None),
            finished: Padded(AtomicUsize::new(0)),
            barrier_arrived: Padded(AtomicUsize::new(0)),
            barrier_generation: Padded(AtomicU64::new(0)),
            steps: (0..MAX_STEPS).map(|_| StepCounters::default()).collect(),
            steps_used: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
            panic_payload: Mutex::new(None),
            shutdown: AtomicBool::new(false),
            sleeping: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..n_threads)
            .map(|ith| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("baimo-worker-{ith}"))
                    .spawn(move || worker_loop(&shared, ith))
                    .expect("failed to start a worker thread")
            })
            .collect();
        ThreadPool { shared, workers, running: Mutex::new(()) }
    }

    /// A pool with one thread per available core.
    pub fn with_available_parallelism() -> ThreadPool {
        ThreadPool::new(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
    }

    pub fn n_threads(&self) -> usize {
        self.shared.n_threads
    }

    /// Runs `f` on every thread of the pool (the caller is thread 0) and returns when all have
    /// finished. A panic in any thread is re-raised here.
    pub fn run<F: Fn(&Ctx<'_>) + Sync>(&self, f: F) {
        let _one_job_at_a_time = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let job: &(dyn Fn(&Ctx<'_>) + Sync + '_) = &f;
        // SAFETY: the job is only reachable through `s.job` until this function returns, and it
        // waits below for every worker to finish with it before returning (also on panic), so
        // the extended lifetime is never observed past `f`'s real one.
        let job: &'static Job =
            unsafe { std::mem::transmute::<&(dyn Fn(&Ctx<'_>) + Sync + '_), &'static Job>(job) };
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
        s.finished.0.store(0, Ordering::Relaxed);
        for step in &s.steps[..s.steps_used.swap(0, Ordering::Relaxed)] {
            step.claimed.store(0, Ordering::Relaxed);
            step.finished.store(0, Ordering::Relaxed);
        }
        s.barrier_arrived.0.store(0, Ordering::Relaxed);
        s.poisoned.store(false, Ordering::Relaxed);
        s.generation.0.fetch_add(1, Ordering::SeqCst);
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _guard = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }

        run_job(s, job, 0);

        let mut spins = 0u32;
        while s.finished.0.load(Ordering::Acquire) < s.n_threads - 1 {
            spins += 1;
            if spins < SPINS_BEFORE_YIELD {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Some(payload) = s.panic_payload.lock().unwrap_or_else(|e| e.into_inner()).take() {
            resume_unwind(payload);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.generation.0.fetch_add(1, Ordering::SeqCst);
        {
            let _guard = self.shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn run_job(s: &Shared, job: &Job, ith: usize) {
    let ctx = Ctx { ith, nth: s.n_threads, shared: s, step: Cell::new(0) };
    let result = catch_unwind(AssertUnwindSafe(|| job(&ctx)));
    s.steps_used.fetch_max(ctx.step.get(), Ordering::Relaxed);
    if let Err(payload) = result {
        // Keep the first panic, stored before the others are told: theirs is only "another
        // thread panicked".
        let mut slot = s.panic_payload.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(payload);
        }
        drop(slot);
        s.poisoned.store(true, Ordering::Release);
    }
}

fn worker_loop(s: &Shared, ith: usize) {
    let mut seen = 0u64;
    loop {
        seen = wait_for_job(s, seen);
        if s.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job {
            run_job(s, job, ith);
        }
        s.finished.0.fetch_add(1, Ordering::Release);
    }
}

/// Spins until the generation moves past `seen`, then parks; returns the new generation.
fn wait_for_job(s: &Shared, seen: u64) -> u64 {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let generation = s.generation.0.load(Ordering::Acquire);
        if generation != seen {
            return generation;
        }
        spins = spins.wrapping_add(1);
        std::hint::spin_loop();
        if spins.is_multiple_of(1024) && start.elapsed() > SPIN_BEFORE_PARK {
            break;
        }
    }
    let mut guard = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
    s.sleeping.fetch_add(1, Ordering::SeqCst);
    loop {
        let generation = s.generation.0.load(Ordering::SeqCst);
        if generation != seen {
            s.sleeping.fetch_sub(1, Ordering::SeqCst);
            return generation;
        }
        guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
    }
}

/// A mutable slice that the threads of a job write to in disjoint parts.
///
/// The pool cannot prove the parts are disjoint; code that uses this states, at each
/// `unsafe` use, which part each thread writes and which barrier separates writes from reads.
pub struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: access goes through the `unsafe` methods below, whose contracts forbid data races.
unsafe impl<T: Send> Send for SharedMut<'_, T> {}
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}

impl<'a, T> SharedMut<'a, T> {
    pub fn new(slice: &'a mut [T]) -> Self {
        SharedMut { ptr: slice.as_mut_ptr(), len: slice.len(), _borrow: PhantomData }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A mutable view of `range`.
    ///
    /// # Safety
    /// No other thread may read or write any part of `range` while the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, range: Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len, "SharedMut range out of bounds");
        // SAFETY: in bounds (checked); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }

    /// A shared view of the whole slice.
    ///
    /// # Safety
    /// No thread may write to the slice while the returned view lives.
    pub unsafe fn get(&self) -> &[T] {
        // SAFETY: the pointer and length come from a live `&mut [T]`; no writers (contract).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_the_job_once() {
        for n in [1, 2, 3, 4] {
            let pool = ThreadPool::new(n);
            let count = AtomicUsize::new(0);
            let seen = Mutex::new(Vec::new());
            pool.run(|ctx| {
                count.fetch_add(1, Ordering::Relaxed);
                seen.lock().unwrap().push(ctx.ith);
                assert_eq!(ctx.nth, n);
            });
            assert_eq!(count.load(Ordering::Relaxed), n);
            let mut seen = seen.into_inner().unwrap();
            seen.sort();
            assert_eq!(seen, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn chunks_cover_every_item_once_across_many_steps() {
        let pool = ThreadPool::new(3);
        for round in 0..50 {
            let n_items = 1 + round * 7;
            let mut hits = vec![0u32; n_items * 5];
            let out = SharedMut::new(&mut hits);
            pool.run(|ctx| {
                for step in 0..5 {
                    ctx.for_each_chunk(n_items, 4, |range| {
                        for i in range {
                            // SAFETY: each item of each step is claimed by exactly one thread.
                            unsafe { out.slice_mut(step * n_items + i..step * n_items + i + 1)[0] += 1 };
                        }
                    });
                }
            });
            assert!(hits.iter().all(|&h| h == 1), "round {round}: {hits:?}");
        }
    }

    #[test]
    fn guided_chunks_cover_every_item_once_and_shrink() {
        let pool = ThreadPool::new(2);
        for n_items in [0, 1, 5, 16, 17, 304, 1000] {
            for min_chunk in [1, 3, 8] {
                let mut hits = vec![0u32; n_items];
                let sizes = Mutex::new(Vec::new());
                let out = SharedMut::new(&mut hits);
                pool.run(|ctx| {
                    ctx.for_each_guided(n_items, min_chunk, |range| {
                        sizes.lock().unwrap().push((range.start, range.len()));
                        for i in range {
                            // SAFETY: each item is claimed by exactly one thread.
                            unsafe { out.slice_mut(i..i + 1)[0] += 1 };
                        }
                    });
                });
                assert!(hits.iter().all(|&h| h == 1), "{n_items} items, min {min_chunk}: {hits:?}");
                let mut sizes = sizes.into_inner().unwrap();
                sizes.sort();
                // Non-increasing sizes, none below the minimum except a final remainder.
                for w in sizes.windows(2) {
                    assert!(w[1].1 <= w[0].1, "{sizes:?}");
                }
                let all_but_last = sizes.len().saturating_sub(1);
                assert!(sizes[..all_but_last].iter().all(|&(_, len)| len >= min_chunk), "{sizes:?}");
            }
        }
    }

    #[test]
    fn barrier_orders_writes_before_reads() {
        let pool = ThreadPool::new(4);
        let mut data = vec![0usize; 4];
        let shared = SharedMut::new(&mut data);
        let sums = Mutex::new(Vec::new());
        pool.run(|ctx| {
            for round in 1..=100 {
                // SAFETY: each thread writes only its own element, then all meet at the barrier.
                unsafe { shared.slice_mut(ctx.ith..ctx.ith + 1)[0] = round * (ctx.ith + 1) };
                ctx.barrier();
                // SAFETY: no thread writes between the two barriers.
                let total: usize = unsafe { shared.get() }.iter().sum();
                assert_eq!(total, round * 10);
                ctx.barrier();
            }
            sums.lock().unwrap().push(ctx.ith);
        });
        assert_eq!(sums.into_inner().unwrap().len(), 4);
    }

    #[test]
    fn a_panic_in_a_worker_reaches_the_caller_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.run(|ctx| {
                if ctx.ith == 1 {
                    panic!("worker failed");
                }
                ctx.barrier();
            })
        }));
        let message = result.unwrap_err();
        assert_eq!(message.downcast_ref::<&str>(), Some(&"worker failed"));
        let count = AtomicUsize::new(0);
        pool.run(|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn workers_wake_up_after_parking() {
        let pool = ThreadPool::new(2);
        std::thread::sleep(SPIN_BEFORE_PARK * 3);
        let count = AtomicUsize::new(0);
        pool.run(|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }
}
