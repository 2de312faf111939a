//! Tool calls in each family's own words, read back from the text a model writes.
//!
//! A model offered tools answers either in prose or with calls spelled the way its chat
//! template taught it:
//!
//! - **Hermes / Qwen2, 2.5, 3** (`<tool_call>` in the template): `<tool_call>\n{"name": n,
//!   "arguments": {...}}\n</tool_call>`, one block per call, prose allowed before;
//! - **GLM-4.5+** (`<arg_key>` in the template): `<tool_call>name\n<arg_key>k</arg_key>
//!   \n<arg_value>v</arg_value>...</tool_call>`;
//! - **Llama 3.1+** (`"parameters"` in the template): the whole answer is `{"name": n,
//!   "parameters": {...}}` (after `<|python_tag|>`, a control token the text does not show);
//! - **Mistral** (`[TOOL_CALLS]`): the answer is `[TOOL_CALLS][{"name": n, "arguments": {...}}]`
//!   or, in newer templates, `[TOOL_CALLS]name[ARGS]{...}` (the markers are control tokens, so
//!   the text may show the calls without them);
//! - **GLM-4** (`<|observation|>`): the answer is the tool's name on the first line, then the
//!   arguments as JSON; **ChatGLM3**: the name, then ```` ```python\ntool_call(k=v)\n``` ````.
//!
//! [`ToolCallParser`] reads the text as it streams: prose goes out at once, except what may be
//! the start of a call, which is held until it is known; a call goes out whole, as one
//! [`StreamEvent::ToolCall`], when its text is complete. Text that looked like a call but is
//! not one (bad JSON, a name that is not among the tools) goes out as prose.

use baimo_api::{StreamEvent, ToolCall};
use serde_json::{Map, Value};

/// How a family spells tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolSyntax {
    Hermes,
    GlmXml,
    Llama3Json,
    Mistral,
    Glm4,
    ChatGlm3,
}

impl ToolSyntax {
    /// The syntax a chat template teaches, from its source; `None` when the template does not
    /// read `tools` at all (baimo then describes the tools itself, in the Hermes syntax).
    pub fn of_template(source: &str) -> Option<ToolSyntax> {
        if !source.contains("tools") {
            return None;
        }
        Some(if source.contains("<arg_key>") {
            ToolSyntax::GlmXml
        } else if source.contains("<tool_call>") {
            ToolSyntax::Hermes
        } else if source.contains("[TOOL_CALLS]") {
            ToolSyntax::Mistral
        } else if source.contains("tool_call(") {
            ToolSyntax::ChatGlm3
        } else if source.contains("<|observation|>") || source.contains("'observation'") {
            ToolSyntax::Glm4
        } else if source.contains("\"parameters\"") || source.contains("<|python_tag|>") {
            ToolSyntax::Llama3Json
        } else {
            // A template reads `tools` but teaches no syntax we know: JSON calls, the most
            // common spelling, are the best guess.
            ToolSyntax::Llama3Json
        })
    }

    /// Text that starts a call, appended to the prompt to make the model call a tool
    /// (`name`: that one); `None` where the syntax has no such opening.
    pub fn call_opening(self, name: Option<&str>) -> Option<String> {
        let json = |args: &str| match name {
            Some(n) => format!("{{\"name\": {}, \"{args}\": {{", Value::from(n)),
            None => "{\"name\": \"".to_string(),
        };
        Some(match self {
            ToolSyntax::Hermes => format!("<tool_call>\n{}", json("arguments")),
            ToolSyntax::Llama3Json => json("parameters"),
            ToolSyntax::Mistral => format!("[TOOL_CALLS][{}", json("arguments")),
            ToolSyntax::GlmXml => {
                format!("<tool_call>{}", name.map(|n| format!("{n}\n")).unwrap_or_default())
            }
            ToolSyntax::Glm4 | ToolSyntax::ChatGlm3 => format!("{}\n", name?),
        })
    }

    /// The texts that mark calls in this syntax (some vocabularies make them control tokens,
    /// whose text an answer does not show unless asked).
    pub fn markers(self) -> &'static [&'static str] {
        match self {
            ToolSyntax::Hermes | ToolSyntax::GlmXml => &["<tool_call>", "</tool_call>"],
            ToolSyntax::Llama3Json => &["<|python_tag|>"],
            ToolSyntax::Mistral => &["[TOOL_CALLS]", "[ARGS]"],
            ToolSyntax::Glm4 | ToolSyntax::ChatGlm3 => &[],
        }
    }

    /// Tool call ids this syntax's templates accept (Mistral's insist on 9 letters or digits).
    fn call_id(self, n: usize) -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let mut x = (nanos as u64)
            ^ NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (n as u64).rotate_left(32);
        if self == ToolSyntax::Mistral {
            const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
            return (0..9)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ALNUM[(x >> 33) as usize % ALNUM.len()] as char
                })
                .collect();
        }
        format!("call_{x:016x}")
    }
}

/// Where the parser is.
#[derive(Debug, PartialEq)]
enum State {
    /// Nothing decided yet (syntaxes whose calls are the whole answer).
    Undecided,
    /// Prose, watching for a call's opening tag.
    Prose,
    /// Inside a `<tool_call>` block.
    InTag,
    /// The rest of the answer is calls.
    Capturing,
}

/// Reads tool calls out of streamed text. See the module's notes.
pub struct ToolCallParser {
    syntax: ToolSyntax,
    names: Vec<String>,
    state: State,
    /// Text received but not yet sent on or parsed.
    pending: String,
    calls: usize,
    /// At most one call (`parallel_tool_calls: false`).
    single: bool,
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

impl ToolCallParser {
    /// A parser for the tools named `names`; `prefill` is text the prompt already ends with
    /// (see [`ToolSyntax::call_opening`]), read as if the model had written it.
    pub fn new(
        syntax: ToolSyntax,
        names: Vec<String>,
        single: bool,
        prefill: Option<&str>,
    ) -> ToolCallParser {
        let state = match syntax {
            ToolSyntax::GlmXml => State::Prose,
            _ => State::Undecided,
        };
        let mut parser = ToolCallParser { syntax, names, state, pending: String::new(), calls: 0, single };
        if let Some(p) = prefill {
            parser.push(p, &mut Vec::new());
        }
        parser
    }

    /// Calls sent so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Reads the next piece of text, pushing what can be sent on to `out`.
    pub fn push(&mut self, piece: &str, out: &mut Vec<StreamEvent>) {
        self.pending.push_str(piece);
        loop {
            match self.state {
                State::Undecided => match self.decide() {
                    Some(state) => self.state = state,
                    None => return,
                },
                State::Prose => {
                    if let Some(at) = self.pending.find(OPEN) {
                        let before: String = self.pending.drain(..at + OPEN.len()).collect();
                        self.prose(&before[..at], out);
                        self.state = State::InTag;
                        continue;
                    }
                    // Hold back what may be the start of the opening tag.
                    let keep = (1..OPEN.len().min(self.pending.len() + 1))
                        .rev()
                        .find(|&n| {
                            self.pending.is_char_boundary(self.pending.len() - n)
                                && OPEN.starts_with(&self.pending[self.pending.len() - n..])
                        })
                        .unwrap_or(0);
                    let send: String = self.pending.drain(..self.pending.len() - keep).collect();
                    self.prose(&send, out);
                    return;
                }
                State::InTag => {
                    let Some(at) = self.pending.find(CLOSE) else { return };
                    let body: String = self.pending.drain(..at + CLOSE.len()).collect();
                    let body = &body[..at];
                    match self.parse_tag(body) {
                        Some(call) => self.call(call, out),
                        None => self.prose(&format!("{OPEN}{body}{CLOSE}"), out),
                    }
                    self.state = State::Prose;
                }
                State::Capturing => return,
            }
        }
    }

    /// The end of the answer: whatever is still held is parsed or sent as prose. True when
    /// the answer called at least one tool.
    pub fn finish(&mut self, out: &mut Vec<StreamEvent>) -> bool {
        let rest = std::mem::take(&mut self.pending);
        match self.state {
            State::Prose => self.prose(&rest, out),
            // An unclosed block (the model ended right after its JSON) is still a call.
            State::InTag => match self.parse_tag(&rest) {
                Some(call) => self.call(call, out),
                None => self.prose(&format!("{OPEN}{rest}"), out),
            },
            State::Undecided | State::Capturing => match self.parse_whole(&rest) {
                Some(calls) if !calls.is_empty() => {
                    for c in calls {
                        self.call(c, out);
                    }
                }
                _ => self.prose(&rest, out),
            },
        }
        self.calls > 0
    }

    fn prose(&self, text: &str, out: &mut Vec<StreamEvent>) {
        // Once a call went out, what follows is the model's chatter between calls.
        if !text.is_empty() && (self.calls == 0 || !text.trim().is_empty()) {
            out.push(StreamEvent::Text(text.to_string()));
        }
    }

    fn call(&mut self, (name, arguments): (String, String), out: &mut Vec<StreamEvent>) {
        if self.single && self.calls > 0 {
            return;
        }
        out.push(StreamEvent::ToolCall {
            index: self.calls,
            id: Some(self.syntax.call_id(self.calls)),
            name: Some(name),
            arguments,
        });
        self.calls += 1;
    }

    /// For syntaxes whose calls are the whole answer: `Some(Capturing)` once the answer
    /// starts like a call, `Some(Prose)` once it cannot, `None` while it is too short to say.
    fn decide(&self) -> Option<State> {
        let text = self.pending.trim_start();
        if text.is_empty() {
            return None;
        }
        let name_line = |text: &str| match text.split_once('\n') {
            Some((first, _)) => Some(self.names.iter().any(|n| n == first.trim())),
            None if self.names.iter().any(|n| n.starts_with(text)) => None,
            None => Some(false),
        };
        let starts = match self.syntax {
            ToolSyntax::Llama3Json => {
                if text.starts_with('{') || text.starts_with("<|python_tag|>") {
                    Some(true)
                } else if "<|python_tag|>".starts_with(text) {
                    None
                } else {
                    Some(false)
                }
            }
            ToolSyntax::Mistral => {
                if text.starts_with("[TOOL_CALLS]") || text.starts_with("[{") {
                    Some(true)
                } else if "[TOOL_CALLS]".starts_with(text) || text == "[" {
                    None
                } else {
                    // `name[ARGS]{` or, with the markers hidden, `name{`.
                    let name_end = text.find(['[', '{']).unwrap_or(text.len());
                    let name = &text[..name_end];
                    if name_end < text.len() {
                        Some(self.names.iter().any(|n| n == name))
                    } else if self.names.iter().any(|n| n.starts_with(name)) {
                        None
                    } else {
                        Some(false)
                    }
                }
            }
            ToolSyntax::Glm4 | ToolSyntax::ChatGlm3 => name_line(text),
            // Small models sometimes leave the tags out and answer with the bare call.
            ToolSyntax::Hermes => Some(text.starts_with('{')),
            ToolSyntax::GlmXml => Some(false),
        }?;
        Some(if starts { State::Capturing } else { State::Prose })
    }

    fn known(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// A call object `{"name", "arguments" | "parameters"}` as (name, arguments JSON text).
    fn call_of(&self, v: &Value) -> Option<(String, String)> {
        let name = v.get("name")?.as_str()?;
        if !self.known(name) {
            return None;
        }
        let args =
            v.get("arguments").or_else(|| v.get("parameters")).cloned().unwrap_or(Value::Object(Map::new()));
        Some((name.to_string(), arguments_text(args)?))
    }

    fn parse_tag(&self, body: &str) -> Option<(String, String)> {
        let body = body.trim();
        if body.starts_with('{') {
            return self.call_of(&serde_json::from_str(body).ok()?);
        }
        // Qwen3-Coder: <function=name> with <parameter=key>value</parameter> inside.
        if let Some(rest) = body.strip_prefix("<function=") {
            let (name, mut rest) = rest.split_once('>')?;
            if !self.known(name.trim()) {
                return None;
            }
            let mut args = Map::new();
            while let Some(p) = rest.find("<parameter=") {
                let (key, after) = rest[p + "<parameter=".len()..].split_once('>')?;
                let (value, after) = after.split_once("</parameter>")?;
                let value = value.trim_matches('\n');
                let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
                args.insert(key.trim().to_string(), value);
                rest = after;
            }
            return Some((name.trim().to_string(), Value::Object(args).to_string()));
        }
        // GLM-4.5+: the name, then <arg_key>/<arg_value> pairs.
        let (name, mut rest) = body.split_once('\n').map_or((body, ""), |(n, r)| (n.trim(), r));
        if !self.known(name) {
            return None;
        }
        let mut args = Map::new();
        while let Some(k) = rest.find("<arg_key>") {
            let after = &rest[k + "<arg_key>".len()..];
            let (key, after) = after.split_once("</arg_key>")?;
            let v = after.find("<arg_value>")?;
            let (value, after) = after[v + "<arg_value>".len()..].split_once("</arg_value>")?;
            let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
            args.insert(key.trim().to_string(), value);
            rest = after;
        }
        Some((name.to_string(), Value::Object(args).to_string()))
    }

    /// The calls of a whole answer (syntaxes whose calls are the answer).
    fn parse_whole(&self, text: &str) -> Option<Vec<(String, String)>> {
        let text = text.trim();
        match self.syntax {
            ToolSyntax::Llama3Json | ToolSyntax::Hermes => {
                let text = text.strip_prefix("<|python_tag|>").unwrap_or(text).trim();
                // One object, or several separated by `;` or new lines.
                let mut calls = Vec::new();
                for v in
                    serde_json::Deserializer::from_str(text.replace(';', "\n").as_str()).into_iter::<Value>()
                {
                    calls.push(self.call_of(&v.ok()?)?);
                }
                Some(calls)
            }
            ToolSyntax::Mistral => {
                let text = text.strip_prefix("[TOOL_CALLS]").unwrap_or(text).trim();
                if text.starts_with('[') {
                    let list: Vec<Value> = serde_json::from_str(text).ok()?;
                    return list.iter().map(|v| self.call_of(v)).collect();
                }
                // name[ARGS]{...}, repeated.
                let mut calls = Vec::new();
                let mut rest = text;
                while !rest.is_empty() {
                    let brace = rest.find('{')?;
                    let name = rest[..brace].trim().trim_end_matches("[ARGS]").trim();
                    let mut stream = serde_json::Deserializer::from_str(&rest[brace..]).into_iter::<Value>();
                    let args = stream.next()?.ok()?;
                    if !self.known(name) {
                        return None;
                    }
                    calls.push((name.to_string(), arguments_text(args)?));
                    rest =
                        rest[brace + stream.byte_offset()..].trim().trim_start_matches("[TOOL_CALLS]").trim();
                }
                Some(calls)
            }
            ToolSyntax::Glm4 => {
                let (name, args) = text.split_once('\n')?;
                if !self.known(name.trim()) {
                    return None;
                }
                let args: Value = serde_json::from_str(args.trim()).ok()?;
                Some(vec![(name.trim().to_string(), arguments_text(args)?)])
            }
            ToolSyntax::ChatGlm3 => {
                let (name, args) = baimo_chat::parse_chatglm3_tool_call(text)?;
                self.known(&name).then(|| vec![(name, Value::Object(args).to_string())])
            }
            ToolSyntax::GlmXml => None,
        }
    }
}

/// Arguments as OpenAI sends them: a JSON object's text (a string holding one is unwrapped).
fn arguments_text(args: Value) -> Option<String> {
    match args {
        Value::Object(_) => Some(args.to_string()),
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(v @ Value::Object(_)) => Some(v.to_string()),
            _ => None,
        },
        Value::Null => Some("{}".into()),
        _ => None,
    }
}

/// The calls of a finished stream of events, whole.
pub fn collect_calls(events: &[StreamEvent]) -> Vec<ToolCall> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCall { id, name, arguments, .. } => Some(ToolCall {
                id: id.clone().unwrap_or_default(),
                name: name.clone().unwrap_or_default(),
                arguments: arguments.clone(),
            }),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(syntax: ToolSyntax, text: &str, split: usize) -> (String, Vec<ToolCall>) {
        let mut p = ToolCallParser::new(syntax, vec!["get_weather".into(), "search".into()], false, None);
        let mut out = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        for chunk in chars.chunks(split.max(1)) {
            p.push(&chunk.iter().collect::<String>(), &mut out);
        }
        p.finish(&mut out);
        let text = out
            .iter()
            .filter_map(|e| if let StreamEvent::Text(t) = e { Some(t.as_str()) } else { None })
            .collect();
        (text, collect_calls(&out))
    }

    #[test]
    fn every_syntax_in_every_chunking() {
        let cases = [
            (
                ToolSyntax::Hermes,
                "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"search\", \"arguments\": {\"q\": \"x\"}}\n</tool_call>",
                "Let me check.\n",
                2,
            ),
            (
                ToolSyntax::GlmXml,
                "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>",
                "",
                1,
            ),
            (ToolSyntax::Hermes, "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}", "", 1),
            (
                ToolSyntax::Hermes,
                "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>",
                "",
                1,
            ),
            (
                ToolSyntax::Llama3Json,
                "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
                "",
                1,
            ),
            (
                ToolSyntax::Mistral,
                "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"search\", \"arguments\": {\"q\": \"x\"}}]",
                "",
                2,
            ),
            (ToolSyntax::Mistral, "get_weather{\"city\": \"Paris\"}", "", 1),
            (ToolSyntax::Glm4, "get_weather\n{\"city\": \"Paris\"}", "", 1),
            (ToolSyntax::ChatGlm3, "get_weather\n ```python\ntool_call(city='Paris')\n```", "", 1),
        ];
        for (syntax, text, prose, n) in cases {
            for split in [1, 2, 3, 7, 1000] {
                let (got_text, calls) = run(syntax, text, split);
                assert_eq!(got_text, prose, "{syntax:?} split {split}");
                assert_eq!(calls.len(), n, "{syntax:?} split {split}");
                assert_eq!(calls[0].name, "get_weather");
                assert_eq!(
                    serde_json::from_str::<Value>(&calls[0].arguments).unwrap(),
                    serde_json::json!({"city": "Paris"})
                );
            }
        }
    }

    #[test]
    fn prose_and_false_starts_stay_prose() {
        for (syntax, text) in [
            (ToolSyntax::Hermes, "Use <tool_call> tags? No: <tool_call>{not json}</tool_call> done"),
            (ToolSyntax::Hermes, "a < b and <tool_ is not a tag"),
            (ToolSyntax::Hermes, "{\"name\": \"Bob\", \"age\": 3}"),
            (ToolSyntax::Llama3Json, "{\"name\": \"unknown_tool\", \"parameters\": {}}"),
            (ToolSyntax::Llama3Json, "The weather is fine."),
            (ToolSyntax::Glm4, "get_weather is a tool I could call."),
            (ToolSyntax::Mistral, "[1, 2, 3]"),
        ] {
            for split in [1, 4, 1000] {
                let (got, calls) = run(syntax, text, split);
                assert_eq!((got.as_str(), calls.len()), (text, 0), "{syntax:?} split {split}");
            }
        }
    }

    #[test]
    fn a_prefilled_opening_is_read_as_the_models() {
        let open = ToolSyntax::Hermes.call_opening(Some("search")).unwrap();
        let mut p = ToolCallParser::new(ToolSyntax::Hermes, vec!["search".into()], false, Some(&open));
        let mut out = Vec::new();
        p.push("\"q\": \"rust\"}}\n</tool_call>", &mut out);
        assert!(p.finish(&mut out));
        assert_eq!(collect_calls(&out)[0].arguments, r#"{"q":"rust"}"#);
        assert_eq!(ToolSyntax::Mistral.call_id(0).len(), 9);
    }

    #[test]
    fn templates_tell_their_syntax() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/reference/templates/");
        for (file, syntax) in [
            ("Qwen-Qwen2.5-7B-Instruct.jinja", Some(ToolSyntax::Hermes)),
            ("Qwen-Qwen3-0.6B.jinja", Some(ToolSyntax::Hermes)),
            ("Qwen3-Coder.jinja", Some(ToolSyntax::Hermes)),
            ("meta-llama-Llama-3.1-8B-Instruct.jinja", Some(ToolSyntax::Llama3Json)),
            ("meta-llama-Llama-3.3-70B-Instruct.jinja", Some(ToolSyntax::Llama3Json)),
            ("mistralai-Mistral-Nemo-Instruct-2407.jinja", Some(ToolSyntax::Mistral)),
            ("GLM-4.6.jinja", Some(ToolSyntax::GlmXml)),
            ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", Some(ToolSyntax::Hermes)),
            ("google-gemma-2-2b-it.jinja", None),
        ] {
            let source = std::fs::read_to_string(format!("{dir}{file}")).unwrap_or_else(|e| {
                panic!("{file}: {e} (the templates are in ../shared/reference/templates)")
            });
            assert_eq!(ToolSyntax::of_template(&source), syntax, "{file}");
        }
    }
}
