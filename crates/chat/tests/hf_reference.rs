//! Byte-for-byte agreement with Hugging Face transformers.
//!
//! tests/fixtures/hf_reference.json holds what Python's Jinja2, set up as transformers'
//! `apply_chat_template` sets it up, renders for every template of the corpus and every
//! conversation of tests/fixtures/conversations.json (made by
//! scripts/render_chat_templates.py). Each rendering here must equal it: the same text, or
//! an error where transformers errs too (with the same message when the template raised it).
//!
//! Where baimo knowingly differs (KNOWN_DIFFERENCES), its rendering must equal the fixture's
//! "adjusted" reference instead: what Jinja2 itself renders once the difference is removed at
//! its cause (none iterated as empty, `map` giving a list, `safe` giving a plain str), made by
//! the same script.

mod common;

use std::collections::BTreeMap;

use baimo_chat::{ChatError, ChatTemplate};
use common::{BOS_TOKEN, EOS_TOKEN, Reference, References};

/// A known difference from transformers, and the adjustment of scripts/render_chat_templates.py
/// that removes it at its cause in Jinja2 (the fixture's "adjusted" references).
struct Difference {
    why: &'static str,
    adjustment: &'static str,
}

/// Iterating over `none`: Jinja2 raises TypeError, minijinja iterates nothing (templates that
/// loop over `tools` unconditionally, as transformers passes `tools=None` without tools). Not a
/// KNOWN_DIFFERENCES entry: wherever Jinja2 fails so, `agrees` requires baimo's rendering to be
/// Jinja2's once none iterates as empty (or its failure, where Jinja2 then fails).
const NONE_IS_ITERABLE: Difference = Difference {
    why: "minijinja iterates none as empty; Jinja2 raises TypeError",
    adjustment: "none_iterates_as_empty",
};
/// `tools | map(...)` is a generator in Python, which json.dumps refuses; minijinja's `map`
/// gives a list, which `tojson` serializes.
const MAP_IS_A_LIST: Difference = Difference {
    why: "minijinja's map filter gives a list; Python's a generator json.dumps refuses",
    adjustment: "map_gives_a_list",
};
/// `"..." | safe + text` is Markup + str in Python, which HTML-escapes `text` (`<` becomes
/// `&lt;`, `"` becomes `&#34;`) although transformers disables autoescaping; minijinja's `+`
/// never escapes.
const MARKUP_CONCAT_ESCAPES: Difference = Difference {
    why: "Jinja2's Markup + str HTML-escapes the str; minijinja's + does not",
    adjustment: "safe_gives_a_str",
};

/// Jinja2's message for iterating `none` (see NONE_IS_ITERABLE).
const NONE_NOT_ITERABLE: &str = "TypeError: 'NoneType' object is not iterable";

/// Where we knowingly differ from transformers: (template, scenario, why). In all of them
/// transformers fails or produces HTML entities, where baimo renders the plain prompt, which
/// must equal Jinja2's rendering with the difference removed (the adjusted reference).
const KNOWN_DIFFERENCES: &[(&str, &str, Difference)] = &[
    ("llama-cpp-deepseek-r1", "tools", MAP_IS_A_LIST),
    ("llama-cpp-deepseek-r1", "tool_roundtrip", MAP_IS_A_LIST),
    ("llama-cpp-deepseek-r1", "openai_tool_call", MAP_IS_A_LIST),
    ("meetkai-functionary-medium-v3.1", "tools", MARKUP_CONCAT_ESCAPES),
    ("meetkai-functionary-medium-v3.1", "tool_roundtrip", MARKUP_CONCAT_ESCAPES),
    ("meetkai-functionary-medium-v3.1", "openai_tool_call", MARKUP_CONCAT_ESCAPES),
];

/// `none_iterated` is Jinja2's rendering with none iterated as empty, where that differs:
/// where Jinja2 fails iterating `none`, minijinja goes on, and must then render what Jinja2
/// renders, or fail where Jinja2 fails, once Jinja2 goes on too.
fn agrees(
    reference: &Reference,
    ours: &Result<String, ChatError>,
    none_iterated: Option<&Reference>,
) -> bool {
    match (reference, ours) {
        (Reference { output: Some(expected), .. }, Ok(actual)) => expected == actual,
        (Reference { error: Some(error), .. }, _)
            if error.kind == "other" && error.message == NONE_NOT_ITERABLE =>
        {
            none_iterated.is_some_and(|none_iterated| agrees(none_iterated, ours, None))
        }
        (Reference { error: Some(error), .. }, Err(ChatError::Raised(message))) => {
            error.kind == "raise_exception" && &error.message == message
        }
        (Reference { error: Some(error), .. }, Err(ours)) => {
            error.kind == "other" && same_failure(&error.message, ours)
        }
        _ => false,
    }
}

/// Where Jinja2 failed with something other than `raise_exception`, what minijinja must say
/// for it to be the same failure (not merely a failure): the same operation on the same types,
/// the same missing name or method. Every message form in the reference is handled; a new one
/// fails the test until it is.
fn same_failure(jinja2: &str, ours: &ChatError) -> bool {
    let ChatError::Render(message) = ours else { return false };
    match minijinja_wording(jinja2) {
        Some(needle) => message.contains(&needle),
        None => false,
    }
}

/// Python's type names as minijinja calls them.
fn minijinja_type(python: &str) -> &str {
    match python {
        "list" => "sequence",
        "dict" => "map",
        "str" => "string",
        "NoneType" | "None" => "none",
        other => other,
    }
}

/// The part of minijinja's message that names the same failure as Jinja2's `message`.
fn minijinja_wording(message: &str) -> Option<String> {
    let (class, text) = message.split_once(": ")?;
    let quoted =
        |s: &str, open: &str, close: &str| Some(s.split_once(open)?.1.split_once(close)?.0.to_string());
    Some(match class {
        "TypeError" if text.starts_with("can only concatenate str") => {
            format!("unsupported types string and {}", minijinja_type(&quoted(text, "(not \"", "\")")?))
        }
        "TypeError" if text == "Can only get item pairs from a mapping." => {
            "cannot convert value into pairs".into()
        }
        "TypeError" if text == "argument of type 'NoneType' is not iterable" => {
            "cannot perform a containment check".into()
        }
        "TypeError" if text == "object of type 'NoneType' has no len()" => {
            "cannot calculate length of value of type none".into()
        }
        "UndefinedError" if text.ends_with("' is undefined") => {
            format!("`{}` is undefined", quoted(text, "'", "'")?)
        }
        "UndefinedError" if text.starts_with("None has no element") => "is undefined".into(),
        "UndefinedError" if text.contains(" has no attribute ") => {
            let (subject, attribute) = text.split_once(" has no attribute ")?;
            let subject = subject.trim_matches('\'').trim_end_matches(" object");
            let attribute = attribute.trim_matches('\'');
            if subject == "dict" {
                // A missing key of a mapping is undefined; using it is what fails.
                format!(".{attribute}` is undefined")
            } else {
                format!("{} has no method named {attribute}", minijinja_type(subject))
            }
        }
        // Jinja2's sandbox forbids mutating a list; minijinja has no such method at all.
        "SecurityError" => format!("no method named {}", quoted(text, "attribute '", "'")?),
        "TemplateRuntimeError" => format!("filter {} is unknown", quoted(text, "No filter named '", "'")?),
        _ => return None,
    })
}

fn describe(ours: &Result<String, ChatError>) -> String {
    match ours {
        Ok(text) => format!("{text:?}"),
        Err(err) => format!("error: {err}"),
    }
}

fn describe_reference(reference: Option<&Reference>) -> String {
    match reference {
        Some(Reference { output: Some(text), .. }) => format!("{text:?}"),
        Some(Reference { error: Some(error), .. }) => format!("error ({}): {}", error.kind, error.message),
        _ => "nothing".to_owned(),
    }
}

/// The fixture's rendering with `adjustment`, where it differs from transformers'.
fn adjusted<'a>(
    adjusted: &'a BTreeMap<String, References>,
    adjustment: &str,
    template: &str,
    scenario: &str,
) -> Option<&'a Reference> {
    adjusted.get(adjustment)?.get(template)?.get(scenario)
}

#[test]
fn renders_every_template_exactly_like_transformers() {
    let templates = common::load_templates();
    let scenarios = common::load_scenarios();
    let references = common::load_references();
    let adjusted_references = common::load_adjusted_references();

    let mut matched = 0;
    let mut matched_adjusted = 0;
    let mut total = 0;
    let mut templates_fully_matching = 0;
    let mut unexpected = Vec::new();
    for template in &templates {
        let Some(expected_by_scenario) = references.get(&template.name) else {
            unexpected.push(format!("{}: no reference; rerun the script", template.name));
            continue;
        };
        let compiled = ChatTemplate::new(&template.source, BOS_TOKEN, EOS_TOKEN);
        let mut all_match = true;
        for (scenario_name, scenario) in &scenarios {
            if !scenario.applies_to(&template.source) {
                continue;
            }
            let Some(reference) = expected_by_scenario.get(scenario_name) else {
                unexpected.push(format!("{}/{scenario_name}: no reference", template.name));
                continue;
            };
            total += 1;
            let ours = match &compiled {
                Ok(compiled) => scenario.render(compiled),
                Err(err) => Err(ChatError::Syntax(err.to_string())),
            };
            let known = KNOWN_DIFFERENCES
                .iter()
                .find(|(name, scenario, _)| *name == template.name && scenario == scenario_name);
            let none_iterated =
                adjusted(&adjusted_references, NONE_IS_ITERABLE.adjustment, &template.name, scenario_name);
            if agrees(reference, &ours, none_iterated) {
                matched += 1;
                if known.is_some() {
                    unexpected.push(format!(
                        "{}/{scenario_name}: now matches; drop it from KNOWN_DIFFERENCES",
                        template.name
                    ));
                }
            } else if let Some((_, _, difference)) = known {
                all_match = false;
                // Not checked against itself: Jinja2 with the difference removed at its cause
                // must render exactly what baimo renders, and that must be a prompt.
                let expected =
                    adjusted(&adjusted_references, difference.adjustment, &template.name, scenario_name);
                if expected.is_some_and(|expected| expected.output.is_some() && agrees(expected, &ours, None))
                {
                    matched_adjusted += 1;
                } else {
                    unexpected.push(format!(
                        "{}/{scenario_name} (known difference: {}):\n  jinja2 with {}: {}\n  baimo:        {}",
                        template.name,
                        difference.why,
                        difference.adjustment,
                        describe_reference(expected),
                        describe(&ours)
                    ));
                }
            } else {
                all_match = false;
                unexpected.push(format!(
                    "{}/{scenario_name}:\n  transformers: {}\n  baimo:        {}",
                    template.name,
                    describe_reference(Some(reference)),
                    describe(&ours)
                ));
            }
        }
        if all_match {
            templates_fully_matching += 1;
        }
    }
    eprintln!(
        "{matched}/{total} renderings and {templates_fully_matching}/{} templates match transformers exactly; \
         {matched_adjusted}/{} known differences match Jinja2 with the difference removed",
        templates.len(),
        KNOWN_DIFFERENCES.len()
    );
    assert!(unexpected.is_empty(), "{} unexpected results:\n{}", unexpected.len(), unexpected.join("\n"));
    assert_eq!(matched_adjusted, KNOWN_DIFFERENCES.len(), "every known difference is compared");
}
