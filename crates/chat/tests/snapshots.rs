//! Snapshots of what every template of the corpus renders for three conversations: the basic
//! one (system, user, assistant, user; Chinese text and emoji), one with tools (for templates
//! that mention tools) and one without a system message. Exactness against transformers is
//! checked in hf_reference.rs; these make changes in the prompts visible in review.

mod common;

use baimo_chat::ChatTemplate;
use common::{BOS_TOKEN, EOS_TOKEN};

const SNAPSHOT_SCENARIOS: [&str; 3] = ["basic", "tools", "no_system"];

#[test]
fn every_template_renders_as_snapshotted() {
    let templates = common::load_templates();
    let scenarios = common::load_scenarios();
    for template in &templates {
        let mut snapshot = String::new();
        match ChatTemplate::new(&template.source, BOS_TOKEN, EOS_TOKEN) {
            Err(err) => snapshot.push_str(&format!("does not compile: {err}\n")),
            Ok(compiled) => {
                for (name, scenario) in &scenarios {
                    if !SNAPSHOT_SCENARIOS.contains(&name.as_str()) || !scenario.applies_to(&template.source)
                    {
                        continue;
                    }
                    // The markers show where a rendering starts and ends, so that leading
                    // and trailing whitespace stay visible.
                    let rendered = match scenario.render(&compiled) {
                        Ok(text) => text,
                        Err(err) => format!("ERROR: {err}"),
                    };
                    snapshot.push_str(&format!("===== {name} =====\n{rendered}\n===== end {name} =====\n"));
                }
            }
        }
        insta::assert_snapshot!(template.name.clone(), snapshot);
    }
}
