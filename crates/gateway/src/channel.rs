//! An upstream channel: one provider account (base URL, credentials) serving some models, with a
//! weight and a priority for choosing among channels.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

/// A credential: kept out of `Debug`, logs and error messages.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for building a request (the only place it should go).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Which wire protocol a channel speaks.
/// Names (in configuration, in `baimo mock-provider`) are the lowercase ones in [`ProviderKind::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ProviderKind {
    /// OpenAI's chat completions (also every OpenAI-compatible service).
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic's Messages API.
    #[serde(rename = "anthropic")]
    Anthropic,
    /// Anthropic's 2023 Text Completions API (`/v1/complete`, Claude 1 and 2).
    #[serde(rename = "anthropic-legacy")]
    AnthropicLegacy,
    /// Google's Gemini API (`generateContent`).
    #[serde(rename = "gemini")]
    Gemini,
    /// Google's PaLM 2 API (`generateMessage`; decommissioned, kept for the 2023 model names).
    #[serde(rename = "palm")]
    Palm,
    /// Alibaba DashScope's native text-generation API (hosted Qwen).
    #[serde(rename = "dashscope")]
    DashScope,
    /// DashScope's OpenAI-compatible mode.
    #[serde(rename = "dashscope-compatible")]
    DashScopeCompatible,
    /// Zhipu AI's v4 chat completions (GLM), JWT-signed.
    #[serde(rename = "zhipu")]
    Zhipu,
    /// Zhipu AI's 2023 v3 model API (ChatGLM).
    #[serde(rename = "zhipu-v3")]
    ZhipuV3,
    /// Baichuan's OpenAI-style chat completions.
    #[serde(rename = "baichuan")]
    Baichuan,
    /// Baichuan's 2023 API, MD5-signed with a secret key.
    #[serde(rename = "baichuan-legacy")]
    BaichuanLegacy,
    /// Baidu ERNIE (Qianfan v1): OAuth token from API key + secret key, one endpoint per model.
    #[serde(rename = "ernie")]
    Ernie,
    /// Baidu Qianfan v2: OpenAI-compatible with a `bce-v3` bearer key.
    #[serde(rename = "ernie-v2")]
    ErnieV2,
    /// iFlytek Spark's WebSocket API: signed URL (API key + API secret), app id in the frame.
    #[serde(rename = "spark")]
    Spark,
    /// iFlytek Spark's OpenAI-compatible HTTP API (APIPassword as Bearer key).
    #[serde(rename = "spark-http")]
    SparkHttp,
}

impl ProviderKind {
    pub const ALL: &'static [ProviderKind] = &[
        ProviderKind::OpenAi,
        ProviderKind::Anthropic,
        ProviderKind::Gemini,
        ProviderKind::Palm,
        ProviderKind::DashScope,
        ProviderKind::DashScopeCompatible,
        ProviderKind::Zhipu,
        ProviderKind::ZhipuV3,
        ProviderKind::Baichuan,
        ProviderKind::BaichuanLegacy,
        ProviderKind::Ernie,
        ProviderKind::ErnieV2,
        ProviderKind::Spark,
        ProviderKind::SparkHttp,
        ProviderKind::AnthropicLegacy,
    ];

    /// The kind a configuration name stands for.
    pub fn from_name(name: &str) -> Option<ProviderKind> {
        ProviderKind::ALL.iter().copied().find(|k| k.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Palm => "palm",
            ProviderKind::DashScope => "dashscope",
            ProviderKind::DashScopeCompatible => "dashscope-compatible",
            ProviderKind::Zhipu => "zhipu",
            ProviderKind::ZhipuV3 => "zhipu-v3",
            ProviderKind::Baichuan => "baichuan",
            ProviderKind::BaichuanLegacy => "baichuan-legacy",
            ProviderKind::Ernie => "ernie",
            ProviderKind::ErnieV2 => "ernie-v2",
            ProviderKind::Spark => "spark",
            ProviderKind::SparkHttp => "spark-http",
            ProviderKind::AnthropicLegacy => "anthropic-legacy",
        }
    }

    /// The provider's own endpoint, when a channel names none.
    pub fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "https://api.openai.com",
            ProviderKind::Anthropic => "https://api.anthropic.com",
            ProviderKind::Gemini | ProviderKind::Palm => "https://generativelanguage.googleapis.com",
            ProviderKind::DashScope | ProviderKind::DashScopeCompatible => "https://dashscope.aliyuncs.com",
            ProviderKind::Zhipu | ProviderKind::ZhipuV3 => "https://open.bigmodel.cn",
            ProviderKind::Baichuan | ProviderKind::BaichuanLegacy => "https://api.baichuan-ai.com",
            ProviderKind::Ernie => "https://aip.baidubce.com",
            ProviderKind::ErnieV2 => "https://qianfan.baidubce.com",
            ProviderKind::Spark => "wss://spark-api.xf-yun.com",
            ProviderKind::SparkHttp => "https://spark-api-open.xf-yun.com",
            ProviderKind::AnthropicLegacy => "https://api.anthropic.com",
        }
    }
}

fn default_weight() -> u32 {
    1
}

fn default_enabled() -> bool {
    true
}

/// One upstream channel (as configured: TOML `[[channels]]` or the store).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub name: String,
    pub provider: ProviderKind,
    /// Without a path (`https://api.openai.com`); the provider module adds its own.
    #[serde(default)]
    pub base_url: Option<String>,
    pub api_key: Secret,
    /// The second credential of providers that sign with a pair: ERNIE's secret key, Spark's
    /// API secret, Baichuan's legacy secret key.
    #[serde(default)]
    pub secret_key: Option<Secret>,
    /// Spark's app id (not a secret; sent in every request).
    #[serde(default)]
    pub app_id: Option<String>,
    /// The model names clients use that this channel serves.
    pub models: Vec<String>,
    /// Client name → the provider's name, where they differ.
    #[serde(default)]
    pub model_map: HashMap<String, String>,
    /// Share of traffic among the channels of the same priority.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Higher first; lower priorities are used when every higher channel failed or is cooling down.
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
}

impl Channel {
    pub fn base_url(&self) -> &str {
        self.base_url.as_deref().unwrap_or(self.provider.default_base_url()).trim_end_matches('/')
    }

    pub fn serves(&self, model: &str) -> bool {
        self.enabled && self.models.iter().any(|m| m == model)
    }

    /// Every credential of the channel, to keep them out of error text.
    pub fn secrets(&self) -> Vec<&str> {
        let mut out = vec![self.api_key.expose()];
        out.extend(self.secret_key.as_ref().map(Secret::expose));
        out
    }

    /// The name to send upstream for a client's model name.
    pub fn upstream_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.model_map.get(model).map_or(model, String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_in_debug() {
        let ch: Channel = serde_json::from_value(serde_json::json!({
            "name": "main", "provider": "openai", "api_key": "sk-very-secret", "models": ["gpt-4"]
        }))
        .unwrap();
        let shown = format!("{ch:?}");
        assert!(!shown.contains("sk-very-secret") && shown.contains("redacted"), "{shown}");
        assert_eq!((ch.weight, ch.priority, ch.enabled), (1, 0, true));
        assert_eq!(ch.base_url(), "https://api.openai.com");
    }
}
