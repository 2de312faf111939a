//! The engine runs on its own thread, not on the async workers: requests reach it as jobs over
//! a channel, and their text comes back piece by piece. A job whose client went away is
//! cancelled between two tokens (the event channel's receiver is gone).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use baimo_engine::{GenerateOptions, Generation, LoadedModel, Session};
use baimo_threads::ThreadPool;
use tokio::sync::mpsc::UnboundedSender;

/// What a job reports back.
#[derive(Debug)]
pub enum Event {
    /// A piece of the answer's text.
    Text(String),
    /// The generation ended (its figures), or failed.
    Done(Result<Generation, String>),
}

pub struct Job {
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
    pub events: UnboundedSender<Event>,
}

/// Figures the metrics endpoint reports.
#[derive(Default)]
pub struct Counters {
    pub queued: AtomicUsize,
    pub running: AtomicUsize,
    pub requests: AtomicUsize,
    pub prompt_tokens: AtomicUsize,
    pub completion_tokens: AtomicUsize,
    pub cancelled: AtomicUsize,
}

#[derive(Clone)]
pub struct Worker {
    jobs: mpsc::Sender<Job>,
    pub counters: Arc<Counters>,
}

impl Worker {
    /// Starts the engine thread for `model`, with sessions of at most `context` positions.
    pub fn start(model: Arc<LoadedModel>, pool: Arc<ThreadPool>, context: usize) -> Worker {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        std::thread::Builder::new()
            .name("baimo-engine".into())
            .spawn(move || {
                for job in inbox {
                    c.queued.fetch_sub(1, Ordering::Relaxed);
                    if job.events.is_closed() {
                        c.cancelled.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    c.running.fetch_add(1, Ordering::Relaxed);
                    let cancel = AtomicBool::new(false);
                    let mut session = Session::new(model.clone(), pool.clone(), context);
                    let result = session.generate(
                        &job.prompt,
                        &job.options,
                        &mut |piece| {
                            if job.events.send(Event::Text(piece.to_string())).is_err() {
                                cancel.store(true, Ordering::Relaxed);
                            }
                        },
                        Some(&cancel),
                    );
                    if cancel.load(Ordering::Relaxed) {
                        c.cancelled.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Ok(g) = &result {
                        c.prompt_tokens.fetch_add(g.prompt_tokens, Ordering::Relaxed);
                        c.completion_tokens.fetch_add(g.tokens.len(), Ordering::Relaxed);
                    }
                    c.running.fetch_sub(1, Ordering::Relaxed);
                    let _ = job.events.send(Event::Done(result.map_err(|e| e.to_string())));
                }
            })
            .expect("spawn the engine thread");
        Worker { jobs, counters }
    }

    /// Queues a job; false when the engine thread is gone.
    pub fn submit(&self, job: Job) -> bool {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        let ok = self.jobs.send(job).is_ok();
        if !ok {
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
        }
        ok
    }
}
