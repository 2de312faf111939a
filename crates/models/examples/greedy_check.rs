//! Development aid: runs llama.cpp's greedy reference prompts through a GGUF and prints how the
//! logits and tokens compare. `cargo run --release -p baimo-models --example greedy_check -- MODEL.gguf REF.greedy.jsonl`
use baimo_formats::Gguf;
use baimo_models::{LogitsFor, Model};
use baimo_threads::ThreadPool;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let gguf = Gguf::open(args[1].as_ref()).unwrap();
    let model = Model::from_gguf(&gguf).unwrap();
    let pool = ThreadPool::with_available_parallelism();
    // The reference texts end wherever 16 tokens end, sometimes inside a UTF-8 character.
    let text = String::from_utf8_lossy(&std::fs::read(&args[2]).unwrap()).into_owned();
    for line in text.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let ids: Vec<u32> =
            r["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let mut seq = model.new_sequence(4096);
        let t0 = std::time::Instant::now();
        let logits = model.forward(&pool, &mut seq, &ids, LogitsFor::Last).unwrap().to_vec();
        let mut max_diff = 0f32;
        let diffs: Vec<String> = r["top20_last_prompt_logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!("{:+.2}", logits[p[0].as_u64().unwrap() as usize] - p[1].as_f64().unwrap() as f32)
            })
            .collect();
        if std::env::var("SHOW").is_ok() {
            println!("{}", diffs.join(" "));
        }
        for pair in r["top20_last_prompt_logits"].as_array().unwrap() {
            let (id, l) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap() as f32);
            max_diff = max_diff.max((logits[id] - l).abs());
        }
        let argmax = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
        let mut toks = vec![argmax(&logits)];
        let want: Vec<u32> =
            r["greedy_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        while toks.len() < want.len() {
            let l = model.forward(&pool, &mut seq, &[*toks.last().unwrap()], LogitsFor::Last).unwrap();
            toks.push(argmax(l));
        }
        let same = toks.iter().zip(&want).take_while(|(a, b)| a == b).count();
        println!(
            "{:50} top20 max|Δ|={max_diff:.4} top1 {} ref {}  same prefix {same}/{} ({:.0} ms)",
            format!("{:?}", r["prompt"].as_str().unwrap()).chars().take(50).collect::<String>(),
            toks[0],
            want[0],
            want.len(),
            t0.elapsed().as_millis()
        );
    }
}
