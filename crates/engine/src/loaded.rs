//! A model file opened for use: the network, its tokenizer and its chat template, all from the
//! file's own metadata.

use std::path::{Path, PathBuf};

use baimo_chat::{BuiltinFormat, ChatMessage, ChatTemplate, RenderRequest};
use baimo_formats::{Gguf, HfFolder};
use baimo_kernels::GgmlType;
use baimo_models::{Model, ModelInfo};
use baimo_tokenizer::Tokenizer;

use crate::EngineError;

/// Used when a model file carries no chat template: ChatML, as llama.cpp falls back to.
pub const FALLBACK_CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

pub struct LoadedModel {
    pub path: PathBuf,
    /// `general.name`, or the file name.
    pub name: String,
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub chat_template: ChatTemplate,
    /// Whether `chat_template` came from the file (false: the ChatML fallback).
    pub has_own_template: bool,
    pub info: ModelInfo,
    /// Grammar matchers for this vocabulary, built on first use.
    grammars: std::sync::OnceLock<Result<std::sync::Arc<crate::constrain::Grammars>, String>>,
}

impl LoadedModel {
    /// A GGUF file, or a Hugging Face model folder (a directory with `config.json`).
    pub fn load(path: &Path) -> Result<LoadedModel, EngineError> {
        LoadedModel::load_with(path, None)
    }

    /// As [`LoadedModel::load`]; `quantize` encodes a folder's float matrices in that type at
    /// load time (GGUF files are used as they are).
    pub fn load_with(path: &Path, quantize: Option<GgmlType>) -> Result<LoadedModel, EngineError> {
        if HfFolder::is_model_folder(path) {
            return LoadedModel::load_folder(path, quantize);
        }
        let gguf = Gguf::open(path)?;
        let model = Model::from_gguf(&gguf)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let info = model.info();
        if tokenizer.vocab_size() > info.vocab_size {
            return Err(EngineError::Mismatch(format!(
                "the tokenizer has {} tokens but the model's embedding has {} rows",
                tokenizer.vocab_size(),
                info.vocab_size
            )));
        }
        let token_str = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or("").to_string();
        let (bos, eos) = (token_str(tokenizer.bos_id()), token_str(tokenizer.eos_id()));
        let own = gguf.get("tokenizer.chat_template").is_some();
        let builtin = builtin_format(&info.architecture, &tokenizer).map(|f| f.template_source());
        let source = if own {
            gguf.get_str("tokenizer.chat_template")?
        } else {
            builtin.as_deref().unwrap_or(FALLBACK_CHAT_TEMPLATE)
        };
        let chat_template = ChatTemplate::new(source, &bos, &eos)?;
        let name = match gguf.get_str("general.name") {
            Ok(n) if !n.trim().is_empty() => n.to_string(),
            _ => path.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned()),
        };
        Ok(LoadedModel {
            path: path.to_path_buf(),
            name,
            model,
            tokenizer,
            chat_template,
            has_own_template: own,
            info,
            grammars: std::sync::OnceLock::new(),
        })
    }

    fn load_folder(dir: &Path, quantize: Option<GgmlType>) -> Result<LoadedModel, EngineError> {
        let folder = HfFolder::open(dir)?;
        let model = Model::from_hf(&folder, quantize)?;
        let tokenizer = Tokenizer::from_hf_folder(dir)?;
        let info = model.info();
        if tokenizer.vocab_size() > info.vocab_size {
            return Err(EngineError::Mismatch(format!(
                "the tokenizer has {} tokens but the model's embedding has {} rows",
                tokenizer.vocab_size(),
                info.vocab_size
            )));
        }
        // transformers ≥ 4.43 may write the template to its own file; older folders keep it in
        // tokenizer_config.json, as a string or a list of named templates.
        let mut template = None;
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            template = Some(std::fs::read_to_string(&jinja).map_err(|e| {
                EngineError::InvalidArgument(format!("cannot read {}: {e}", jinja.display()))
            })?);
        } else if let Some(config) = folder.optional_json("tokenizer_config.json")? {
            template = match config.get("chat_template") {
                Some(serde_json::Value::String(t)) => Some(t.clone()),
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str())
                    .map(str::to_string),
                _ => None,
            };
        }
        let token_str = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or("").to_string();
        let (bos, eos) = (token_str(tokenizer.bos_id()), token_str(tokenizer.eos_id()));
        let own = template.is_some();
        let template = template
            .or_else(|| builtin_format(&info.architecture, &tokenizer).map(|f| f.template_source()))
            .unwrap_or_else(|| FALLBACK_CHAT_TEMPLATE.to_string());
        let chat_template = ChatTemplate::new(&template, &bos, &eos)?;
        let name = dir.file_name().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        Ok(LoadedModel {
            path: dir.to_path_buf(),
            name,
            model,
            tokenizer,
            chat_template,
            has_own_template: own,
            info,
            grammars: std::sync::OnceLock::new(),
        })
    }

    /// Grammar matchers for this model's vocabulary (built once, on first use).
    pub fn grammars(&self) -> Result<std::sync::Arc<crate::constrain::Grammars>, String> {
        self.grammars
            .get_or_init(|| {
                crate::constrain::Grammars::new(&self.tokenizer, self.info.vocab_size)
                    .map(std::sync::Arc::new)
            })
            .clone()
    }

    /// The prompt text for a conversation, ending with the assistant's turn opened.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        let request = RenderRequest { messages, add_generation_prompt: true, ..Default::default() };
        Ok(self.chat_template.render(&request)?)
    }

    /// Token ids of `text` with special tokens parsed, and BOS first when the model wants one and
    /// the text does not already start with it.
    pub fn tokenize_prompt(&self, text: &str) -> Vec<u32> {
        let mut ids: Vec<u32> = self.bos_for(text).into_iter().collect();
        ids.extend(self.tokenizer.encode(text, true));
        ids
    }

    /// The BOS token to put before `text`: when the model wants one and the text does not
    /// already start with it.
    pub fn bos_for(&self, text: &str) -> Option<u32> {
        let bos = self.tokenizer.bos_id().filter(|_| self.tokenizer.add_bos())?;
        let bos_text = self.tokenizer.token_text(bos).unwrap_or("");
        (bos_text.is_empty() || !text.starts_with(bos_text)).then_some(bos)
    }

    /// The token ids of a conversation's prompt.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, EngineError> {
        Ok(self.tokenize_prompt(&self.render_chat(messages)?))
    }
}

/// The prompt format of a family whose files carry no template (by the loaded model's
/// architecture); `None` where ChatML is the best guess.
pub fn builtin_format(family: &str, tokenizer: &Tokenizer) -> Option<BuiltinFormat> {
    Some(match family {
        "llama" if tokenizer.token_id("<|start_header_id|>").is_some() => BuiltinFormat::Llama3,
        "llama" if tokenizer.token_id("<s>").is_some() => BuiltinFormat::Llama2,
        // Qwen v1's make_context.
        "qwen" => BuiltinFormat::ChatMl { default_system: Some("You are a helpful assistant.".into()) },
        // Baichuan's user and assistant tokens are ids 195 and 196 in every release.
        "baichuan" => match (tokenizer.token_text(195), tokenizer.token_text(196)) {
            (Some(user), Some(assistant)) => BuiltinFormat::Baichuan {
                user_token: user.to_string(),
                assistant_token: assistant.to_string(),
            },
            _ => BuiltinFormat::Plain,
        },
        "chatglm-6b" => BuiltinFormat::ChatGlm,
        // ChatGLM3 added role tokens to ChatGLM2's vocabulary; GLM-4 spells its start token <sop>.
        "chatglm" | "glm" if tokenizer.token_id("<|user|>").is_some() => {
            if tokenizer.token_id("<sop>").is_some() { BuiltinFormat::Glm4 } else { BuiltinFormat::ChatGlm3 }
        }
        "chatglm" | "glm" => BuiltinFormat::ChatGlm2,
        "gpt2" => BuiltinFormat::Plain,
        "gemma2" | "gemma3" => BuiltinFormat::Gemma,
        _ => return None,
    })
}
