//! A whole answer as the fronts write it: one or more choices (`n`), the usage, and how many
//! prompt tokens came from a cache. Built from a backend's whole answer or collected from its
//! stream of events.

use crate::types::{ChatResponse, FinishReason, StreamEvent, TokenLogprob, ToolCall, Usage};

/// One answer of a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: FinishReason,
    /// The stop sequence that ended it, when one did.
    pub stop_sequence: Option<String>,
    /// When log-probabilities were asked for.
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// Every answer of a request, with its usage.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub choices: Vec<Choice>,
    pub usage: Usage,
    pub cached_tokens: u64,
}

impl From<ChatResponse> for Answer {
    fn from(r: ChatResponse) -> Answer {
        Answer {
            choices: vec![Choice {
                content: r.content,
                tool_calls: r.tool_calls,
                finish_reason: r.finish_reason,
                stop_sequence: None,
                logprobs: None,
            }],
            usage: r.usage,
            cached_tokens: 0,
        }
    }
}

/// Builds one choice from its stream events, in order.
#[derive(Default)]
pub struct ChoiceCollector {
    text: Option<String>,
    calls: Vec<ToolCall>,
    finish: Option<FinishReason>,
    stop_sequence: Option<String>,
    logprobs: Option<Vec<TokenLogprob>>,
    pub usage: Usage,
}

impl ChoiceCollector {
    pub fn push(&mut self, event: StreamEvent) {
        match event {
            StreamEvent::Text(t) => self.text.get_or_insert_with(String::new).push_str(&t),
            StreamEvent::ToolCall { index, id, name, arguments } => {
                while self.calls.len() <= index {
                    self.calls.push(ToolCall {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    });
                }
                let call = &mut self.calls[index];
                if let Some(id) = id {
                    call.id = id;
                }
                if let Some(name) = name {
                    call.name = name;
                }
                call.arguments.push_str(&arguments);
            }
            StreamEvent::Logprobs(lps) => self.logprobs.get_or_insert_with(Vec::new).extend(lps),
            StreamEvent::StopSequence(s) => self.stop_sequence = Some(s),
            StreamEvent::Finish(f) => self.finish = Some(f),
            StreamEvent::Usage(u) => self.usage = u,
        }
    }

    pub fn finish(self, want_logprobs: bool) -> Choice {
        let calls = self.calls;
        Choice {
            content: match (self.text, calls.is_empty()) {
                (Some(t), _) => Some(t),
                (None, true) => Some(String::new()),
                (None, false) => None,
            },
            finish_reason: self.finish.unwrap_or(if calls.is_empty() {
                FinishReason::Stop
            } else {
                FinishReason::ToolCalls
            }),
            tool_calls: calls,
            stop_sequence: self.stop_sequence,
            logprobs: want_logprobs.then(|| self.logprobs.unwrap_or_default()),
        }
    }
}
