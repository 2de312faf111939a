//! The engine runs on its own thread, not on the async workers: requests reach it as jobs over
//! a channel, and their text goes back piece by piece. It batches continuously: between steps it
//! reads up to [`PROMPT_TOKENS_PER_STEP`] tokens of newly arrived prompts (a long prompt a piece
//! at a time, so the streams already running keep going), then decodes one token of every
//! sequence whose prompt is read, in a single pass over the weights (`Model::decode_batch`), so
//! concurrent requests share the cost of reading the model. A request whose client went away is
//! dropped before the next step and its memory freed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{FinishReason, GenerateOptions, Generation, LoadedModel, TokenStream};
use baimo_models::{Arithmetic, LogitsFor, ModelError, Sequence};
use baimo_threads::ThreadPool;
use tokio::sync::mpsc::UnboundedSender;

/// What a job reports back.
#[derive(Debug)]
pub enum Event {
    /// A piece of the answer's text.
    Text(String),
    /// Log-probabilities of the tokens generated since the last such event (when asked for).
    Logprobs(Vec<crate::TokenLogprob>),
    /// The generation ended (its figures), or failed.
    Done(Result<Generation, String>),
}

pub struct Job {
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
    pub events: UnboundedSender<Event>,
    /// Whether the handler wants the text piece by piece (a streamed answer). Otherwise only
    /// `Done` carries it: a whole answer then wakes its handler once, not once per token (each
    /// wake-up takes a core from the engine's threads in the middle of a step).
    pub pieces: bool,
    /// Tokens generated so far, kept up to date as the job runs: what a request cost is known
    /// even when its handler left before `Done` (a client that cut its stream).
    pub generated: Arc<AtomicUsize>,
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
    /// Decoding steps, and the sequences they carried (their ratio is the mean batch).
    pub steps: AtomicUsize,
    pub step_rows: AtomicUsize,
    /// Prompt tokens whose keys and values came from an earlier request (prefix cache).
    pub cached_tokens: AtomicUsize,
    /// Finished requests, the sum of their times to first token and of their generation times
    /// (after the first token), in microseconds.
    pub finished: AtomicUsize,
    pub ttft_micros: AtomicUsize,
    pub generation_micros: AtomicUsize,
}

/// How the engine thread runs.
#[derive(Clone, Copy, Debug)]
pub struct WorkerConfig {
    /// Positions per sequence.
    pub context: usize,
    /// Sequences decoded together at most; later requests wait.
    pub max_active: usize,
    pub arithmetic: Arithmetic,
    /// Finished sequences kept for the prefix cache, and the memory their caches may take.
    pub cache_entries: usize,
    pub cache_bytes: usize,
}

/// Finished sequences kept with their KV caches: a new prompt that starts like one of them (the
/// next turn of a conversation, the same system prompt) continues from the shared part instead
/// of reading it again. Least recently used first out, by count and by memory.
struct PrefixCache {
    entries: Vec<(Vec<u32>, Sequence)>,
    max_entries: usize,
    max_bytes: usize,
}

/// Shorter shared prefixes are not worth taking an entry for.
const MIN_SHARED: usize = 8;

impl PrefixCache {
    /// The entry sharing the longest prefix with `prompt` (at least [`MIN_SHARED`] tokens), cut
    /// back to what it shares (at least one prompt token is left to read).
    fn take(&mut self, prompt: &[u32]) -> Option<(Sequence, usize)> {
        let shared = |tokens: &[u32]| tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let (best, n) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, (tokens, _))| (i, shared(tokens)))
            .max_by_key(|&(_, n)| n)?;
        let n = n.min(prompt.len().saturating_sub(1));
        if n < MIN_SHARED {
            return None;
        }
        let (_, mut seq) = self.entries.remove(best);
        seq.kv.truncate(n);
        Some((seq, n))
    }

    fn put(&mut self, tokens: Vec<u32>, seq: Sequence) {
        if self.max_entries == 0 {
            return;
        }
        self.entries.insert(0, (tokens, seq));
        self.entries.truncate(self.max_entries);
        let mut total = 0;
        self.entries.retain(|(_, seq)| {
            total += seq.kv.n_bytes();
            total <= self.max_bytes
        });
    }
}

#[derive(Clone)]
pub struct Worker {
    jobs: mpsc::Sender<Job>,
    pub counters: Arc<Counters>,
}

/// A request being generated.
struct Active {
    seq: Sequence,
    /// Every token the sequence holds (prompt and answer so far), for the penalties.
    history: Vec<u32>,
    stream: TokenStream,
    /// The token to read in the next step.
    next: u32,
    /// Prompt tokens `..read` are in the cache; the sequence decodes once all are.
    read: usize,
    events: UnboundedSender<Event>,
    pieces: bool,
    generated: Arc<AtomicUsize>,
    prompt_tokens: usize,
    cached_tokens: usize,
    prompt_time: Duration,
    started: Instant,
}

impl Worker {
    /// Starts the engine thread of `model`; it ends when the last `Worker` handle is dropped and
    /// its requests are done.
    pub fn start(
        model: Arc<LoadedModel>,
        pool: Arc<ThreadPool>,
        config: WorkerConfig,
        counters: Arc<Counters>,
    ) -> Worker {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let c = counters.clone();
        std::thread::Builder::new()
            .name("baimo-engine".into())
            .spawn(move || run(&model, &pool, config, &inbox, &c))
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

impl Active {
    /// Picks the token after `logits` (the row for the sequence's last token), sending its text
    /// (when the handler wants pieces) and log-probabilities (when asked for); `None` when the
    /// generation ended.
    fn pick(&mut self, model: &LoadedModel, logits: &[f32]) -> Option<u32> {
        let room = self.seq.len() + 1 < self.seq.kv.max_len();
        let next = self.stream.next(
            &model.tokenizer,
            logits,
            &self.history,
            room,
            &mut text_sink(&self.events, self.pieces),
        );
        self.generated.store(self.stream.generated().len(), Ordering::Relaxed);
        let lps = self.stream.take_logprobs();
        if !lps.is_empty() {
            let _ = self.events.send(Event::Logprobs(lps.to_vec()));
        }
        next
    }
}

/// Where a request's text goes piece by piece: to its handler, when it wants pieces (see
/// [`Job::pieces`]); nowhere otherwise (the whole text comes with `Done`).
fn text_sink(events: &UnboundedSender<Event>, pieces: bool) -> impl FnMut(&str) + '_ {
    move |piece| {
        if pieces {
            let _ = events.send(Event::Text(piece.to_string()));
        }
    }
}

fn run(
    model: &LoadedModel,
    pool: &ThreadPool,
    config: WorkerConfig,
    inbox: &mpsc::Receiver<Job>,
    c: &Counters,
) {
    // Requests whose prompt is being read, and those decoding.
    let (mut reading, mut active): (Vec<Active>, Vec<Active>) = (Vec::new(), Vec::new());
    // This engine's share of the shared `running` gauge (several models may be served).
    let mut running = 0usize;
    let mut set_running = |n: usize| {
        if n >= running {
            c.running.fetch_add(n - running, Ordering::Relaxed);
        } else {
            c.running.fetch_sub(running - n, Ordering::Relaxed);
        }
        running = n;
    };
    let mut cache =
        PrefixCache { entries: Vec::new(), max_entries: config.cache_entries, max_bytes: config.cache_bytes };
    // A model whose context attends both ways (GLM) cannot reuse a prefix.
    if !model.model.causal_prefix() {
        cache.max_entries = 0;
    }
    loop {
        // New requests: wait for one when idle, else take what has arrived (up to the limit).
        let mut arrived = Vec::new();
        if active.is_empty() && reading.is_empty() {
            match inbox.recv() {
                Ok(job) => arrived.push(job),
                Err(_) => return, // the server is gone
            }
        }
        while active.len() + reading.len() + arrived.len() < config.max_active {
            match inbox.try_recv() {
                Ok(job) => arrived.push(job),
                Err(_) => break,
            }
        }
        for job in arrived {
            c.queued.fetch_sub(1, Ordering::Relaxed);
            if let Some(a) = admit(model, config, job, c, &mut cache) {
                reading.push(a);
            }
        }
        // Requests whose client left: dropped now, their cache with them.
        for requests in [&mut reading, &mut active] {
            requests.retain_mut(|a| {
                if a.events.is_closed() {
                    a.stream.cancel();
                    c.cancelled.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                true
            });
        }
        // Prompts, oldest first, up to the step's budget (at least one piece).
        let mut budget = PROMPT_TOKENS_PER_STEP;
        while budget > 0 && !reading.is_empty() {
            let a = &mut reading[0];
            let piece = next_piece(a.history.len() - a.read, model.model.reads_prompt_in_pieces());
            budget = budget.saturating_sub(piece);
            match read_prompt(model, pool, a, piece, c) {
                Ok(false) => {} // more to read
                Ok(true) => {
                    let a = reading.remove(0);
                    if a.stream.is_finished() {
                        if let Some((tokens, seq)) = report(a, None, c) {
                            cache.put(tokens, seq);
                        }
                    } else {
                        active.push(a);
                    }
                }
                Err(e) => {
                    let _ = report(reading.remove(0), Some(e), c);
                }
            }
        }
        set_running(active.len() + reading.len());
        if active.is_empty() {
            continue;
        }
        // One token for every sequence whose prompt is read.
        let tokens: Vec<u32> = active.iter().map(|a| a.next).collect();
        let logits = {
            let mut seqs: Vec<&mut Sequence> = active.iter_mut().map(|a| &mut a.seq).collect();
            match model.model.decode_batch(pool, &mut seqs, &tokens) {
                Err(ModelError::Unsupported(_)) => one_by_one(model, pool, &mut seqs, &tokens),
                other => other.map_err(|e| e.to_string()),
            }
        };
        c.steps.fetch_add(1, Ordering::Relaxed);
        c.step_rows.fetch_add(active.len(), Ordering::Relaxed);
        let vocab = model.info.vocab_size;
        let mut finished = Vec::new();
        for (row, a) in active.iter_mut().enumerate() {
            a.history.push(a.next);
            let next = match &logits {
                Ok(l) => a.pick(model, &l[row * vocab..(row + 1) * vocab]),
                Err(_) => None,
            };
            match next {
                Some(t) => a.next = t,
                None => finished.push(row),
            }
        }
        // Finished requests report and leave (from the back, so the indices stay valid).
        for &row in finished.iter().rev() {
            let a = active.swap_remove(row);
            if let Some((tokens, seq)) = report(a, logits.as_ref().err().cloned(), c) {
                cache.put(tokens, seq);
            }
        }
        set_running(active.len() + reading.len());
    }
}

/// Prompt tokens read between two decoding steps (a new prompt is read at least a piece at a
/// time, however long): a long prompt delays the running streams by about one such piece per
/// step instead of by all of it.
const PROMPT_TOKENS_PER_STEP: usize = 256;
const _: () = assert!(PROMPT_TOKENS_PER_STEP.is_multiple_of(baimo_models::DEFAULT_BATCH));

/// How many of the `left` prompt tokens to read now. When the model allows it (see
/// `Model::reads_prompt_in_pieces`) a long prompt goes in pieces of [`PROMPT_TOKENS_PER_STEP`]
/// (a multiple of the model's batch), the last one at least a batch long: the pieces then give
/// the cache and logits one call gives, bit for bit.
fn next_piece(left: usize, in_pieces: bool) -> usize {
    if in_pieces && left >= PROMPT_TOKENS_PER_STEP + baimo_models::DEFAULT_BATCH {
        PROMPT_TOKENS_PER_STEP
    } else {
        left
    }
}

/// Reads the next `piece` tokens of `a`'s prompt; once the last are read, picks its first
/// token (true). Errors (a prompt over the context, a bad token) end the request.
fn read_prompt(
    model: &LoadedModel,
    pool: &ThreadPool,
    a: &mut Active,
    piece: usize,
    c: &Counters,
) -> Result<bool, String> {
    let started = Instant::now();
    let tokens = &a.history[a.read..a.read + piece];
    let logits = model.model.forward(pool, &mut a.seq, tokens, LogitsFor::Last).map_err(|e| e.to_string())?;
    a.read += piece;
    a.prompt_time += started.elapsed();
    if a.read < a.history.len() {
        return Ok(false);
    }
    let logits = logits.to_vec();
    c.prompt_tokens.fetch_add(a.prompt_tokens, Ordering::Relaxed);
    a.next = a.pick(model, &logits).unwrap_or(0);
    Ok(true)
}

/// Steps sequences one at a time (families without a batched path).
fn one_by_one(
    model: &LoadedModel,
    pool: &ThreadPool,
    seqs: &mut [&mut Sequence],
    tokens: &[u32],
) -> Result<Vec<f32>, String> {
    let mut out = Vec::with_capacity(seqs.len() * model.info.vocab_size);
    for (seq, &t) in seqs.iter_mut().zip(tokens) {
        out.extend_from_slice(
            model.model.forward(pool, seq, &[t], LogitsFor::Last).map_err(|e| e.to_string())?,
        );
    }
    Ok(out)
}

/// Sets a new request up (its sequence, from the prefix cache when a finished one shares the
/// prompt's start); its prompt is read by [`read_prompt`]. `None` when its client already left.
fn admit(
    model: &LoadedModel,
    config: WorkerConfig,
    job: Job,
    c: &Counters,
    cache: &mut PrefixCache,
) -> Option<Active> {
    if job.events.is_closed() {
        c.cancelled.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let (mut seq, reused) =
        cache.take(&job.prompt).unwrap_or_else(|| (model.model.new_sequence(config.context), 0));
    seq.arithmetic = config.arithmetic;
    c.cached_tokens.fetch_add(reused, Ordering::Relaxed);
    Some(Active {
        seq,
        prompt_tokens: job.prompt.len(),
        history: job.prompt,
        stream: TokenStream::new(&job.options),
        next: 0,
        read: reused,
        events: job.events,
        pieces: job.pieces,
        generated: job.generated,
        cached_tokens: reused,
        prompt_time: Duration::ZERO,
        started: Instant::now(),
    })
}

/// Sends a finished request its result; hands back its tokens and sequence for the prefix cache
/// when it ended well.
fn report(a: Active, error: Option<String>, c: &Counters) -> Option<(Vec<u32>, Sequence)> {
    let end = a.stream.finish(&mut text_sink(&a.events, a.pieces));
    a.generated.store(end.tokens.len(), Ordering::Relaxed);
    c.completion_tokens.fetch_add(end.tokens.len(), Ordering::Relaxed);
    let ok = error.is_none();
    let result = match error {
        Some(e) => Err(e),
        None => Ok(Generation {
            text: end.text,
            tokens: end.tokens,
            logprobs: end.logprobs,
            stop_sequence: end.stop_sequence.clone(),
            finish_reason: if end.finish_reason == FinishReason::Cancelled {
                FinishReason::Length
            } else {
                end.finish_reason
            },
            prompt_tokens: a.prompt_tokens,
            cached_tokens: a.cached_tokens,
            prompt_time: a.prompt_time,
            generation_time: a.started.elapsed().saturating_sub(a.prompt_time),
            time_to_first_token: end.time_to_first_token,
        }),
    };
    if let Ok(g) = &result {
        c.finished.fetch_add(1, Ordering::Relaxed);
        c.ttft_micros.fetch_add(g.time_to_first_token.as_micros() as usize, Ordering::Relaxed);
        c.generation_micros.fetch_add(g.generation_time.as_micros() as usize, Ordering::Relaxed);
    }
    let _ = a.events.send(Event::Done(result));
    // The cache holds exactly the tokens of `history`.
    ok.then_some((a.history, a.seq))
}
