//! `GET /metrics` in Prometheus' text format: every request's end (local and hosted, whatever
//! the way it ended) by model, channel and status, its latency as a histogram, its tokens; then
//! the engine's own gauges and counters.
//!
//! Labels come only from configured names (a request for an unknown model is refused before it
//! is counted), so the series stay few.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use crate::usage::UsageRecord;

/// Upper bounds of the latency buckets, in seconds (a local answer takes tens of milliseconds
/// to minutes; a hosted one, seconds).
const LATENCY_BUCKETS: [f64; 12] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

#[derive(Default)]
struct Series {
    /// Requests by status.
    statuses: BTreeMap<u16, u64>,
    /// Cumulative counts per bucket (the last is +Inf), the latencies' sum in seconds.
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    latency_sum: f64,
    prompt_tokens: u64,
    completion_tokens: u64,
    retries: u64,
}

/// Requests' ends, by model and channel.
#[derive(Default)]
pub struct RequestMetrics {
    series: Mutex<BTreeMap<(String, String), Series>>,
}

/// A label value as Prometheus reads it.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl RequestMetrics {
    pub fn observe(&self, r: &UsageRecord) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = series.entry((r.model.clone(), r.channel.clone())).or_default();
        *s.statuses.entry(r.status).or_default() += 1;
        let seconds = r.latency_ms as f64 / 1e3;
        for (bucket, &bound) in s.buckets.iter_mut().zip(LATENCY_BUCKETS.iter().chain([f64::INFINITY].iter()))
        {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        s.latency_sum += seconds;
        s.prompt_tokens += r.prompt_tokens;
        s.completion_tokens += r.completion_tokens;
        s.retries += u64::from(r.retries);
    }

    pub fn render(&self, out: &mut String) {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let labels = |(model, channel): &(String, String)| {
            format!("model=\"{}\",channel=\"{}\"", label(model), label(channel))
        };
        out.push_str("# HELP baimo_requests_total Requests answered or ended, local and hosted, by status (499: the client left).\n# TYPE baimo_requests_total counter\n");
        for (key, s) in series.iter() {
            for (status, n) in &s.statuses {
                let _ = writeln!(out, "baimo_requests_total{{{},status=\"{status}\"}} {n}", labels(key));
            }
        }
        out.push_str("# HELP baimo_request_duration_seconds Time from a request's admission to its end.\n# TYPE baimo_request_duration_seconds histogram\n");
        for (key, s) in series.iter() {
            let l = labels(key);
            for (n, bound) in
                s.buckets.iter().zip(LATENCY_BUCKETS.iter().map(|b| b.to_string()).chain(["+Inf".into()]))
            {
                let _ = writeln!(out, "baimo_request_duration_seconds_bucket{{{l},le=\"{bound}\"}} {n}");
            }
            let _ = writeln!(out, "baimo_request_duration_seconds_sum{{{l}}} {}", s.latency_sum);
            let _ = writeln!(
                out,
                "baimo_request_duration_seconds_count{{{l}}} {}",
                s.buckets[LATENCY_BUCKETS.len()]
            );
        }
        out.push_str("# HELP baimo_request_tokens_total Tokens of requests' usage records (prompt, completion).\n# TYPE baimo_request_tokens_total counter\n");
        for (key, s) in series.iter() {
            let l = labels(key);
            let _ = writeln!(out, "baimo_request_tokens_total{{{l},kind=\"prompt\"}} {}", s.prompt_tokens);
            let _ = writeln!(
                out,
                "baimo_request_tokens_total{{{l},kind=\"completion\"}} {}",
                s.completion_tokens
            );
        }
        out.push_str("# HELP baimo_upstream_retries_total Failed tries at hosted channels before an answer.\n# TYPE baimo_upstream_retries_total counter\n");
        for (key, s) in series.iter() {
            let _ = writeln!(out, "baimo_upstream_retries_total{{{}}} {}", labels(key), s.retries);
        }
    }
}

/// The engine's figures (all local models together).
pub fn render_engine(c: &baimo_engine::Counters, out: &mut String) {
    let mut line = |name: &str, help: &str, kind: &str, value: usize| {
        let _ = write!(out, "# HELP baimo_{name} {help}\n# TYPE baimo_{name} {kind}\nbaimo_{name} {value}\n");
    };
    let load = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed);
    line(
        "engine_jobs_total",
        "Generations the engine was given (one per choice).",
        "counter",
        load(&c.requests),
    );
    line("requests_queued", "Requests waiting for the engine.", "gauge", load(&c.queued));
    line("requests_running", "Requests being generated.", "gauge", load(&c.running));
    line("requests_cancelled_total", "Requests whose client went away.", "counter", load(&c.cancelled));
    line("prompt_tokens_total", "Prompt tokens read.", "counter", load(&c.prompt_tokens));
    line("completion_tokens_total", "Tokens generated.", "counter", load(&c.completion_tokens));
    line(
        "prompt_tokens_cached_total",
        "Prompt tokens taken from the prefix cache instead of being read.",
        "counter",
        load(&c.cached_tokens),
    );
    line(
        "decode_steps_total",
        "Decoding steps (one token of every active request).",
        "counter",
        load(&c.steps),
    );
    line("decode_step_rows_total", "Sequences the decoding steps carried.", "counter", load(&c.step_rows));
    let finished = load(&c.finished);
    summary(
        out,
        "time_to_first_token_seconds",
        "Time from a request's arrival at the engine to its first token.",
        load(&c.ttft_micros),
        finished,
    );
    summary(
        out,
        "generation_seconds",
        "Time spent generating after the first token (tokens/s = completion tokens / this sum).",
        load(&c.generation_micros),
        finished,
    );
}

/// A Prometheus summary without quantiles: `_sum` (seconds) and `_count`.
fn summary(out: &mut String, name: &str, help: &str, sum_micros: usize, count: usize) {
    let _ = write!(
        out,
        "# HELP baimo_{name} {help}\n# TYPE baimo_{name} summary\nbaimo_{name}_sum {}\nbaimo_{name}_count {count}\n",
        sum_micros as f64 / 1e6
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_model_channel_and_status_with_latency_buckets() {
        let m = RequestMetrics::default();
        let record = |status, latency_ms| UsageRecord {
            key_id: None,
            model: "gpt-4".into(),
            channel: "open\"ai".into(),
            prompt_tokens: 3,
            completion_tokens: 5,
            latency_ms,
            status,
            retries: 1,
            stream: false,
            estimated: false,
        };
        m.observe(&record(200, 80));
        m.observe(&record(200, 3000));
        m.observe(&record(429, 10));
        let mut out = String::new();
        m.render(&mut out);
        let l = "model=\"gpt-4\",channel=\"open\\\"ai\"";
        for want in [
            format!("baimo_requests_total{{{l},status=\"200\"}} 2"),
            format!("baimo_requests_total{{{l},status=\"429\"}} 1"),
            format!("baimo_request_duration_seconds_bucket{{{l},le=\"0.05\"}} 1"),
            format!("baimo_request_duration_seconds_bucket{{{l},le=\"0.1\"}} 2"),
            format!("baimo_request_duration_seconds_bucket{{{l},le=\"5\"}} 3"),
            format!("baimo_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} 3"),
            format!("baimo_request_duration_seconds_count{{{l}}} 3"),
            format!("baimo_request_tokens_total{{{l},kind=\"completion\"}} 15"),
            format!("baimo_upstream_retries_total{{{l}}} 3"),
        ] {
            assert!(out.lines().any(|line| line == want), "missing {want} in\n{out}");
        }
    }
}
