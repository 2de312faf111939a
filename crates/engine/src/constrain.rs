//! Grammar-constrained sampling: before each token is drawn, every token that cannot continue
//! the grammar gets a logit of -∞; after it is drawn, the grammar reads it. The grammar engine is
//! llguidance (what llama.cpp and mistral.rs use): it takes JSON Schemas and Lark grammars and
//! computes a token mask over the whole vocabulary from a trie of the tokens' bytes, which baimo
//! builds from its own vocabularies (GGUF, tokenizer.json, SentencePiece, tiktoken alike).
//!
//! GBNF (llama.cpp's grammar format) is translated to Lark first ([`gbnf_to_lark`]).

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::earley::SlicedBiasComputer;
use llguidance::toktrie::{InferenceCapabilities, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use baimo_tokenizer::Tokenizer;

/// A vocabulary as llguidance sees it: each token's bytes (control tokens marked as special,
/// so grammars never produce them by accident).
struct VocabEnv {
    trie: TokTrie,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// Makes grammar matchers for one model's vocabulary (built once per model: the trie and the
/// slices llguidance precomputes take a moment on a large vocabulary).
pub struct Grammars {
    factory: ParserFactory,
    /// The tokens that end an answer, all allowed where the grammar allows its end.
    eog: Vec<u32>,
    vocab_size: usize,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").field("vocab_size", &self.vocab_size).finish()
    }
}

/// What the answer must match.
#[derive(Clone, Debug, PartialEq)]
pub enum GrammarSpec {
    JsonSchema(serde_json::Value),
    Lark(String),
}

impl Grammars {
    /// For a model's tokenizer; `vocab_size` is the number of logits (at least the tokenizer's).
    pub fn new(tokenizer: &Tokenizer, vocab_size: usize) -> Result<Grammars, String> {
        let eog: Vec<u32> = tokenizer.eog_ids().to_vec();
        let eos =
            tokenizer.eos_id().or_else(|| eog.first().copied()).ok_or("the vocabulary has no end token")?;
        let words: Vec<Vec<u8>> = (0..vocab_size as u32)
            .map(|id| {
                if id as usize >= tokenizer.vocab_size() {
                    return Vec::new();
                }
                if tokenizer.is_control(id) || tokenizer.is_eog(id) {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(tokenizer.token_text(id).unwrap_or("").as_bytes());
                    return w;
                }
                tokenizer.token_bytes(id, false).into_owned()
            })
            .collect();
        let info = TokRxInfo::new(vocab_size as u32, eos);
        let env: TokEnv = Arc::new(VocabEnv { trie: TokTrie::from(&info, &words) });
        let mut factory =
            ParserFactory::new(&env, InferenceCapabilities::default(), &SlicedBiasComputer::general_slices())
                .map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Grammars { factory, eog, vocab_size })
    }

    /// A matcher for one answer; an error says what is wrong with the grammar.
    pub fn matcher(&self, spec: &GrammarSpec) -> Result<Constraint, String> {
        let grammar = match spec {
            GrammarSpec::JsonSchema(schema) => TopLevelGrammar::from_json_schema(schema.clone()),
            GrammarSpec::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        };
        let parser = self.factory.create_parser(grammar).map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(e);
        }
        Ok(Constraint { matcher, eog: self.eog.clone(), vocab_size: self.vocab_size })
    }
}

/// A grammar for a request: each of its answers gets its own [`Constraint`] from it.
#[derive(Clone, Debug)]
pub struct GrammarRequest {
    pub grammars: Arc<Grammars>,
    pub spec: GrammarSpec,
}

impl GrammarRequest {
    pub fn constraint(&self) -> Result<Constraint, String> {
        self.grammars.matcher(&self.spec)
    }
}

/// One answer's grammar state.
pub struct Constraint {
    matcher: Matcher,
    eog: Vec<u32>,
    vocab_size: usize,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("stopped", &self.matcher.is_stopped()).finish()
    }
}

impl Constraint {
    /// Whether the grammar is complete and allows nothing more.
    pub fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Sets the logits of tokens the grammar does not allow next to -∞ (end tokens are allowed
    /// where the grammar may end). False when the grammar is in error (nothing is allowed).
    pub fn mask(&mut self, logits: &mut [f32]) -> bool {
        let Ok(mask) = self.matcher.compute_mask() else { return false };
        let mut any = false;
        let n = logits.len().min(self.vocab_size);
        for (id, l) in logits[..n].iter_mut().enumerate() {
            // End tokens are decided below, by whether the grammar may end here.
            if mask.is_allowed(id as TokenId) {
                any = true;
            } else if !self.eog.contains(&(id as u32)) {
                *l = f32::NEG_INFINITY;
            }
        }
        for l in &mut logits[n..] {
            *l = f32::NEG_INFINITY;
        }
        let may_end = self.matcher.is_accepting().unwrap_or(false);
        if !may_end {
            for &e in &self.eog {
                if let Some(l) = logits.get_mut(e as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        any || may_end
    }

    /// The grammar reads the token drawn (not an end token).
    pub fn accept(&mut self, token: u32) -> bool {
        self.matcher.consume_token(token).is_ok()
    }
}

/// llama.cpp's GBNF as a Lark grammar: `root` is the start rule, `::=` becomes `:`, rule names
/// lose their dashes, character classes and `.` become regular expressions. Comments go.
pub fn gbnf_to_lark(gbnf: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = gbnf.chars().peekable();
    let rule_name = |name: &str| if name == "root" { "start".to_string() } else { name.replace('-', "_") };
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if !word.is_empty() {
            out.push_str(&rule_name(word));
            word.clear();
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                flush(&mut word, &mut out);
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                flush(&mut word, &mut out);
                out.push('"');
                while let Some(c) = chars.next() {
                    out.push(c);
                    if c == '\\' {
                        out.push(chars.next().ok_or("an unfinished escape in a string")?);
                    } else if c == '"' {
                        break;
                    }
                }
            }
            '[' => {
                flush(&mut word, &mut out);
                out.push_str("/[");
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            out.push('\\');
                            out.push(chars.next().ok_or("an unfinished escape in a class")?);
                        }
                        '/' => out.push_str("\\/"),
                        ']' => {
                            out.push_str("]/");
                            break;
                        }
                        c => out.push(c),
                    }
                }
            }
            '.' => {
                flush(&mut word, &mut out);
                out.push_str("/./");
            }
            ':' if chars.peek() == Some(&':') => {
                flush(&mut word, &mut out);
                chars.next();
                if chars.next() != Some('=') {
                    return Err("`::` must be followed by `=`".into());
                }
                out.push(':');
            }
            c if c.is_alphanumeric() || c == '-' || c == '_' => word.push(c),
            c => {
                flush(&mut word, &mut out);
                out.push(c);
            }
        }
    }
    flush(&mut word, &mut out);
    // Lark wants each rule to start its own line; GBNF alternatives may continue on the next
    // lines, which Lark reads the same way once they are indented.
    let mut lark = String::new();
    for line in out.lines() {
        let is_rule = line.split_once(':').is_some_and(|(name, _)| {
            let name = name.trim();
            !name.is_empty()
                && name.chars().all(|c| c.is_alphanumeric() || c == '_')
                && !line.starts_with(char::is_whitespace)
        });
        if !is_rule && !line.trim().is_empty() {
            lark.push_str("    ");
        }
        lark.push_str(line);
        lark.push('\n');
    }
    Ok(lark)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gbnf_becomes_lark() {
        let lark =
            gbnf_to_lark("root ::= answer # yes or no\nanswer ::= (\"yes\" | \"no\") [.!]?\n").unwrap();
        assert_eq!(lark, "start : answer \nanswer : (\"yes\" | \"no\") /[.!]/?\n");
        assert!(gbnf_to_lark("root :: x").is_err());
    }
}
