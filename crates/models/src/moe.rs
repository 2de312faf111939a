//! The mixture-of-experts feed-forward of Mixtral, Qwen2-MoE and Qwen3-MoE (Shazeer et al. 2017,
//! "Outrageously Large Neural Networks"; Jiang et al. 2024, "Mixtral of Experts"):
//! ```text
//! r = softmax(W_router · m)                      one probability per expert
//! E = top-k(r);  w_e = r_e  (÷ Σ_{e∈E} r_e when norm_topk_prob; always for Mixtral)
//! y = Σ_{e∈E} w_e · W_down,e · (silu(W_gate,e · m) ⊙ W_up,e · m)
//!   + σ(g · m) · W_down,s · (silu(W_gate,s · m) ⊙ W_up,s · m)   Qwen2-MoE's shared expert
//! ```
//! Each token runs only its `k` experts: an expert's matrices are read once per step for the
//! tokens routed to it, and not at all when none is, so a decoding step reads the active
//! parameters (≈ k / n_experts of the experts' bytes), not all of them.
//!
//! Reference: transformers `modeling_mixtral.py`, `modeling_qwen2_moe.py`,
//! `modeling_qwen3_moe.py`; llama.cpp `build_moe_ffn`.

use baimo_threads::{Ctx, SharedMut};

use crate::ModelError;
use crate::parallel::{Glu, SharedActs, Store, fill_rows, matmul, matmul_glu, needs, requantize};
use crate::state::Activations;
use crate::weights::{TensorSource, Weight};

/// The experts of a model, as its config gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeConfig {
    pub num_experts: usize,
    /// Experts per token (`num_experts_per_tok`, GGUF `expert_used_count`).
    pub num_experts_per_tok: usize,
    /// Rows of each expert's gate and up projections (`moe_intermediate_size`).
    pub moe_intermediate_size: usize,
    /// Rows of the shared expert (Qwen2-MoE); 0 without one.
    pub shared_expert_intermediate_size: usize,
    /// Renormalize the chosen experts' probabilities to sum to 1.
    pub norm_topk_prob: bool,
}

impl MoeConfig {
    pub(crate) fn validate(&self) -> Result<(), ModelError> {
        let c = self;
        // A router row per expert is sized by num_experts: bound it like any other dimension.
        if c.num_experts == 0 || c.num_experts > 4096 {
            return Err(ModelError::InvalidConfig(format!("{} experts", c.num_experts)));
        }
        if c.num_experts_per_tok == 0 || c.num_experts_per_tok > c.num_experts {
            return Err(ModelError::InvalidConfig(format!(
                "{} experts per token of {}",
                c.num_experts_per_tok, c.num_experts
            )));
        }
        if c.moe_intermediate_size == 0 {
            return Err(ModelError::InvalidConfig("experts of zero width".into()));
        }
        Ok(())
    }
}

/// One expert: a SwiGLU feed-forward.
pub(crate) struct Expert {
    gate: Weight, // (ff, hidden)
    up: Weight,   // (ff, hidden)
    down: Weight, // (hidden, ff)
}

impl Expert {
    fn n_bytes(&self) -> usize {
        self.gate.n_bytes() + self.up.n_bytes() + self.down.n_bytes()
    }
}

/// A layer's mixture: the router, the routed experts and, for Qwen2-MoE, the shared expert with
/// its sigmoid gate.
pub(crate) struct Moe {
    router: Weight, // (n_experts, hidden)
    experts: Vec<Expert>,
    shared: Option<Expert>,
    shared_gate: Option<Vec<f32>>, // (hidden)
    top_k: usize,
    norm_topk_prob: bool,
}

impl Moe {
    /// Layer `i`'s mixture, by GGUF names: `ffn_gate_inp` (router), `ffn_{gate,up,down}_exps`
    /// (the experts stacked, or `ffn_{gate,up,down}.{e}` one per expert) and
    /// `ffn_{gate,up,down}_shexp` + `ffn_gate_inp_shexp` (shared expert).
    pub(crate) fn load(
        t: &dyn TensorSource,
        i: usize,
        c: &MoeConfig,
        hidden: usize,
    ) -> Result<Moe, ModelError> {
        let name = |n: &str| format!("blk.{i}.{n}");
        let (n, ff) = (c.num_experts, c.moe_intermediate_size);
        let router = t.matrix(&name("ffn_gate_inp.weight"), n, hidden)?;
        let stack = |part: &str, rows: usize, cols: usize| {
            t.experts(
                &name(&format!("ffn_{part}_exps.weight")),
                &|e| name(&format!("ffn_{part}.{e}.weight")),
                n,
                rows,
                cols,
            )
        };
        let (gates, ups, downs) =
            (stack("gate", ff, hidden)?, stack("up", ff, hidden)?, stack("down", hidden, ff)?);
        let experts = gates
            .into_iter()
            .zip(ups)
            .zip(downs)
            .map(|((gate, up), down)| Expert { gate, up, down })
            .collect();
        let (shared, shared_gate) = match c.shared_expert_intermediate_size {
            0 => (None, None),
            s => (
                Some(Expert {
                    gate: t.matrix(&name("ffn_gate_shexp.weight"), s, hidden)?,
                    up: t.matrix(&name("ffn_up_shexp.weight"), s, hidden)?,
                    down: t.matrix(&name("ffn_down_shexp.weight"), hidden, s)?,
                }),
                t.optional_vector(&name("ffn_gate_inp_shexp.weight"), hidden)?,
            ),
        };
        Ok(Moe {
            router,
            experts,
            shared,
            shared_gate,
            top_k: c.num_experts_per_tok,
            norm_topk_prob: c.norm_topk_prob,
        })
    }

    /// Matrices read by the first products (from the normalized input).
    pub(crate) fn input_weights(&self) -> Vec<&Weight> {
        let mut w = vec![&self.router];
        w.extend(self.experts.iter().chain(&self.shared).flat_map(|e| [&e.gate, &e.up]));
        w
    }

    /// Bytes of expert weights one token reads (`top_k` routed experts plus the shared one and
    /// the router): what a decoding step streams, against `weights()` for the whole layer.
    pub(crate) fn active_bytes(&self) -> usize {
        let routed = self.experts.first().map_or(0, Expert::n_bytes) * self.top_k;
        routed + self.shared.as_ref().map_or(0, Expert::n_bytes) + self.router.n_bytes()
    }

    /// Bytes of all the mixture's matrices.
    pub(crate) fn total_bytes(&self) -> usize {
        self.experts.iter().chain(&self.shared).map(Expert::n_bytes).sum::<usize>() + self.router.n_bytes()
    }

    /// `x[t] += y(m_t)` for the `n` rows of `input` (the normalized residual stream).
    pub(crate) fn forward(
        &self,
        ctx: &Ctx<'_>,
        input: &SharedActs<'_>,
        n: usize,
        x: &SharedMut<'_, f32>,
        s: &SharedScratch<'_>,
    ) {
        let (hidden, n_experts) = (self.router.cols, self.router.rows);
        matmul(ctx, &[&self.router], input, n, &s.router, n_experts, Store::Write { bias: None });
        // Every thread routes for itself (a few hundred values): all reach the same lists, so
        // all take the same steps below.
        // SAFETY: the router logits were written in the step above, which ended at a barrier.
        let logits = unsafe { &s.router.get()[..n * n_experts] };
        let routes = route(logits, n_experts, self.top_k, self.norm_topk_prob);
        // Until every thread has its routes, none may go on: a thread running ahead alone could
        // reach the next layer's router product and overwrite the logits another still reads.
        ctx.barrier();
        let all_tokens =
            |tokens: &[(usize, f32)]| tokens.len() == n && tokens.iter().enumerate().all(|(i, t)| t.0 == i);
        for (expert, tokens) in self.experts.iter().zip(&routes) {
            if tokens.is_empty() {
                continue;
            }
            // The rows routed here, gathered (a decoding step's one token needs no copy).
            let rows = if all_tokens(tokens) {
                input
            } else {
                fill_rows(ctx, &s.input, tokens.len(), |i, out| out.copy_from_slice(input.row(tokens[i].0)));
                &s.input
            };
            self.run_expert(ctx, expert, rows, tokens.len(), &s.mid, &s.out);
            scatter_add(ctx, x, &s.out, hidden, tokens.len(), |i| tokens[i]);
        }
        if let Some(shared) = &self.shared {
            self.run_expert(ctx, shared, input, n, &s.shared_mid, &s.out);
            scatter_add(ctx, x, &s.out, hidden, n, |t| {
                let gate = match &self.shared_gate {
                    Some(g) => sigmoid(input.row(t).iter().zip(g).map(|(a, b)| a * b).sum()),
                    None => 1.0,
                };
                (t, gate)
            });
        }
    }

    /// `out[i] = W_down · (silu(W_gate · r_i) ⊙ W_up · r_i)` for the `m` rows of `rows`.
    fn run_expert(
        &self,
        ctx: &Ctx<'_>,
        e: &Expert,
        rows: &SharedActs<'_>,
        m: usize,
        mid: &SharedActs<'_>,
        out: &SharedMut<'_, f32>,
    ) {
        let ff = e.gate.rows;
        matmul_glu(ctx, &e.gate, &e.up, rows, m, mid.f32_shared(), ff, Glu::Silu);
        requantize(ctx, mid, m);
        matmul(ctx, &[&e.down], mid, m, out, self.router.cols, Store::Write { bias: None });
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `x[t] += w · out[i]` for the `m` rows `i` of `out`, where `(t, w) = token(i)`; each token
/// appears once, so rows are disjoint. `token` runs inside the step: what it reads is not
/// written in it.
fn scatter_add(
    ctx: &Ctx<'_>,
    x: &SharedMut<'_, f32>,
    out: &SharedMut<'_, f32>,
    hidden: usize,
    m: usize,
    token: impl Fn(usize) -> (usize, f32),
) {
    ctx.for_each_chunk(m, 1, |items| {
        for i in items {
            let (t, w) = token(i);
            // SAFETY: row t of x belongs to this item alone; `out` is not written in this step.
            let (dst, src) = unsafe {
                (x.slice_mut(t * hidden..(t + 1) * hidden), &out.get()[i * hidden..(i + 1) * hidden])
            };
            dst.iter_mut().zip(src).for_each(|(d, &v)| *d += w * v);
        }
    });
}

/// For each expert, the tokens routed to it with their weights, in token order. Ties between
/// equal probabilities go to the lower expert index.
fn route(logits: &[f32], n_experts: usize, top_k: usize, norm: bool) -> Vec<Vec<(usize, f32)>> {
    let mut routes = vec![Vec::new(); n_experts];
    let mut order: Vec<usize> = Vec::with_capacity(n_experts);
    let mut probs = vec![0f32; n_experts];
    for (t, row) in logits.chunks_exact(n_experts).enumerate() {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        probs.iter_mut().zip(row).for_each(|(p, &l)| *p = (l - max).exp());
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        order.clear();
        order.extend(0..n_experts);
        // NaN logits (a broken model) sort last instead of panicking.
        order.sort_by(|&a, &b| probs[b].partial_cmp(&probs[a]).unwrap_or(std::cmp::Ordering::Equal));
        let chosen = &order[..top_k];
        let scale = if norm { 1.0 / chosen.iter().map(|&e| probs[e]).sum::<f32>() } else { 1.0 };
        for &e in chosen {
            routes[e].push((t, probs[e] * scale));
        }
    }
    routes
}

/// Buffers of the mixture for a batch of `batch` tokens.
pub struct Scratch {
    router: Vec<f32>,        // (batch, n_experts)
    input: Activations,      // (batch, hidden) the rows routed to one expert
    mid: Activations,        // (batch, moe_intermediate) a routed expert's hidden layer
    shared_mid: Activations, // (batch, shared expert's width)
    out: Vec<f32>,           // (batch, hidden) one expert's output
}

pub(crate) struct SharedScratch<'a> {
    router: SharedMut<'a, f32>,
    input: SharedActs<'a>,
    mid: SharedActs<'a>,
    shared_mid: SharedActs<'a>,
    out: SharedMut<'a, f32>,
}

impl Scratch {
    /// For the mixtures of `layers` (none: an empty scratch).
    pub(crate) fn new<'m>(
        layers: impl Iterator<Item = &'m Moe> + Clone,
        hidden: usize,
        batch: usize,
    ) -> Scratch {
        let n_experts = layers.clone().map(|m| m.router.rows).max().unwrap_or(0);
        let inputs: Vec<&Weight> = layers.clone().flat_map(|m| m.input_weights()).collect();
        let routed: Vec<&Expert> = layers.clone().flat_map(|m| &m.experts).collect();
        let shared: Vec<&Expert> = layers.flat_map(|m| &m.shared).collect();
        // Every routed expert has the config's width, and so has every shared one.
        let hidden_layer = |experts: &[&Expert]| {
            let downs: Vec<&Weight> = experts.iter().map(|e| &e.down).collect();
            let (q32, q256) = needs(&downs);
            Activations::new(experts.first().map_or(0, |e| e.gate.rows), batch, q32, q256)
        };
        let (q32, q256) = needs(&inputs);
        Scratch {
            router: vec![0.0; batch * n_experts],
            input: Activations::new(hidden, batch, q32, q256),
            mid: hidden_layer(&routed),
            shared_mid: hidden_layer(&shared),
            out: vec![0.0; batch * hidden],
        }
    }

    pub(crate) fn shared(&mut self, exact: bool) -> SharedScratch<'_> {
        SharedScratch {
            router: SharedMut::new(&mut self.router),
            input: SharedActs::new(&mut self.input, exact),
            mid: SharedActs::new(&mut self.mid, exact),
            shared_mid: SharedActs::new(&mut self.shared_mid, exact),
            out: SharedMut::new(&mut self.out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn routing_picks_the_top_k_and_renormalizes() {
        // Two tokens, four experts.
        let logits = [0.0, 2.0, 1.0, -1.0, 3.0, 3.0, 0.0, 0.0];
        let routes = route(&logits, 4, 2, true);
        let p = |row: &[f32], e: usize| {
            let z: f32 = row.iter().map(|l| l.exp()).sum();
            row[e].exp() / z
        };
        let (r0, r1) = (&logits[..4], &logits[4..]);
        // Token 0: experts 1 and 2; token 1: experts 0 and 1 (a tie, lower index first).
        assert_eq!(routes[0].iter().map(|r| r.0).collect::<Vec<_>>(), [1]);
        assert_eq!(routes[1].iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(routes[2].iter().map(|r| r.0).collect::<Vec<_>>(), [0]);
        assert!(routes[3].is_empty());
        let w01 = routes[1][0].1;
        assert!((w01 - p(r0, 1) / (p(r0, 1) + p(r0, 2))).abs() < 1e-6);
        assert!((routes[0][0].1 - 0.5).abs() < 1e-6 && (routes[1][1].1 - 0.5).abs() < 1e-6);
        // Without renormalization the weights are the softmax probabilities.
        let plain = route(&logits, 4, 2, false);
        assert!((plain[2][0].1 - p(r0, 2)).abs() < 1e-6);
        assert!((plain[0][0].1 - p(r1, 0)).abs() < 1e-6);
    }
}
