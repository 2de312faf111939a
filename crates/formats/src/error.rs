use std::path::PathBuf;

/// Everything that can be wrong with a model file. Each message fits on one line and names the
/// part of the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} is a directory, not a model file, and has no config.json (not a Hugging Face model folder)")]
    IsADirectory(PathBuf),
    #[error("not a GGUF file (the first bytes are {found:02x?}, expected \"GGUF\")")]
    NotGguf { found: Vec<u8> },
    #[error("GGUF version {0} is not supported (baimo reads versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("GGUF file is big-endian; baimo reads little-endian files only")]
    BigEndian,
    #[error("file is truncated: {what} at byte {offset} needs {need} bytes but the file has {file_len}")]
    Truncated { what: String, offset: u64, need: u64, file_len: u64 },
    #[error("{what} says {count} entries, more than the {file_len}-byte file can hold")]
    CountTooLarge { what: String, count: u64, file_len: u64 },
    #[error("{what} at byte {offset} is {len} bytes long, more than {max}: the file is damaged")]
    NameTooLong { what: String, offset: u64, len: u64, max: u64 },
    #[error("metadata key {key:?} has unknown value type {type_id}")]
    UnknownValueType { key: String, type_id: u32 },
    #[error("metadata key {key:?} nests arrays deeper than {max} levels")]
    NestingTooDeep { key: String, max: usize },
    #[error("metadata key {0:?} appears twice")]
    DuplicateKey(String),
    #[error("general.alignment = {0} is not a power of two")]
    BadAlignment(u64),
    #[error("tensor {tensor:?} has unknown type id {type_id}")]
    UnknownTensorType { tensor: String, type_id: u32 },
    #[error("tensor {tensor:?} has {n_dims} dimensions (at most 4 are allowed)")]
    TooManyDims { tensor: String, n_dims: u32 },
    #[error("tensor {tensor:?} has shape {dims:?} whose size overflows")]
    ShapeOverflow { tensor: String, dims: Vec<u64> },
    #[error("tensor {tensor:?}: row length {ne0} is not a multiple of the {dtype} block size {block}")]
    BadRowLength { tensor: String, ne0: u64, dtype: String, block: usize },
    #[error("tensor {tensor:?}: data at offset {offset} is not aligned to {alignment} bytes")]
    Misaligned { tensor: String, offset: u64, alignment: u64 },
    #[error(
        "tensor {tensor:?}: its {size} bytes at offset {offset} run past the end of the {file_len}-byte file"
    )]
    TensorOutOfBounds { tensor: String, offset: u64, size: u64, file_len: u64 },
    #[error(
        "tensor {tensor:?}: data at offset {offset}, but the tensors before it end at {expected} (tensors must follow one another)"
    )]
    OutOfOrder { tensor: String, offset: u64, expected: u64 },
    #[error("tensor {0:?} appears twice")]
    DuplicateTensor(String),
    #[error("split GGUF {path}: {reason}")]
    BadSplit { path: PathBuf, reason: String },
    #[error("missing metadata key {0:?}")]
    MissingKey(String),
    #[error("metadata key {key:?} is {found}, expected {expected}")]
    WrongType { key: String, expected: &'static str, found: String },
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    #[error("{path}: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error(
        "{0} has no weights (looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin and pytorch_model.bin.index.json)"
    )]
    NoWeights(PathBuf),
}
