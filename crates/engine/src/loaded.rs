//! A model file opened for use: the network, its tokenizer and its chat template, all from the
//! file's own metadata.

use std::path::{Path, PathBuf};

use baimo_chat::{ChatMessage, ChatTemplate, RenderRequest};
use baimo_formats::Gguf;
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
}

impl LoadedModel {
    pub fn load(path: &Path) -> Result<LoadedModel, EngineError> {
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
        let source = if own { gguf.get_str("tokenizer.chat_template")? } else { FALLBACK_CHAT_TEMPLATE };
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
        })
    }

    /// The prompt text for a conversation, ending with the assistant's turn opened.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        let request = RenderRequest { messages, add_generation_prompt: true, ..Default::default() };
        Ok(self.chat_template.render(&request)?)
    }

    /// Token ids of `text` with special tokens parsed, and BOS first when the model wants one and
    /// the text does not already start with it.
    pub fn tokenize_prompt(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        if let Some(bos) = self.tokenizer.bos_id().filter(|_| self.tokenizer.add_bos()) {
            let bos_text = self.tokenizer.token_text(bos).unwrap_or("");
            if bos_text.is_empty() || !text.starts_with(bos_text) {
                ids.push(bos);
            }
        }
        ids.extend(self.tokenizer.encode(text, true));
        ids
    }

    /// The token ids of a conversation's prompt.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, EngineError> {
        Ok(self.tokenize_prompt(&self.render_chat(messages)?))
    }
}
