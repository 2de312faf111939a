//! Development aid: how long a barrier and an empty job take on this machine.
use baimo_threads::ThreadPool;
use std::time::Instant;

fn main() {
    let n = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let pool = ThreadPool::new(n);
    let rounds = 100_000;
    let t = Instant::now();
    pool.run(|ctx| {
        for _ in 0..rounds {
            ctx.barrier();
        }
    });
    println!("{n} threads: barrier {:.2} us", t.elapsed().as_secs_f64() * 1e6 / rounds as f64);
    let t = Instant::now();
    for _ in 0..10_000 {
        pool.run(|_| {});
    }
    println!("{n} threads: empty job {:.2} us", t.elapsed().as_secs_f64() * 1e6 / 10_000.0);
    let t = Instant::now();
    for _ in 0..100 {
        pool.run(|ctx| {
            for _ in 0..1000 {
                ctx.for_each_chunk(10, 1, |_| {});
            }
        });
    }
    println!("{n} threads: for_each_chunk(10) {:.2} us", t.elapsed().as_secs_f64() * 1e6 / 100_000.0);
}
