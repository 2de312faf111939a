//! Hugging Face model folders: `config.json` and the weights, as one safetensors file, as
//! shards listed by `model.safetensors.index.json`, or as PyTorch `.bin` checkpoints (single or
//! sharded with `pytorch_model.bin.index.json`).
//!
//! Tensors keep pointing into the memory-mapped files; nothing is copied here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Bytes, FormatError, torch};

/// How a tensor's elements are stored (safetensors dtype names; PyTorch storages map onto
/// them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    /// Any other type, by its name in the file (e.g. `F8_E4M3`): readable, not computable.
    Other(String),
}

impl StorageType {
    /// Bytes per element, for the types whose elements are whole bytes.
    pub fn size(&self) -> Option<usize> {
        use StorageType::*;
        Some(match self {
            F64 | I64 => 8,
            F32 | I32 => 4,
            F16 | BF16 | I16 => 2,
            I8 | U8 | Bool => 1,
            Other(_) => return None,
        })
    }

    pub fn name(&self) -> &str {
        use StorageType::*;
        match self {
            F64 => "F64",
            F32 => "F32",
            F16 => "F16",
            BF16 => "BF16",
            I64 => "I64",
            I32 => "I32",
            I16 => "I16",
            I8 => "I8",
            U8 => "U8",
            Bool => "BOOL",
            Other(name) => name,
        }
    }
}

impl std::fmt::Display for StorageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor of a checkpoint: row-major (C order) elements of `dtype`, PyTorch shape order
/// (`[out, in]` for a linear layer's weight).
#[derive(Clone, Debug)]
pub struct HfTensor {
    pub dtype: StorageType,
    pub shape: Vec<usize>,
    pub data: Bytes,
}

impl HfTensor {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The tensors of a checkpoint by name.
#[derive(Clone, Debug, Default)]
pub struct HfTensors {
    tensors: BTreeMap<String, HfTensor>,
}

impl HfTensors {
    pub fn get(&self, name: &str) -> Option<&HfTensor> {
        self.tensors.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    fn insert(&mut self, file: &Path, name: String, tensor: HfTensor) -> Result<(), FormatError> {
        if self.tensors.contains_key(&name) {
            return Err(FormatError::Checkpoint {
                path: file.to_path_buf(),
                message: format!("tensor {name:?} appears twice"),
            });
        }
        self.tensors.insert(name, tensor);
        Ok(())
    }
}

/// Reads the tensor index of a `.safetensors` file (mapped, not copied).
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, HfTensor)>, FormatError> {
    parse_safetensors(&Bytes::map_file(path)?).map_err(|message| FormatError::Checkpoint {
        path: path.to_path_buf(),
        message: format!("not a valid safetensors file: {message}"),
    })
}

/// The tensors of a safetensors buffer. The `safetensors` crate validates the header (its
/// length, JSON, dtypes, shapes and that the offsets tile the data exactly).
pub fn parse_safetensors(bytes: &Bytes) -> Result<Vec<(String, HfTensor)>, String> {
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let base = bytes.as_ptr() as usize;
    let mut out = Vec::with_capacity(file.len());
    for (name, view) in file.iter() {
        use safetensors::Dtype;
        let dtype = match view.dtype() {
            Dtype::F64 => StorageType::F64,
            Dtype::F32 => StorageType::F32,
            Dtype::F16 => StorageType::F16,
            Dtype::BF16 => StorageType::BF16,
            Dtype::I64 => StorageType::I64,
            Dtype::I32 => StorageType::I32,
            Dtype::I16 => StorageType::I16,
            Dtype::I8 => StorageType::I8,
            Dtype::U8 => StorageType::U8,
            Dtype::BOOL => StorageType::Bool,
            other => StorageType::Other(format!("{other:?}")),
        };
        // The view borrows from `bytes`: its offset there is the pointer difference.
        let start = view.data().as_ptr() as usize - base;
        let data = bytes.slice(start..start + view.data().len());
        out.push((name.to_string(), HfTensor { dtype, shape: view.shape().to_vec(), data }));
    }
    Ok(out)
}

/// A model folder as published on the Hugging Face hub.
#[derive(Debug)]
pub struct HfFolder {
    pub dir: PathBuf,
    /// `config.json`.
    pub config: serde_json::Value,
    pub tensors: HfTensors,
    /// The weight files read, in order.
    pub weight_files: Vec<PathBuf>,
}

/// Files that hold weights, in the order a folder is searched for them.
const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
const SAFETENSORS_SINGLE: &str = "model.safetensors";
const TORCH_INDEX: &str = "pytorch_model.bin.index.json";
const TORCH_SINGLE: &str = "pytorch_model.bin";

impl HfFolder {
    /// Whether `dir` looks like a model folder (has a `config.json`).
    pub fn is_model_folder(dir: &Path) -> bool {
        dir.is_dir() && dir.join("config.json").is_file()
    }

    pub fn open(dir: &Path) -> Result<HfFolder, FormatError> {
        let config = read_json(&dir.join("config.json"))?;
        if !config.is_object() {
            return Err(FormatError::Json {
                path: dir.join("config.json"),
                message: "expected a JSON object".into(),
            });
        }
        let mut tensors = HfTensors::default();
        let mut weight_files = Vec::new();
        let (index, single) =
            if dir.join(SAFETENSORS_INDEX).is_file() || dir.join(SAFETENSORS_SINGLE).is_file() {
                (SAFETENSORS_INDEX, SAFETENSORS_SINGLE)
            } else {
                (TORCH_INDEX, TORCH_SINGLE)
            };
        if dir.join(index).is_file() {
            let shards = read_index(&dir.join(index))?;
            for (shard, expected) in shards {
                let path = dir.join(&shard);
                let found = read_weights(&path)?;
                let names: std::collections::BTreeSet<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
                if let Some(missing) = expected.iter().find(|n| !names.contains(n.as_str())) {
                    return Err(FormatError::Checkpoint {
                        path: dir.join(index),
                        message: format!("lists tensor {missing:?} in {shard}, which does not hold it"),
                    });
                }
                for (name, tensor) in found {
                    tensors.insert(&path, name, tensor)?;
                }
                weight_files.push(path);
            }
        } else if dir.join(single).is_file() {
            let path = dir.join(single);
            for (name, tensor) in read_weights(&path)? {
                tensors.insert(&path, name, tensor)?;
            }
            weight_files.push(path);
        } else {
            return Err(FormatError::NoWeights(dir.to_path_buf()));
        }
        Ok(HfFolder { dir: dir.to_path_buf(), config, tensors, weight_files })
    }

    /// A JSON file of the folder, if present (`tokenizer_config.json`, `generation_config.json`).
    pub fn optional_json(&self, name: &str) -> Result<Option<serde_json::Value>, FormatError> {
        let path = self.dir.join(name);
        if path.is_file() { read_json(&path).map(Some) } else { Ok(None) }
    }
}

fn read_weights(path: &Path) -> Result<Vec<(String, HfTensor)>, FormatError> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        read_safetensors(path)
    } else {
        torch::read_checkpoint(path)
    }
}

/// Largest JSON file read (configs and indexes are kilobytes; tokenizer.json is read elsewhere).
const MAX_JSON_BYTES: u64 = 64 << 20;

pub fn read_json(path: &Path) -> Result<serde_json::Value, FormatError> {
    let io = |source| FormatError::Io { path: path.to_path_buf(), source };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_JSON_BYTES {
        return Err(FormatError::Json {
            path: path.to_path_buf(),
            message: format!("{len} bytes is too large"),
        });
    }
    let text = std::fs::read(path).map_err(io)?;
    serde_json::from_slice(&text)
        .map_err(|e| FormatError::Json { path: path.to_path_buf(), message: e.to_string() })
}

/// The shard files of an index (`weight_map`: tensor name → file), each with its tensor names,
/// in file order.
fn read_index(path: &Path) -> Result<Vec<(String, Vec<String>)>, FormatError> {
    let bad = |message: String| FormatError::Checkpoint { path: path.to_path_buf(), message };
    let json = read_json(path)?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| bad(format!("the file of {tensor:?} is not a string")))?;
        // Shards live in the folder itself: a path that leaves it is refused.
        let plain = Path::new(file).components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || file.contains('/') || file.contains('\\') {
            return Err(bad(format!("shard name {file:?} is not a file name in the folder")));
        }
        shards.entry(file.to_string()).or_default().push(tensor.clone());
    }
    if shards.is_empty() {
        return Err(bad("the weight map is empty".into()));
    }
    Ok(shards.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file written by hand: header length, JSON, data.
    fn safetensors_bytes(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn reads_names_types_shapes_and_data() {
        let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]}}"#;
        let data: Vec<u8> = (0..12).collect();
        let bytes = Bytes::from_vec(safetensors_bytes(header, &data));
        let mut tensors = parse_safetensors(&bytes).unwrap();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(tensors[0].0, "a");
        assert_eq!(tensors[0].1.dtype, StorageType::F32);
        assert_eq!(&tensors[0].1.data[..], &data[..8]);
        assert_eq!(tensors[1].1.shape, vec![1, 2]);
        assert_eq!(&tensors[1].1.data[..], &data[8..]);
    }

    #[test]
    fn bad_files_are_errors() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![1, 2, 3],
            // Header length beyond the file.
            safetensors_bytes("{}", &[]).into_iter().map(|b| if b == 2 { 200 } else { b }).collect(),
            // Truncated header JSON.
            safetensors_bytes(r#"{"a":{"dtype":"F32","shape":[2],"#, &[]),
            // Data shorter than the offsets say.
            safetensors_bytes(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, &[0; 4]),
            // Shape and offsets disagree.
            safetensors_bytes(r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8]),
            // An unknown dtype name.
            safetensors_bytes(r#"{"a":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}}"#, &[0; 8]),
            // A shape whose element count overflows.
            safetensors_bytes(
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#,
                &[0; 8],
            ),
        ];
        for case in cases {
            assert!(parse_safetensors(&Bytes::from_vec(case.clone())).is_err(), "accepted {case:?}");
        }
    }

    #[test]
    fn index_shard_names_must_stay_in_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("model.safetensors.index.json");
        std::fs::write(&index, r#"{"weight_map":{"a":"../secret.safetensors"}}"#).unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let err = HfFolder::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a file name"), "{err}");
    }
}
