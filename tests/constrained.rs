//! Grammar-constrained sampling on tiny random models of four tokenizer kinds (byte-level BPE
//! from tokenizer.json, GPT-2's, SentencePiece, ChatGLM's): sampled freely they never write
//! JSON, constrained every answer parses and fits the schema (`json_object`, whose strings have
//! no bound, is checked on a real model in tests/requests.rs); a GBNF grammar gives only its
//! words; a forced tool call's arguments fit the tool's schema.

use std::path::PathBuf;
use std::sync::Arc;

use baimo_api::{ChatRequest, Message, ResponseFormat, Role, Tool, ToolChoice};
use baimo_engine::{EngineLimits, LoadedModel, Session};
use baimo_threads::ThreadPool;
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf").join(name)
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}, "maxItems": 3},
            "ok": {"type": "boolean"}
        },
        "required": ["name", "age", "tags", "ok"],
        "additionalProperties": false
    })
}

/// The schema above, checked by hand.
fn fits(v: &Value) -> bool {
    let Some(o) = v.as_object() else { return false };
    o.len() == 4
        && o["name"].as_str().is_some_and(|s| s.chars().count() <= 8)
        && o["age"].as_u64().is_some_and(|a| a <= 150)
        && o["tags"].as_array().is_some_and(|t| {
            t.len() <= 3 && t.iter().all(|x| ["a", "b", "c"].contains(&x.as_str().unwrap_or("")))
        })
        && o["ok"].is_boolean()
}

fn request(format: Option<ResponseFormat>, seed: u64) -> ChatRequest {
    let mut req = ChatRequest::new("m", vec![Message::text(Role::User, "Describe a person as JSON.")]);
    req.response_format = format;
    req.temperature = Some(1.0);
    req.seed = Some(seed);
    req.max_tokens = Some(160);
    req
}

fn answer(model: &Arc<LoadedModel>, pool: &Arc<ThreadPool>, req: &ChatRequest) -> String {
    let prepared = model.prepare_chat(req, EngineLimits { context: 512, max_tokens: None }).unwrap();
    let mut session = Session::new(model.clone(), pool.clone(), 512);
    session.generate(&prepared.prompt, &prepared.options, &mut |_| {}, None).unwrap().text
}

#[test]
fn constrained_answers_always_fit_the_schema_on_random_models() {
    let pool = Arc::new(ThreadPool::new(2));
    for name in ["qwen2", "gpt2", "llama", "chatglm3"] {
        let model = Arc::new(LoadedModel::load(&fixture(name)).unwrap());
        let format = ResponseFormat::JsonSchema { name: "p".into(), schema: schema(), strict: true };
        for seed in 0..5 {
            let free = answer(&model, &pool, &request(None, seed));
            assert!(serde_json::from_str::<Value>(&free).map_or(true, |v| !fits(&v)), "{name}: {free:?}");
            let text = answer(&model, &pool, &request(Some(format.clone()), seed));
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} seed {seed}: {text:?}: {e}"));
            assert!(fits(&v), "{name} seed {seed}: {v}");
        }
    }
}

#[test]
fn a_gbnf_grammar_gives_only_its_words_and_bad_grammars_are_refused() {
    let pool = Arc::new(ThreadPool::new(2));
    let model = Arc::new(LoadedModel::load(&fixture("qwen2")).unwrap());
    for seed in 0..8 {
        let mut req = request(None, seed);
        req.grammar = Some("root ::= answer \".\"\nanswer ::= \"yes\" | \"no\" | \"maybe\"\n".into());
        let text = answer(&model, &pool, &req);
        assert!(["yes.", "no.", "maybe."].contains(&text.as_str()), "{text:?}");
    }
    let mut bad = request(None, 0);
    bad.grammar = Some("root ::= undefined-rule".into());
    let e = model.prepare_chat(&bad, EngineLimits { context: 512, max_tokens: None }).unwrap_err();
    assert!(e.to_string().contains("grammar"), "{e}");
}

#[test]
fn a_forced_tool_call_on_a_random_model_parses_and_fits() {
    let pool = Arc::new(ThreadPool::new(2));
    // Qwen2's template teaches the Hermes syntax; the random model would never write a call.
    let model = Arc::new(LoadedModel::load(&fixture("qwen2")).unwrap());
    let mut req = request(None, 3);
    req.tools = vec![Tool {
        name: "get_weather".into(),
        description: Some("Weather in a city".into()),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}},
                           "required": ["city"], "additionalProperties": false}),
    }];
    for choice in [ToolChoice::Required, ToolChoice::Function("get_weather".into())] {
        req.tool_choice = Some(choice);
        let prepared = model.prepare_chat(&req, EngineLimits { context: 4096, max_tokens: None }).unwrap();
        // The fixture's context (128) is shorter than the tools' description: its last tokens
        // (the call's opening among them) stand for the prompt; the grammar does the rest.
        let prompt = &prepared.prompt[prepared.prompt.len() - 16..];
        let mut session = Session::new(model.clone(), pool.clone(), 128);
        let g = session.generate(prompt, &prepared.options, &mut |_| {}, None).unwrap();
        let mut parser = prepared.tools.as_ref().unwrap().parser();
        let mut events = Vec::new();
        parser.push(&g.text, &mut events);
        assert!(parser.finish(&mut events), "{:?}", g.text);
        let calls = baimo_engine::tools::collect_calls(&events);
        assert_eq!(calls[0].name, "get_weather");
        let args: Value = serde_json::from_str(&calls[0].arguments).unwrap();
        assert!(args["city"].as_str().is_some_and(|c| c.chars().count() <= 10), "{args}");
        assert_eq!(args.as_object().unwrap().len(), 1, "{args}");
    }
}
