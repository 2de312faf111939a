//! `baimo quantize IN.gguf OUT.gguf TYPE`: a GGUF written with its weight matrices encoded in
//! another type, the rest (metadata, tokenizer, template, norms) as they were.
//!
//! Which tensors change follows llama-quantize with `--pure`: every weight of two or more
//! dimensions (the output and embedding matrices too), except a mixture's router
//! (`ffn_gate_inp`), which stays in f32. A matrix whose rows do not split into the type's
//! blocks takes Q5_0 for a K-quant target (as llama-quantize falls back), else F16. The file is
//! streamed: one tensor is in memory at a time, its rows spread over the threads.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use baimo_formats::{Gguf, TensorInfo, Value, gguf_header};
use baimo_kernels::{GgmlType, dequantize, quantize};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF to read (the first part of a split GGUF brings the others).
    input: PathBuf,
    /// The GGUF to write (not the input).
    output: PathBuf,
    /// F32, F16, BF16, Q8_0, Q5_1, Q5_0, Q4_1, Q4_0 or Q4_K.
    #[arg(value_name = "TYPE")]
    dtype: String,
    /// Threads to quantize with (default: one per core).
    #[arg(short, long)]
    threads: Option<usize>,
    /// Print nothing on stderr but errors.
    #[arg(short, long)]
    quiet: bool,
}

/// The types baimo can write, with llama.cpp's `general.file_type` for a file of that type.
const TARGETS: &[(GgmlType, u32)] = &[
    (GgmlType::F32, 0),
    (GgmlType::F16, 1),
    (GgmlType::Q4_0, 2),
    (GgmlType::Q4_1, 3),
    (GgmlType::Q8_0, 7),
    (GgmlType::Q5_0, 8),
    (GgmlType::Q5_1, 9),
    (GgmlType::Q4_K, 15), // llama.cpp's Q4_K_M number: a file mostly of Q4_K
    (GgmlType::BF16, 32),
];

/// The type tensor `t` gets in a file of type `target`.
fn tensor_type(t: &TensorInfo, target: GgmlType) -> GgmlType {
    let is_matrix = t.ne.iter().filter(|&&d| d > 1).count() >= 2 && t.name.ends_with(".weight");
    // Kept as they are: vectors, a mixture's router and GPT-2's position table (as
    // llama-quantize keeps them).
    if !is_matrix || t.name.contains("ffn_gate_inp") || t.name.starts_with("position_embd") {
        return t.dtype;
    }
    let ne0 = t.ne[0];
    if ne0.is_multiple_of(target.block_size() as u64) {
        target
    } else if target.block_size() == 256 && ne0.is_multiple_of(32) {
        GgmlType::Q5_0
    } else {
        GgmlType::F16
    }
}

/// One row of `dtype` from f32 values.
fn encode(dtype: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    match dtype {
        GgmlType::F32 => dst.copy_from_slice(bytemuck_f32(src)),
        GgmlType::F16 => {
            for (d, &x) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&half::f16::from_f32(x).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (d, &x) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&half::bf16::from_f32(x).to_le_bytes());
            }
        }
        _ if quantize(dtype, src, dst) => {}
        _ => bail!("baimo cannot write {}", dtype.name()),
    }
    Ok(())
}

fn bytemuck_f32(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte is a valid u8; the length is in bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

/// Tensor `t` of `g` re-encoded as `to`, rows spread over `threads`.
fn convert(g: &Gguf, t: &TensorInfo, to: GgmlType, threads: usize) -> Result<Vec<u8>> {
    let data = g.tensor_data(t);
    if to == t.dtype {
        return Ok(data.to_vec());
    }
    let ne0 = t.ne.first().copied().unwrap_or(1) as usize;
    let rows = (t.n_elements() as usize) / ne0.max(1);
    let (in_row, out_row) = (
        t.dtype.row_bytes(ne0 as u64).context("row size")? as usize,
        to.row_bytes(ne0 as u64).context("row size")? as usize,
    );
    let mut out = vec![0u8; rows * out_row];
    if out.is_empty() {
        return Ok(out);
    }
    let per_thread = rows.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| -> Result<()> {
        let jobs: Vec<_> = out
            .chunks_mut(per_thread * out_row)
            .enumerate()
            .map(|(j, chunk)| {
                let data = &data;
                scope.spawn(move || -> Result<()> {
                    let mut values = vec![0f32; ne0];
                    for (k, dst) in chunk.chunks_exact_mut(out_row).enumerate() {
                        let r = j * per_thread + k;
                        dequantize(t.dtype, &data[r * in_row..(r + 1) * in_row], &mut values);
                        encode(to, &values, dst)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for job in jobs {
            job.join().map_err(|_| anyhow::anyhow!("a quantizing thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(out)
}

pub fn main(args: Args) -> Result<()> {
    let Some(&(target, file_type)) = TARGETS.iter().find(|(t, _)| t.name().eq_ignore_ascii_case(&args.dtype))
    else {
        let names: Vec<&str> = TARGETS.iter().map(|(t, _)| t.name()).collect();
        bail!("baimo quantize writes {} (not {:?})", names.join(", "), args.dtype);
    };
    if let (Ok(input), Ok(output)) = (args.input.canonicalize(), args.output.canonicalize())
        && input == output
    {
        bail!("the output {} is the input", args.output.display());
    }
    let g = Gguf::open(&args.input).with_context(|| format!("{}", args.input.display()))?;
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let start = std::time::Instant::now();

    // The metadata as it was, for one file of the new type.
    let mut metadata: Vec<(String, Value)> = g
        .metadata()
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("split.") && k != "general.file_type" && k != "general.quantization_version"
        })
        .cloned()
        .collect();
    metadata.push(("general.file_type".into(), Value::U32(file_type)));
    metadata.push(("general.quantization_version".into(), Value::U32(2)));
    let plan: Vec<(&TensorInfo, GgmlType, u64)> = g
        .tensors()
        .iter()
        .map(|t| {
            let to = tensor_type(t, target);
            if to != t.dtype && !t.dtype.is_supported() {
                bail!("tensor {} is {}, which baimo cannot decode", t.name, t.dtype.name());
            }
            let bytes = to.row_bytes(t.n_elements()).context("tensor size")?;
            Ok((t, to, bytes))
        })
        .collect::<Result<_>>()?;
    let quantized_already =
        g.tensors().iter().any(|t| !matches!(t.dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16));
    if quantized_already && !args.quiet {
        eprintln!(
            "note: {} is quantized already; its weights are decoded and encoded again, and the losses add up",
            args.input.display()
        );
    }
    let infos: Vec<(&str, &[u64], GgmlType, u64)> =
        plan.iter().map(|(t, to, bytes)| (t.name.as_str(), t.ne.as_slice(), *to, *bytes)).collect();
    let (header, alignment) = gguf_header(&metadata, &infos);

    // Written next to the output, then renamed: a cut run leaves no half file under its name.
    let mut partial = args.output.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let show_progress = !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let write = |partial: &Path| -> Result<()> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(partial)?);
        out.write_all(&header)?;
        for (i, (t, to, _)) in plan.iter().enumerate() {
            let pos = out.stream_position()?;
            let pad = pos.div_ceil(alignment) * alignment - pos;
            out.write_all(&vec![0u8; pad as usize])?;
            out.write_all(&convert(&g, t, *to, threads).with_context(|| t.name.clone())?)?;
            if show_progress {
                eprint!("\r{}/{} tensors", i + 1, plan.len());
            }
        }
        out.flush()?;
        Ok(())
    };
    if let Err(e) = write(&partial) {
        let _ = std::fs::remove_file(&partial);
        return Err(e.context(format!("writing {}", args.output.display())));
    }
    if let Err(e) = std::fs::rename(&partial, &args.output) {
        let _ = std::fs::remove_file(&partial);
        return Err(e).with_context(|| format!("{}", args.output.display()));
    }
    if !args.quiet {
        let n_target = plan.iter().filter(|(_, to, _)| *to == target).count();
        eprintln!(
            "{}{}: {} of {} tensors in {}, {:.1} MB, {:.1} s",
            if show_progress { "\r" } else { "" },
            args.output.display(),
            n_target,
            plan.len(),
            target.name(),
            std::fs::metadata(&args.output)?.len() as f64 / 1e6,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
