//! GGUF, llama.cpp's model file: a header, typed key/value metadata, tensor descriptions and an
//! aligned data section, all little-endian.
//!
//! ```text
//! "GGUF" u32 version, u64 tensor_count, u64 kv_count
//! kv_count × (string key, u32 value_type, value)         string = u64 len + UTF-8 bytes
//!                                                        array  = u32 elem_type, u64 n, n × elem
//! tensor_count × (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset)
//! padding to general.alignment (default 32), then the tensor data; offsets are relative to it
//! ```
//!
//! [`Gguf::parse`] checks every count, length, shape and offset against the file size before it
//! allocates or slices anything, so a damaged or hostile file gives a [`FormatError`], not a panic.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use baimo_kernels::GgmlType;

use crate::{Bytes, FormatError};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_DIMS: u32 = 4;
/// The GGUF specification's limit on a metadata key.
const MAX_KEY_BYTES: u64 = 65_535;
/// Far above any real tensor name (llama.cpp's limit is 64 bytes).
const MAX_TENSOR_NAME_BYTES: u64 = 4096;
const MAX_ARRAY_NESTING: usize = 8;
/// The most memory reserved ahead for the items a count announces; beyond it, vectors grow as
/// items are actually read.
const MAX_RESERVE_BYTES: usize = 1 << 20;

/// An empty vector with room for `count` items, or for as many as fit in [`MAX_RESERVE_BYTES`].
/// A count is only checked against the file size, and an item in memory can be several times
/// larger than its encoding (a 56-byte `(String, Value)` for a 13-byte key/value pair), so
/// reserving `count` items up front could ask for many times the file's size before the first
/// item turns out to be bad.
fn reserve<T>(count: u64) -> Vec<T> {
    let max = (MAX_RESERVE_BYTES / std::mem::size_of::<T>().max(1)) as u64;
    Vec::with_capacity(count.min(max) as usize)
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ArrayValue),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array, stored by element type so that long vocabularies stay compact.
#[derive(Clone, Debug, PartialEq)]
pub enum ArrayValue {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<ArrayValue>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl ArrayValue {
    pub fn len(&self) -> usize {
        match self {
            ArrayValue::U8(v) => v.len(),
            ArrayValue::I8(v) => v.len(),
            ArrayValue::U16(v) => v.len(),
            ArrayValue::I16(v) => v.len(),
            ArrayValue::U32(v) => v.len(),
            ArrayValue::I32(v) => v.len(),
            ArrayValue::F32(v) => v.len(),
            ArrayValue::Bool(v) => v.len(),
            ArrayValue::String(v) => v.len(),
            ArrayValue::Array(v) => v.len(),
            ArrayValue::U64(v) => v.len(),
            ArrayValue::I64(v) => v.len(),
            ArrayValue::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn type_name(&self) -> String {
        let elem = match self {
            ArrayValue::U8(_) => "u8",
            ArrayValue::I8(_) => "i8",
            ArrayValue::U16(_) => "u16",
            ArrayValue::I16(_) => "i16",
            ArrayValue::U32(_) => "u32",
            ArrayValue::I32(_) => "i32",
            ArrayValue::F32(_) => "f32",
            ArrayValue::Bool(_) => "bool",
            ArrayValue::String(_) => "string",
            ArrayValue::Array(_) => "array",
            ArrayValue::U64(_) => "u64",
            ArrayValue::I64(_) => "i64",
            ArrayValue::F64(_) => "f64",
        };
        format!("an array of {elem}")
    }

    /// The elements as signed integers, whatever integer type the writer chose.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        Some(match self {
            ArrayValue::U8(v) => v.iter().map(|&x| x as i64).collect(),
            ArrayValue::I8(v) => v.iter().map(|&x| x as i64).collect(),
            ArrayValue::U16(v) => v.iter().map(|&x| x as i64).collect(),
            ArrayValue::I16(v) => v.iter().map(|&x| x as i64).collect(),
            ArrayValue::U32(v) => v.iter().map(|&x| x as i64).collect(),
            ArrayValue::I32(v) => v.iter().map(|&x| x as i64).collect(),
            ArrayValue::U64(v) => v.iter().map(|&x| x.min(i64::MAX as u64) as i64).collect(),
            ArrayValue::I64(v) => v.clone(),
            _ => return None,
        })
    }
}

impl Value {
    fn type_name(&self) -> String {
        match self {
            Value::U8(_) => "u8".into(),
            Value::I8(_) => "i8".into(),
            Value::U16(_) => "u16".into(),
            Value::I16(_) => "i16".into(),
            Value::U32(_) => "u32".into(),
            Value::I32(_) => "i32".into(),
            Value::F32(_) => "f32".into(),
            Value::Bool(_) => "bool".into(),
            Value::String(_) => "a string".into(),
            Value::Array(a) => a.type_name(),
            Value::U64(_) => "u64".into(),
            Value::I64(_) => "i64".into(),
            Value::F64(_) => "f64".into(),
        }
    }

    /// Any integer value that is non-negative, as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(x) => Some(x as u64),
            Value::U16(x) => Some(x as u64),
            Value::U32(x) => Some(x as u64),
            Value::U64(x) => Some(x),
            Value::I8(x) => u64::try_from(x).ok(),
            Value::I16(x) => u64::try_from(x).ok(),
            Value::I32(x) => u64::try_from(x).ok(),
            Value::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    /// Any numeric value, as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(x) => Some(x as f64),
            Value::F64(x) => Some(x),
            _ => self.as_u64().map(|x| x as f64).or(match *self {
                Value::I8(x) => Some(x as f64),
                Value::I16(x) => Some(x as f64),
                Value::I32(x) => Some(x as f64),
                Value::I64(x) => Some(x as f64),
                _ => None,
            }),
        }
    }
}

/// Where one tensor's data lies, and its shape in ggml order (`ne[0]` is the row length).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub ne: Vec<u64>,
    pub dtype: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        // Checked not to overflow when the file was parsed.
        self.ne.iter().product()
    }
}

/// A parsed GGUF file, or the parts of a split one (llama.cpp's `gguf-split`) read as one.
/// Tensor data is not read until asked for; it is a view into the map.
#[derive(Debug)]
pub struct Gguf {
    /// The file, or each part of a split file.
    parts: Vec<Bytes>,
    /// For each tensor, the part its data is in.
    tensor_part: Vec<usize>,
    pub version: u32,
    pub alignment: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    /// Tensor name → index in `tensors` (a loader looks up every tensor by name).
    tensor_index: HashMap<String, usize>,
}

impl Gguf {
    /// Opens a GGUF file. The first part of a split file (`name-00001-of-0000N.gguf`, with
    /// `split.count` N) brings its other parts along, from the same folder, as llama.cpp does.
    pub fn open(path: &Path) -> Result<Gguf, FormatError> {
        let first = Gguf::parse(Bytes::map_file(path)?)?;
        let count = match first.get("split.count") {
            None => return Ok(first),
            Some(v) => v.as_u64().ok_or_else(|| wrong_type("split.count", "an unsigned integer", v))?,
        };
        let bad = |reason: String| FormatError::BadSplit { path: path.to_path_buf(), reason };
        let index = first.get("split.no").and_then(Value::as_u64).unwrap_or(0);
        if count <= 1 {
            return Ok(first);
        }
        if index != 0 {
            return Err(bad(format!("this is part {} of {count}; open the first part", index + 1)));
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let prefix = split_prefix(name, count).ok_or_else(|| {
            bad(format!("a file of {count} parts must be named NAME-00001-of-{count:05}.gguf"))
        })?;
        let mut rest = Vec::new();
        for i in 2..=count {
            let part_path = path.with_file_name(format!("{prefix}-{i:05}-of-{count:05}.gguf"));
            let part = Gguf::parse(Bytes::map_file(&part_path)?)?;
            if part.get("split.no").and_then(Value::as_u64) != Some(i - 1)
                || part.get("split.count").and_then(Value::as_u64) != Some(count)
            {
                return Err(bad(format!("{} is not part {i} of {count}", part_path.display())));
            }
            rest.push(part);
        }
        Gguf::join(first, rest).map_err(bad)
    }

    /// Parts 2.. of a split file joined to the first: the first's metadata, every part's
    /// tensors (each name once).
    fn join(mut first: Gguf, rest: Vec<Gguf>) -> Result<Gguf, String> {
        if let Some(Some(expected)) = first.get("split.tensors.count").map(Value::as_u64) {
            let total = first.tensors.len() as u64 + rest.iter().map(|p| p.tensors.len() as u64).sum::<u64>();
            if total != expected {
                return Err(format!("the parts hold {total} tensors, split.tensors.count says {expected}"));
            }
        }
        for part in rest {
            let part_index = first.parts.len();
            first.parts.extend(part.parts);
            for info in part.tensors {
                if first.tensor_index.contains_key(&info.name) {
                    return Err(format!("tensor {:?} is in two parts", info.name));
                }
                first.tensor_index.insert(info.name.clone(), first.tensors.len());
                first.tensors.push(info);
                first.tensor_part.push(part_index);
            }
        }
        Ok(first)
    }

    pub fn parse(bytes: Bytes) -> Result<Gguf, FormatError> {
        let mut r = Reader { buf: &bytes, pos: 0 };
        let magic = r
            .take(4, "the magic number")
            .map_err(|_| FormatError::NotGguf { found: bytes[..bytes.len().min(4)].to_vec() })?;
        if magic != MAGIC {
            return Err(FormatError::NotGguf { found: magic.to_vec() });
        }
        let version = r.u32("the version")?;
        if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            return Err(FormatError::BigEndian);
        }
        if version != 2 && version != 3 {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let tensor_count = r.u64("the tensor count")?;
        let kv_count = r.u64("the metadata count")?;
        // A key/value pair takes at least 12 bytes, a tensor description at least 24.
        r.check_count(kv_count, 12, "the metadata count")?;
        r.check_count(tensor_count, 24, "the tensor count")?;

        let mut metadata = reserve(kv_count);
        let mut seen_keys = HashSet::new();
        for _ in 0..kv_count {
            let key = r.name("a metadata key", MAX_KEY_BYTES)?;
            let type_id = r.u32("a metadata value type")?;
            let value = r.value(&key, type_id, 0)?;
            if !seen_keys.insert(key.clone()) {
                return Err(FormatError::DuplicateKey(key));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => {
                let a = v.as_u64().ok_or_else(|| FormatError::WrongType {
                    key: "general.alignment".into(),
                    expected: "an unsigned integer",
                    found: v.type_name(),
                })?;
                if a == 0 || !a.is_power_of_two() {
                    return Err(FormatError::BadAlignment(a));
                }
                a
            }
        };

        let mut infos = reserve(tensor_count);
        let mut seen_names = HashSet::new();
        for _ in 0..tensor_count {
            let name = r.name("a tensor name", MAX_TENSOR_NAME_BYTES)?;
            let n_dims = r.u32("a tensor's dimension count")?;
            if n_dims > MAX_DIMS {
                return Err(FormatError::TooManyDims { tensor: name, n_dims });
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                ne.push(r.u64("a tensor dimension")?);
            }
            let type_id = r.u32("a tensor type")?;
            let offset = r.u64("a tensor offset")?;
            if !seen_names.insert(name.clone()) {
                return Err(FormatError::DuplicateTensor(name));
            }
            infos.push((name, ne, type_id, offset));
        }

        let data_start = r.pos as u64;
        let data_start = data_start.div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        let mut tensors = Vec::with_capacity(infos.len());
        // As ggml requires: tensors lie one after another in the order they are listed, each
        // padded to the alignment. (This also bounds the total size of all tensors by the file's,
        // so overlapping tensors cannot multiply what a loader copies out of a small file.)
        let mut expected_offset = 0u64;
        for (name, ne, type_id, rel_offset) in infos {
            let Some(dtype) = GgmlType::from_id(type_id) else {
                return Err(FormatError::UnknownTensorType { tensor: name, type_id });
            };
            let n_elements = ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let Some(n_elements) = n_elements else {
                return Err(FormatError::ShapeOverflow { tensor: name, dims: ne });
            };
            let ne0 = ne.first().copied().unwrap_or(1);
            if ne0 % dtype.block_size() as u64 != 0 {
                return Err(FormatError::BadRowLength {
                    tensor: name,
                    ne0,
                    dtype: dtype.name().into(),
                    block: dtype.block_size(),
                });
            }
            let Some(n_bytes) = dtype.row_bytes(n_elements) else {
                return Err(FormatError::ShapeOverflow { tensor: name, dims: ne });
            };
            if rel_offset % alignment != 0 {
                return Err(FormatError::Misaligned { tensor: name, offset: rel_offset, alignment });
            }
            let offset = data_start.checked_add(rel_offset);
            let end = offset.and_then(|o| o.checked_add(n_bytes));
            match (offset, end) {
                (Some(_), Some(end)) if end <= file_len && rel_offset != expected_offset => {
                    return Err(FormatError::OutOfOrder {
                        tensor: name,
                        offset: rel_offset,
                        expected: expected_offset,
                    });
                }
                (Some(offset), Some(end)) if end <= file_len => {
                    expected_offset = rel_offset + n_bytes.div_ceil(alignment) * alignment;
                    tensors.push(TensorInfo { name, ne, dtype, offset, n_bytes });
                }
                _ => {
                    return Err(FormatError::TensorOutOfBounds {
                        tensor: name,
                        offset: data_start.saturating_add(rel_offset),
                        size: n_bytes,
                        file_len,
                    });
                }
            }
        }
        let tensor_index = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        let tensor_part = vec![0; tensors.len()];
        Ok(Gguf { parts: vec![bytes], tensor_part, version, alignment, metadata, tensors, tensor_index })
    }

    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn require(&self, key: &str) -> Result<&Value, FormatError> {
        self.get(key).ok_or_else(|| FormatError::MissingKey(key.into()))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, FormatError> {
        match self.require(key)? {
            Value::String(s) => Ok(s),
            v => Err(wrong_type(key, "a string", v)),
        }
    }

    /// An unsigned integer of any width.
    pub fn get_u64(&self, key: &str) -> Result<u64, FormatError> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| wrong_type(key, "an unsigned integer", v))
    }

    pub fn get_usize(&self, key: &str) -> Result<usize, FormatError> {
        let x = self.get_u64(key)?;
        usize::try_from(x).map_err(|_| FormatError::WrongType {
            key: key.into(),
            expected: "a size that fits in memory",
            found: x.to_string(),
        })
    }

    pub fn get_f32(&self, key: &str) -> Result<f32, FormatError> {
        let v = self.require(key)?;
        v.as_f64().map(|x| x as f32).ok_or_else(|| wrong_type(key, "a number", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, FormatError> {
        match self.require(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(wrong_type(key, "a bool", v)),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<&ArrayValue, FormatError> {
        match self.require(key)? {
            Value::Array(a) => Ok(a),
            v => Err(wrong_type(key, "an array", v)),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<&[String], FormatError> {
        match self.get_array(key)? {
            ArrayValue::String(v) => Ok(v),
            a => Err(FormatError::WrongType {
                key: key.into(),
                expected: "an array of strings",
                found: a.type_name(),
            }),
        }
    }

    pub fn get_f32_array(&self, key: &str) -> Result<&[f32], FormatError> {
        match self.get_array(key)? {
            ArrayValue::F32(v) => Ok(v),
            a => Err(FormatError::WrongType {
                key: key.into(),
                expected: "an array of f32",
                found: a.type_name(),
            }),
        }
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor, a view into the file (no copy).
    pub fn tensor_data(&self, info: &TensorInfo) -> Bytes {
        let part = self.tensor_index.get(&info.name).map_or(0, |&i| self.tensor_part[i]);
        // Offsets were checked against the part's length in `parse`.
        self.parts[part].slice(info.offset as usize..(info.offset + info.n_bytes) as usize)
    }

    /// Bytes of the file (of all its parts).
    pub fn file_len(&self) -> u64 {
        self.parts.iter().map(|p| p.len() as u64).sum()
    }
}

/// `NAME` of `NAME-00001-of-0000N.gguf`, the first part of `count`.
fn split_prefix(file_name: &str, count: u64) -> Option<&str> {
    file_name.strip_suffix(&format!("-00001-of-{count:05}.gguf"))
}

fn wrong_type(key: &str, expected: &'static str, v: &Value) -> FormatError {
    FormatError::WrongType { key: key.into(), expected, found: v.type_name() }
}

/// A cursor over the file that refuses to read past its end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], FormatError> {
        if n > self.remaining() as u64 {
            return Err(FormatError::Truncated {
                what: what.into(),
                offset: self.pos as u64,
                need: n,
                file_len: self.buf.len() as u64,
            });
        }
        let n = n as usize;
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], FormatError> {
        let b = self.take(N as u64, what)?;
        // `take` returned exactly N bytes.
        Ok(b.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Refuses a count whose elements (each at least `min_size` bytes) cannot fit in the rest of
    /// the file, before anything is allocated for them.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<(), FormatError> {
        match count.checked_mul(min_size) {
            Some(need) if need <= self.remaining() as u64 => Ok(()),
            _ => {
                Err(FormatError::CountTooLarge { what: what.into(), count, file_len: self.buf.len() as u64 })
            }
        }
    }

    /// A key or a tensor name: short by the format's rules (keys up to 65,535 bytes; tensor
    /// names 64 in llama.cpp, some tools write longer). A longer one is a damaged length, and
    /// is refused before it is read (error messages quote names).
    fn name(&mut self, what: &str, max: u64) -> Result<String, FormatError> {
        let at = self.pos as u64;
        let len = self.u64(what)?;
        // Past the end of the file: reported as a truncation, by `string`.
        if len > max && len <= self.remaining() as u64 {
            return Err(FormatError::NameTooLong { what: what.into(), offset: at, len, max });
        }
        self.pos = at as usize;
        self.string(what)
    }

    fn string(&mut self, what: &str) -> Result<String, FormatError> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        // GGUF strings are UTF-8; a damaged one is kept readable rather than rejected.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, key: &str, type_id: u32, depth: usize) -> Result<Value, FormatError> {
        let what = format!("the value of {key:?}");
        Ok(match type_id {
            0 => Value::U8(self.array::<1>(&what)?[0]),
            1 => Value::I8(self.array::<1>(&what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => Value::Bool(self.array::<1>(&what)?[0] != 0),
            8 => Value::String(self.string(&what)?),
            9 => Value::Array(self.array_value(key, &format!("the array {key:?}"), depth)?),
            10 => Value::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            _ => {
                return Err(FormatError::UnknownValueType { key: key.into(), type_id });
            }
        })
    }

    /// An array value; `what` names it in errors. It is formatted once by the caller and shared
    /// by nested arrays, so that an array of many small arrays does not copy a long key for each.
    fn array_value(&mut self, key: &str, what: &str, depth: usize) -> Result<ArrayValue, FormatError> {
        if depth >= MAX_ARRAY_NESTING {
            return Err(FormatError::NestingTooDeep { key: key.into(), max: MAX_ARRAY_NESTING });
        }
        let elem_type = self.u32(what)?;
        let n = self.u64(what)?;
        // Smallest encoded size of one element: strings take 8 bytes of length, arrays 12 bytes.
        let min_size = match elem_type {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            _ => {
                return Err(FormatError::UnknownValueType { key: key.into(), type_id: elem_type });
            }
        };
        self.check_count(n, min_size, what)?;

        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                const SIZE: usize = std::mem::size_of::<$t>();
                // `check_count` has checked that n × SIZE bytes remain.
                let bytes = self.take(n * SIZE as u64, what)?;
                ArrayValue::$variant(
                    bytes
                        .chunks_exact(SIZE)
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk of SIZE")))
                        .collect(),
                )
            }};
        }
        Ok(match elem_type {
            0 => fixed!(U8, u8),
            1 => fixed!(I8, i8),
            2 => fixed!(U16, u16),
            3 => fixed!(I16, i16),
            4 => fixed!(U32, u32),
            5 => fixed!(I32, i32),
            6 => fixed!(F32, f32),
            7 => ArrayValue::Bool(self.take(n, what)?.iter().map(|&b| b != 0).collect()),
            8 => {
                let mut v = reserve(n);
                for _ in 0..n {
                    v.push(self.string(what)?);
                }
                ArrayValue::String(v)
            }
            9 => {
                let mut v = reserve(n);
                for _ in 0..n {
                    // Each element is itself encoded as an array: its element type, count, items.
                    v.push(self.array_value(key, what, depth + 1)?);
                }
                ArrayValue::Array(v)
            }
            10 => fixed!(U64, u64),
            11 => fixed!(I64, i64),
            12 => fixed!(F64, f64),
            _ => unreachable!("element type checked above"),
        })
    }
}

/// Writes GGUF files. Used by tests and fixture tools to build small models and damaged files.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    pub fn add(&mut self, key: &str, value: Value) -> &mut Self {
        self.metadata.push((key.into(), value));
        self
    }

    /// Adds a tensor; `ne` is in ggml order (row length first) and `data` its encoded bytes.
    pub fn add_tensor(&mut self, name: &str, ne: &[u64], dtype: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensors.push((name.into(), ne.to_vec(), dtype, data));
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let infos: Vec<(&str, &[u64], GgmlType, u64)> = self
            .tensors
            .iter()
            .map(|(name, ne, dtype, data)| (name.as_str(), ne.as_slice(), *dtype, data.len() as u64))
            .collect();
        let (mut out, alignment) = gguf_header(&self.metadata, &infos);
        for (_, _, _, data) in &self.tensors {
            // Padding between tensors, none after the last.
            out.resize((out.len() as u64).div_ceil(alignment) as usize * alignment as usize, 0);
            out.extend_from_slice(data);
        }
        out
    }
}

/// The start of a GGUF file (version 3): magic, counts, the metadata, each tensor's name, shape
/// (ggml order), type and data offset, then zeros up to the alignment
/// (`general.alignment`, default 32), which it returns too. The tensors' data follows in the
/// order given, each starting at a multiple of the alignment. Lets a writer stream the data of
/// a file too large to build in memory.
pub fn gguf_header(
    metadata: &[(String, Value)],
    tensors: &[(&str, &[u64], GgmlType, u64)],
) -> (Vec<u8>, u64) {
    let alignment = metadata
        .iter()
        .find(|(k, _)| k == "general.alignment")
        .and_then(|(_, v)| v.as_u64())
        .filter(|a| a.is_power_of_two())
        .unwrap_or(DEFAULT_ALIGNMENT);
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        write_string(&mut out, key);
        out.extend_from_slice(&value_type_id(value).to_le_bytes());
        write_value(&mut out, value);
    }
    let mut offset = 0u64;
    for (name, ne, dtype, n_bytes) in tensors {
        write_string(&mut out, name);
        out.extend_from_slice(&(ne.len() as u32).to_le_bytes());
        for d in *ne {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&dtype.id().to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + n_bytes).div_ceil(alignment) * alignment;
    }
    out.resize((out.len() as u64).div_ceil(alignment) as usize * alignment as usize, 0);
    (out, alignment)
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn value_type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn array_elem_type_id(a: &ArrayValue) -> u32 {
    match a {
        ArrayValue::U8(_) => 0,
        ArrayValue::I8(_) => 1,
        ArrayValue::U16(_) => 2,
        ArrayValue::I16(_) => 3,
        ArrayValue::U32(_) => 4,
        ArrayValue::I32(_) => 5,
        ArrayValue::F32(_) => 6,
        ArrayValue::Bool(_) => 7,
        ArrayValue::String(_) => 8,
        ArrayValue::Array(_) => 9,
        ArrayValue::U64(_) => 10,
        ArrayValue::I64(_) => 11,
        ArrayValue::F64(_) => 12,
    }
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => write_string(out, s),
        Value::Array(a) => write_array(out, a),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn write_array(out: &mut Vec<u8>, a: &ArrayValue) {
    out.extend_from_slice(&array_elem_type_id(a).to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        ArrayValue::U8(v) => out.extend_from_slice(v),
        ArrayValue::I8(v) => each!(v),
        ArrayValue::U16(v) => each!(v),
        ArrayValue::I16(v) => each!(v),
        ArrayValue::U32(v) => each!(v),
        ArrayValue::I32(v) => each!(v),
        ArrayValue::F32(v) => each!(v),
        ArrayValue::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
        ArrayValue::String(v) => v.iter().for_each(|s| write_string(out, s)),
        ArrayValue::Array(v) => v.iter().for_each(|a| write_array(out, a)),
        ArrayValue::U64(v) => each!(v),
        ArrayValue::I64(v) => each!(v),
        ArrayValue::F64(v) => each!(v),
    }
}
