//! Weight tensors as the forward pass uses them: 2-D matrices kept in their file encoding (no
//! copy of mmapped data) with the dot-product kernel for their type, and 1-D vectors (norm
//! weights, biases) dequantized to f32 once at load time.

use std::sync::Arc;

use baimo_formats::{Bytes, Gguf};
use baimo_kernels::{GgmlType, PackedMatrix, TileDot, VecDot, dequantize};

use crate::ModelError;

/// A weight matrix of `rows` × `cols` (PyTorch `[out, in]`; ggml `ne = [cols, rows]`), each row
/// encoded in `dtype`.
#[derive(Clone, Debug)]
pub struct Weight {
    pub name: String,
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    data: Bytes,
    row_bytes: usize,
    pub dot: VecDot,
    /// The same rows repacked in groups of 16 for the tiled kernel, where this CPU has one.
    pub tiles: Option<(Arc<PackedMatrix>, TileDot)>,
}

impl Weight {
    pub fn new(
        name: &str,
        dtype: GgmlType,
        rows: usize,
        cols: usize,
        data: Bytes,
    ) -> Result<Weight, ModelError> {
        let unsupported = || ModelError::UnsupportedType { tensor: name.into(), dtype: dtype.name().into() };
        let dot = VecDot::best(dtype).ok_or_else(unsupported)?;
        let row_bytes = dtype
            .row_bytes(cols as u64)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| ModelError::Shape(format!("{name}: rows of {cols} {dtype} values")))?;
        if row_bytes.checked_mul(rows) != Some(data.len()) {
            return Err(ModelError::Shape(format!(
                "{name}: {} bytes of data for {rows} rows of {cols} {dtype} values",
                data.len()
            )));
        }
        // Block structs are read in place; a file whose data section breaks their alignment
        // (only possible with general.alignment = 1) gets its tensor copied once.
        let data =
            if !(data.as_ptr() as usize).is_multiple_of(4) { Bytes::from_vec(data.to_vec()) } else { data };
        Ok(Weight { name: name.into(), dtype, rows, cols, data, row_bytes, dot, tiles: None })
    }

    /// Repacks the rows for the tiled kernel when this CPU has one for the type (for matrices
    /// used in matrix products; an embedding only looked up row by row stays as it is).
    pub fn with_tiles(mut self) -> Weight {
        if let Some(tile) = TileDot::best(self.dtype)
            && let Some(packed) = PackedMatrix::pack(self.dtype, self.rows, self.cols, &self.data)
        {
            self.tiles = Some((Arc::new(packed), tile));
            // Products read only the packed copy from now on: the file's pages of this tensor
            // need not stay resident (rows still read, e.g. a tied embedding, fault back in).
            self.data.release_pages();
        }
        self
    }

    /// The encoded bytes of row `r`.
    #[inline]
    pub fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Row `r` as f32 (embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize(self.dtype, self.row(r), out);
    }

    pub fn n_bytes(&self) -> usize {
        self.data.len()
    }

    /// Rows `start .. start + rows` as a matrix of their own (the same bytes, not copied).
    pub fn row_range(&self, name: &str, start: usize, rows: usize) -> Result<Weight, ModelError> {
        if start.checked_add(rows).is_none_or(|end| end > self.rows) {
            return Err(ModelError::Shape(format!("{}: rows {start}..+{rows} of {}", self.name, self.rows)));
        }
        let data = self.data.slice(start * self.row_bytes..(start + rows) * self.row_bytes);
        Weight::new(name, self.dtype, rows, self.cols, data)
    }
}

/// Where a family's loader finds its tensors, by their GGUF names (`blk.0.attn_q.weight`):
/// a GGUF file, or a Hugging Face checkpoint whose names the family maps onto those.
pub trait TensorSource {
    fn has(&self, name: &str) -> bool;

    /// A matrix of `rows` × `cols` as stored, checked against the expected shape.
    fn matrix_unpacked(&self, name: &str, rows: usize, cols: usize) -> Result<Weight, ModelError>;

    /// A vector of `len` values, as f32.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError>;

    /// A matrix of `rows` × `cols` used in matrix products (repacked where that pays).
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Weight, ModelError> {
        Ok(self.matrix_unpacked(name, rows, cols)?.with_tiles())
    }

    /// A matrix only read row by row (an embedding table): not repacked.
    fn table(&self, name: &str, rows: usize, cols: usize) -> Result<Weight, ModelError> {
        let mut w = self.matrix_unpacked(name, rows, cols)?;
        w.tiles = None;
        Ok(w)
    }

    fn optional_vector(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>, ModelError> {
        if self.has(name) { self.vector(name, len).map(Some) } else { Ok(None) }
    }

    /// `n` matrices stored as one tensor (ggml `ne = [cols, rows, n]`, a mixture's experts), as
    /// one matrix of `n·rows` rows. Only GGUF files store them so.
    fn stacked(&self, name: &str, _n: usize, _rows: usize, _cols: usize) -> Result<Weight, ModelError> {
        Err(ModelError::MissingTensor(name.into()))
    }

    /// The `n` matrices of a mixture's experts, `rows` × `cols` each: the stacked tensor
    /// `merged` (current GGUFs) or one tensor per expert named `per_expert(e)` (older GGUFs,
    /// Hugging Face checkpoints).
    fn experts(
        &self,
        merged: &str,
        per_expert: &dyn Fn(usize) -> String,
        n: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<Weight>, ModelError> {
        if !self.has(merged) {
            return (0..n).map(|e| self.matrix(&per_expert(e), rows, cols)).collect();
        }
        let all = self.stacked(merged, n, rows, cols)?;
        (0..n).map(|e| Ok(all.row_range(&format!("{merged}[{e}]"), e * rows, rows)?.with_tiles())).collect()
    }
}

/// Looks tensors up in a GGUF file and checks their shapes against what the model expects.
pub struct GgufTensors<'a> {
    pub gguf: &'a Gguf,
}

impl TensorSource for GgufTensors<'_> {
    fn has(&self, name: &str) -> bool {
        self.gguf.tensor_info(name).is_some()
    }

    fn matrix_unpacked(&self, name: &str, rows: usize, cols: usize) -> Result<Weight, ModelError> {
        let info = self.gguf.tensor_info(name).ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        let expected = [cols as u64, rows as u64];
        let ne: Vec<u64> = info.ne.iter().copied().chain(std::iter::repeat(1)).take(4).collect();
        if ne[..2] != expected || ne[2..] != [1, 1] {
            return Err(ModelError::ShapeMismatch {
                tensor: name.into(),
                expected: format!("[{cols}, {rows}]"),
                found: format!("{:?}", info.ne),
            });
        }
        Weight::new(name, info.dtype, rows, cols, self.gguf.tensor_data(info))
    }

    fn stacked(&self, name: &str, n: usize, rows: usize, cols: usize) -> Result<Weight, ModelError> {
        let info = self.gguf.tensor_info(name).ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        let ne: Vec<u64> = info.ne.iter().copied().chain(std::iter::repeat(1)).take(4).collect();
        let total = n.checked_mul(rows);
        if ne != [cols as u64, rows as u64, n as u64, 1] || total.is_none() {
            return Err(ModelError::ShapeMismatch {
                tensor: name.into(),
                expected: format!("[{cols}, {rows}, {n}]"),
                found: format!("{:?}", info.ne),
            });
        }
        Weight::new(name, info.dtype, n * rows, cols, self.gguf.tensor_data(info))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let info = self.gguf.tensor_info(name).ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        if info.n_elements() != len as u64 || info.ne.iter().filter(|&&d| d != 1).count() > 1 {
            return Err(ModelError::ShapeMismatch {
                tensor: name.into(),
                expected: format!("[{len}]"),
                found: format!("{:?}", info.ne),
            });
        }
        if !info.dtype.is_supported() {
            return Err(ModelError::UnsupportedType { tensor: name.into(), dtype: info.dtype.name().into() });
        }
        let mut out = vec![0f32; len];
        dequantize(info.dtype, &self.gguf.tensor_data(info), &mut out);
        Ok(out)
    }
}

/// A source where some tensors are row ranges of fused ones (llama.cpp's `qwen` GGUFs keep q, k
/// and v in one `attn_qkv`): `name → (fused name, first row, rows, fused rows)`.
pub struct SplitRows<'a> {
    pub base: &'a dyn TensorSource,
    pub parts: std::collections::HashMap<String, (String, usize, usize, usize)>,
}

impl TensorSource for SplitRows<'_> {
    fn has(&self, name: &str) -> bool {
        self.parts.contains_key(name) || self.base.has(name)
    }

    fn matrix_unpacked(&self, name: &str, rows: usize, cols: usize) -> Result<Weight, ModelError> {
        match self.parts.get(name) {
            Some((fused, start, n, total)) if *n == rows => {
                self.base.matrix_unpacked(fused, *total, cols)?.row_range(name, *start, rows)
            }
            Some((fused, _, n, _)) => {
                Err(ModelError::Shape(format!("{name}: {n} rows of {fused}, expected {rows}")))
            }
            None => self.base.matrix_unpacked(name, rows, cols),
        }
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        match self.parts.get(name) {
            Some((fused, start, n, total)) if *n == len => {
                Ok(self.base.vector(fused, *total)?[*start..*start + len].to_vec())
            }
            Some((fused, _, n, _)) => {
                Err(ModelError::Shape(format!("{name}: {n} values of {fused}, expected {len}")))
            }
            None => self.base.vector(name, len),
        }
    }

    fn stacked(&self, name: &str, n: usize, rows: usize, cols: usize) -> Result<Weight, ModelError> {
        self.base.stacked(name, n, rows, cols)
    }
}
