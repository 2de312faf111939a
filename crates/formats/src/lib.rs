//! Readers for model files. Everything here parses bytes that come from outside, so every length
//! and offset is checked against the file before it is used, and nothing panics on bad input.

mod bytes;
mod error;
pub mod gguf;
pub mod hf;
pub mod torch;

pub use bytes::Bytes;
pub use error::FormatError;
pub use gguf::{ArrayValue, Gguf, TensorInfo, Value, gguf_header};
pub use hf::{HfFolder, HfTensor, HfTensors, StorageType};
