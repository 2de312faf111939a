//! Tensors of a Hugging Face checkpoint served under the GGUF names the family loaders use, so
//! one loader reads both kinds of file. Each family says how its names map; tensors it must
//! reshape at load time (GPT-2's transposed Conv1D weights, fused projections split apart) are
//! registered as derived tensors.

use std::collections::HashMap;

use baimo_formats::{Bytes, HfTensor, HfTensors, StorageType};
use baimo_kernels::{GgmlType, dequantize, quantize};

use crate::ModelError;
use crate::weights::{TensorSource, Weight};

/// How a family names a tensor in its checkpoint: GGUF name → Hugging Face name.
pub type Rename = dyn Fn(&str) -> Option<String>;

pub struct HfSource<'a> {
    tensors: &'a HfTensors,
    rename: &'a Rename,
    /// Tensors made at load time, by GGUF name, with the file name they came from.
    derived: HashMap<String, (String, HfTensor)>,
    /// Encode float matrices in this type at load time (`--quantize`).
    quantize: Option<GgmlType>,
}

/// The computable type of a stored float tensor.
fn float_type(name: &str, dtype: &StorageType) -> Result<GgmlType, ModelError> {
    match dtype {
        StorageType::F32 => Ok(GgmlType::F32),
        StorageType::F16 => Ok(GgmlType::F16),
        StorageType::BF16 => Ok(GgmlType::BF16),
        other => Err(ModelError::UnsupportedType { tensor: name.into(), dtype: other.to_string() }),
    }
}

impl<'a> HfSource<'a> {
    pub fn new(tensors: &'a HfTensors, rename: &'a Rename, quantize: Option<GgmlType>) -> HfSource<'a> {
        HfSource { tensors, rename, derived: HashMap::new(), quantize }
    }

    /// The checkpoint tensor behind a GGUF name, with its name in the file.
    pub fn lookup(&self, name: &str) -> Option<(String, &HfTensor)> {
        if let Some((file_name, t)) = self.derived.get(name) {
            return Some((file_name.clone(), t));
        }
        let file_name = (self.rename)(name)?;
        let t = self.tensors.get(&file_name)?;
        Some((file_name, t))
    }

    fn require(&self, name: &str) -> Result<(String, &HfTensor), ModelError> {
        self.lookup(name)
            .ok_or_else(|| ModelError::MissingTensor((self.rename)(name).unwrap_or_else(|| name.to_string())))
    }

    /// Splits the rows of the fused tensor `fused` (GGUF name; a matrix or a bias) into
    /// consecutive parts of the given row counts, registered under the parts' GGUF names
    /// (Baichuan's `W_pack`, Qwen v1's `c_attn`). The parts point into the same file bytes.
    pub fn split_rows(&mut self, fused: &str, parts: &[(&str, usize)]) -> Result<(), ModelError> {
        let (file_name, t) = self.require(fused)?;
        let total: usize = parts.iter().map(|p| p.1).sum();
        let cols = match t.shape[..] {
            [r, c] if r == total => c,
            [r] if r == total => 1,
            _ => {
                return Err(ModelError::ShapeMismatch {
                    tensor: file_name,
                    expected: format!("[{total}, …]"),
                    found: format!("{:?}", t.shape),
                });
            }
        };
        let elem = t.dtype.size().ok_or_else(|| ModelError::UnsupportedType {
            tensor: file_name.clone(),
            dtype: t.dtype.to_string(),
        })?;
        let row_bytes = cols * elem;
        let mut start = 0;
        let mut made = Vec::with_capacity(parts.len());
        for &(name, rows) in parts {
            let shape = if t.shape.len() == 2 { vec![rows, cols] } else { vec![rows] };
            let data = t.data.slice(start * row_bytes..(start + rows) * row_bytes);
            made.push((
                name.to_string(),
                (file_name.clone(), HfTensor { dtype: t.dtype.clone(), shape, data }),
            ));
            start += rows;
        }
        self.derived.extend(made);
        Ok(())
    }

    /// A matrix (GGUF name) as f32 rows, whatever its stored type (for load-time transforms).
    pub fn matrix_f32(&self, name: &str, rows: usize, cols: usize) -> Result<Vec<f32>, ModelError> {
        let w = self.stored_matrix(name, rows, cols)?;
        let mut out = vec![0f32; rows * cols];
        for (r, row) in out.chunks_exact_mut(cols).enumerate() {
            w.dequantize_row(r, row);
        }
        Ok(out)
    }

    /// A tensor of the file by its own name.
    pub fn file_tensor(&self, file_name: &str) -> Option<&HfTensor> {
        self.tensors.get(file_name)
    }

    /// A 2-D tensor of the file (by its own name) as f32, checked to be `[rows, cols]`.
    pub fn file_matrix_f32(&self, file_name: &str, rows: usize, cols: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.tensors.get(file_name).ok_or_else(|| ModelError::MissingTensor(file_name.into()))?;
        if t.shape != [rows, cols] {
            return Err(ModelError::ShapeMismatch {
                tensor: file_name.into(),
                expected: format!("[{rows}, {cols}]"),
                found: format!("{:?}", t.shape),
            });
        }
        let dtype = float_type(file_name, &t.dtype)?;
        let mut out = vec![0f32; rows * cols];
        dequantize(dtype, &t.data, &mut out);
        Ok(out)
    }

    /// Registers f32 values of `shape` under the GGUF name `name`.
    pub fn insert_f32(&mut self, name: &str, file_name: &str, shape: Vec<usize>, values: &[f32]) {
        let data = Bytes::from_vec(bytemuck::cast_slice(values).to_vec());
        self.derived
            .insert(name.into(), (file_name.into(), HfTensor { dtype: StorageType::F32, shape, data }));
    }

    /// A Conv1D weight (`[in, out]`, GPT-2) registered under `name` as the `[out, in]` matrix the
    /// products use.
    pub fn insert_transposed(
        &mut self,
        name: &str,
        file_name: &str,
        n_in: usize,
        n_out: usize,
    ) -> Result<(), ModelError> {
        let w = self.file_matrix_f32(file_name, n_in, n_out)?;
        let mut t = vec![0f32; n_in * n_out];
        for i in 0..n_in {
            for o in 0..n_out {
                t[o * n_in + i] = w[i * n_out + o];
            }
        }
        self.insert_f32(name, file_name, vec![n_out, n_in], &t);
        Ok(())
    }

    fn stored_matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Weight, ModelError> {
        let (file_name, t) = self.require(name)?;
        if t.shape != [rows, cols] {
            return Err(ModelError::ShapeMismatch {
                tensor: file_name,
                expected: format!("[{rows}, {cols}]"),
                found: format!("{:?}", t.shape),
            });
        }
        Weight::new(&file_name, float_type(&file_name, &t.dtype)?, rows, cols, t.data.clone())
    }
}

impl TensorSource for HfSource<'_> {
    fn has(&self, name: &str) -> bool {
        self.lookup(name).is_some()
    }

    fn matrix_unpacked(&self, name: &str, rows: usize, cols: usize) -> Result<Weight, ModelError> {
        let stored = self.stored_matrix(name, rows, cols)?;
        // llama.cpp's fallbacks for rows a K-quant's 256-value blocks do not divide.
        let target = self.quantize.map(|t| match t {
            GgmlType::Q4_K if !cols.is_multiple_of(256) => GgmlType::Q5_0,
            other => other,
        });
        // A mixture's router stays as stored, as llama-quantize leaves it: its few rows cost
        // nothing, and rounding them would move tokens to other experts.
        let target = target.filter(|_| !name.ends_with("ffn_gate_inp.weight"));
        match target {
            Some(target) if cols.is_multiple_of(target.block_size()) => {
                let row_bytes = target.row_bytes(cols as u64).expect("small row") as usize;
                let mut data = vec![0u8; rows * row_bytes];
                let mut row = vec![0f32; cols];
                for (r, out) in data.chunks_exact_mut(row_bytes).enumerate() {
                    stored.dequantize_row(r, &mut row);
                    if !quantize(target, &row, out) {
                        return Err(ModelError::Unsupported(format!("quantizing to {target}")));
                    }
                }
                Weight::new(&stored.name, target, rows, cols, Bytes::from_vec(data))
            }
            // Rows no block size divides stay as they are (llama.cpp does the same).
            _ => Ok(stored),
        }
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let (file_name, t) = self.require(name)?;
        if t.n_elements() != len || t.shape.iter().filter(|&&d| d != 1).count() > 1 {
            return Err(ModelError::ShapeMismatch {
                tensor: file_name,
                expected: format!("[{len}]"),
                found: format!("{:?}", t.shape),
            });
        }
        let dtype = float_type(&file_name, &t.dtype)?;
        let mut out = vec![0f32; len];
        dequantize(dtype, &t.data, &mut out);
        Ok(out)
    }
}

/// Reads a number from `config.json`.
pub(crate) struct JsonConfig<'a> {
    pub json: &'a serde_json::Value,
}

impl JsonConfig<'_> {
    fn raw(&self, key: &str) -> Option<&serde_json::Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    pub fn usize(&self, key: &str) -> Result<usize, ModelError> {
        let v =
            self.raw(key).ok_or_else(|| ModelError::InvalidConfig(format!("config.json has no {key:?}")))?;
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| ModelError::InvalidConfig(format!("{key} = {v} is not a non-negative integer")))
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize, ModelError> {
        if self.has(key) { self.usize(key) } else { Ok(default) }
    }

    pub fn f32_or(&self, key: &str, default: f32) -> Result<f32, ModelError> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| ModelError::InvalidConfig(format!("{key} = {v} is not a number"))),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, ModelError> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => {
                v.as_bool().ok_or_else(|| ModelError::InvalidConfig(format!("{key} = {v} is not a boolean")))
            }
        }
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.raw(key).and_then(|v| v.as_str())
    }

    pub fn object(&self, key: &str) -> Option<JsonConfig<'_>> {
        self.raw(key).filter(|v| v.is_object()).map(|json| JsonConfig { json })
    }
}
