//! Shared by the template tests: the corpus of real chat templates, the fixed conversations
//! and the Hugging Face reference renderings.

#![allow(dead_code)] // each test binary uses its own part

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baimo_chat::{ChatError, ChatMessage, ChatTemplate, RenderRequest};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The special tokens scripts/render_chat_templates.py passes.
pub const BOS_TOKEN: &str = "<s>";
pub const EOS_TOKEN: &str = "</s>";

/// The moment the reference pins strftime_now to: 2025-03-14T09:26:53Z.
pub fn fixed_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_741_944_413)
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shared corpus (read-only, beside the repository) and this crate's own fixtures.
pub fn template_dirs() -> Vec<PathBuf> {
    vec![manifest_dir().join("../../../shared/reference/templates"), manifest_dir().join("tests/templates")]
}

pub struct NamedTemplate {
    pub name: String,
    pub source: String,
}

/// Every `*.jinja` file of the template directories, by name. A missing directory fails the
/// test: without the shared corpus the comparisons would check nothing.
pub fn load_templates() -> Vec<NamedTemplate> {
    let mut templates = Vec::new();
    for dir in template_dirs() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "the template directory {} cannot be read ({e}): the tests need ../shared/ beside the repository, as CI has it",
                dir.display()
            )
        });
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "jinja"))
            .collect();
        paths.sort();
        for path in paths {
            templates.push(NamedTemplate {
                name: stem(&path),
                source: std::fs::read_to_string(&path).expect("template is UTF-8"),
            });
        }
    }
    templates
}

fn stem(path: &Path) -> String {
    path.file_stem().and_then(|stem| stem.to_str()).expect("template file name").to_owned()
}

#[derive(Deserialize)]
pub struct Scenario {
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub add_generation_prompt: bool,
    pub tools: Option<Vec<Value>>,
    pub extra_context: Option<Map<String, Value>>,
    /// The scenario applies only to templates whose source mentions this.
    pub only_if_template_mentions: Option<String>,
}

impl Scenario {
    pub fn applies_to(&self, source: &str) -> bool {
        self.only_if_template_mentions.as_deref().is_none_or(|needle| source.contains(needle))
    }

    pub fn render(&self, template: &ChatTemplate) -> Result<String, ChatError> {
        template.render(&RenderRequest {
            messages: &self.messages,
            add_generation_prompt: self.add_generation_prompt,
            tools: self.tools.as_deref(),
            extra_context: self.extra_context.as_ref(),
            now: Some(fixed_now()),
        })
    }
}

/// The conversations of tests/fixtures/conversations.json, by name, in file order.
pub fn load_scenarios() -> Vec<(String, Scenario)> {
    let text = std::fs::read_to_string(manifest_dir().join("tests/fixtures/conversations.json"))
        .expect("conversations fixture");
    let scenarios: serde_json::Map<String, Value> =
        serde_json::from_str(&text).expect("conversations fixture is JSON");
    scenarios
        .into_iter()
        .map(|(name, scenario)| {
            let scenario = serde_json::from_value(scenario).expect("scenario shape");
            (name, scenario)
        })
        .collect()
}

/// One rendering by Python's Jinja2 in transformers' environment.
#[derive(Deserialize, Debug)]
pub struct Reference {
    pub output: Option<String>,
    pub error: Option<ReferenceError>,
}

#[derive(Deserialize, Debug)]
pub struct ReferenceError {
    /// "raise_exception" for the template's own error, "other" for engine errors.
    pub kind: String,
    pub message: String,
}

/// template name -> scenario name -> a rendering.
pub type References = BTreeMap<String, BTreeMap<String, Reference>>;

#[derive(Deserialize)]
struct ReferenceFile {
    templates: References,
    /// adjustment -> what Jinja2 renders with one of baimo's known differences removed at
    /// its cause (see scripts/render_chat_templates.py), where that differs from `templates`.
    adjusted: BTreeMap<String, References>,
}

fn load_reference_file() -> ReferenceFile {
    let text = std::fs::read_to_string(manifest_dir().join("tests/fixtures/hf_reference.json"))
        .expect("reference fixture");
    serde_json::from_str(&text).expect("reference fixture is JSON")
}

/// template name -> scenario name -> what transformers renders.
pub fn load_references() -> References {
    load_reference_file().templates
}

/// adjustment name -> template name -> scenario name -> what Jinja2 renders with that
/// adjustment (`none_iterates_as_empty`, `map_gives_a_list`, `safe_gives_a_str`).
pub fn load_adjusted_references() -> BTreeMap<String, References> {
    load_reference_file().adjusted
}
