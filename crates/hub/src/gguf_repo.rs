//! GGUF repositories on the hub: what users type (`owner/name:Q4_K_M`, `hf.co/owner/name`,
//! `owner/name/file.gguf`, as Ollama and `llama-cli -hf` take them), the quantization a file
//! name carries, and which of a repository's files to fetch.

/// A model named by its place on the hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubSpec {
    /// `owner/name[@revision]`: a model folder, or the GGUF repository it turns out to be.
    Repo { repo: String, revision: String },
    /// `owner/name:QUANT` or `hf.co/owner/name[:QUANT]`: a GGUF of a repository, by quant.
    Gguf { repo: String, revision: String, quant: Option<String> },
    /// `owner/name/path/file.gguf`: that file.
    GgufFile { repo: String, revision: String, file: String },
}

impl HubSpec {
    /// Reads a model name as a hub address, or `None` when it is not one.
    pub fn parse(text: &str) -> Option<HubSpec> {
        let (rest, forced_gguf) =
            match ["https://huggingface.co/", "https://hf.co/", "huggingface.co/", "hf.co/"]
                .iter()
                .find_map(|prefix| text.strip_prefix(prefix))
            {
                Some(rest) => (rest, true),
                None => (text, false),
            };
        // `owner/name:QUANT`; a `@revision` may stand after the name (`owner/name@rev:QUANT`) or
        // after the quant (`owner/name:QUANT@rev`).
        let (rest, revision, quant_after) = match rest.split_once('@') {
            Some((rest, revision)) => {
                let (revision, quant) = match revision.rsplit_once(':') {
                    Some((revision, quant)) => (revision, Some(quant)),
                    None => (revision, None),
                };
                if !is_revision(revision) || (rest.contains(':') && quant.is_some()) {
                    return None;
                }
                (rest, revision.to_owned(), quant)
            }
            None => (rest, "main".to_owned(), None),
        };
        let (path, quant) = match (rest.rsplit_once(':'), quant_after) {
            (None, Some(quant)) if is_quant_word(quant) => (rest, Some(quant.to_ascii_uppercase())),
            (None, Some(_)) => return None,
            (split, _) => match split {
                Some((path, quant)) if is_quant_word(quant) => (path, Some(quant.to_ascii_uppercase())),
                Some(_) => return None,
                None => (rest, None),
            },
        };
        let segments: Vec<&str> = path.split('/').collect();
        if segments.len() < 2 || !segments.iter().all(|s| is_plain_segment(s)) {
            return None;
        }
        let repo = format!("{}/{}", segments[0], segments[1]);
        // `dir/model.gguf` is a local file that is not there, not a repository.
        if segments.len() == 2 && segments[1].to_ascii_lowercase().ends_with(".gguf") {
            return None;
        }
        if segments.len() > 2 {
            let file = segments[2..].join("/");
            return (quant.is_none() && file.to_ascii_lowercase().ends_with(".gguf"))
                .then_some(HubSpec::GgufFile { repo, revision, file });
        }
        Some(if forced_gguf || quant.is_some() {
            HubSpec::Gguf { repo, revision, quant }
        } else {
            HubSpec::Repo { repo, revision }
        })
    }
}

fn is_plain_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A branch, tag or commit name that stays one folder of the cache: plain characters, path
/// segments that are neither empty nor `.`/`..`.
fn is_revision(s: &str) -> bool {
    !s.is_empty() && s.split('/').all(is_plain_segment)
}

fn is_quant_word(s: &str) -> bool {
    !s.is_empty() && s.len() <= 16 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The quantizations llama.cpp's `llama-quantize` names, the usual tags of GGUF file names.
const QUANT_NAMES: &[&str] = &[
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q6_K_L", "Q5_K_M", "Q5_K_S", "Q5_K_L", "Q5_0", "Q5_1", "Q4_K_M",
    "Q4_K_S", "Q4_K_L", "Q4_K_XL", "Q4_0", "Q4_1", "Q3_K_XL", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K", "Q2_K_L",
    "Q2_K_XL", "Q2_K_S", "IQ4_XS", "IQ4_NL", "IQ3_M", "IQ3_S", "IQ3_XS", "IQ3_XXS", "IQ2_M", "IQ2_S",
    "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S", "TQ1_0", "TQ2_0", "MXFP4",
];

/// What to take when the user names no quantization: Q4_K_M (Ollama's and llama.cpp's default),
/// else the nearest in size and quality, larger before smaller.
const DEFAULT_ORDER: &[&str] = &[
    "Q4_K_M", "Q4_K_S", "Q4_K_L", "Q4_K_XL", "Q4_0", "IQ4_XS", "IQ4_NL", "Q4_1", "Q5_K_M", "Q5_K_S", "Q5_0",
    "Q5_1", "Q3_K_L", "Q3_K_XL", "Q3_K_M", "Q6_K", "Q6_K_L", "Q3_K_S", "IQ3_M", "Q8_0", "IQ3_XS", "Q2_K_L",
    "Q2_K", "BF16", "F16", "F32",
];

/// The quantization tag of a GGUF file name (`Qwen2.5-0.5B-Instruct-Q4_K_M.gguf` → `Q4_K_M`),
/// read from the file name, else from the folder it is in (`Q4_K_M/part-00001-of-00002.gguf`).
pub fn quant_of(path: &str) -> Option<String> {
    let mut parts = path.rsplit('/');
    parts.next()?;
    let stem = gguf_stem(path)?;
    let stem = split_part(stem).map_or(stem, |(base, _, _)| base);
    let in_words = |text: &str| {
        // The tag nearest the end of the name wins.
        text.rsplit(['-', '.']).find_map(|word| {
            let word = word.to_ascii_uppercase();
            QUANT_NAMES
                .iter()
                .filter(|q| word == **q || word.ends_with(&format!("_{q}")))
                .max_by_key(|q| q.len())
                .map(|q| q.to_string())
        })
    };
    in_words(stem).or_else(|| parts.next().and_then(in_words))
}

/// The file name of `path` without its `.gguf` (any case), if it is a GGUF's.
pub fn gguf_stem(path: &str) -> Option<&str> {
    let name = path.rsplit('/').next()?;
    let cut = name.len().checked_sub(5)?;
    name.is_char_boundary(cut).then_some(())?;
    name[cut..].eq_ignore_ascii_case(".gguf").then_some(&name[..cut])
}

/// `name-00002-of-00005` → (`name`, 2, 5): llama.cpp's `gguf-split` naming.
pub fn split_part(stem: &str) -> Option<(&str, u32, u32)> {
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (base, index) = rest.rsplit_once('-')?;
    let number =
        |s: &str| (s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten();
    let (index, count) = (number(index)?, number(count)?);
    (index >= 1 && index <= count).then_some((base, index, count))
}

/// One file of a repository listing, with what the hub says of its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoFile {
    pub path: String,
    pub size: u64,
    /// The sha256 of an LFS file (every GGUF on the hub is one).
    pub sha256: Option<String>,
}

/// Which GGUF of a listing to fetch, or why none.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice<'a> {
    One(&'a RepoFile),
    /// The parts of a split GGUF, in order.
    Split(Vec<&'a RepoFile>),
    /// No GGUF of that quantization; the ones there are.
    NoSuchQuant {
        available: Vec<String>,
    },
    NoGguf,
}

/// Picks the GGUF of `quant` (default: Q4_K_M, else [`DEFAULT_ORDER`]) among `files`; vision
/// projectors (`mmproj`) are not models.
pub fn choose<'a>(files: &'a [RepoFile], quant: Option<&str>) -> Choice<'a> {
    let ggufs: Vec<&RepoFile> = files
        .iter()
        .filter(|f| {
            f.path.to_ascii_lowercase().ends_with(".gguf") && !f.path.to_ascii_lowercase().contains("mmproj")
        })
        .collect();
    if ggufs.is_empty() {
        return Choice::NoGguf;
    }
    let mut available: Vec<String> = ggufs.iter().filter_map(|f| quant_of(&f.path)).collect();
    available.sort();
    available.dedup();
    let wanted = match quant {
        Some(q) => q.to_ascii_uppercase(),
        // One GGUF without a tag: that one.
        None if available.is_empty() && ggufs.len() == 1 => return Choice::One(ggufs[0]),
        None => match DEFAULT_ORDER.iter().find(|q| available.iter().any(|a| a == *q)) {
            Some(q) => q.to_string(),
            None => match available.first() {
                Some(q) => q.clone(),
                None => return Choice::NoSuchQuant { available },
            },
        },
    };
    let mut matching: Vec<&RepoFile> =
        ggufs.into_iter().filter(|f| quant_of(&f.path).as_deref() == Some(wanted.as_str())).collect();
    matching.sort_by(|a, b| a.path.cmp(&b.path));
    // Whole files before split sets.
    fn split_of(f: &RepoFile) -> Option<(&str, u32, u32)> {
        gguf_stem(&f.path).and_then(split_part)
    }
    if let Some(whole) = matching.iter().find(|f| split_of(f).is_none()) {
        return Choice::One(whole);
    }
    // A split set: parts 1..=N of one base name in one folder; the first complete one.
    let folder = |f: &RepoFile| f.path.rsplit_once('/').map_or("", |(dir, _)| dir).to_owned();
    for first in matching.iter().filter(|f| split_of(f).is_some_and(|(_, index, _)| index == 1)) {
        let Some((base, _, count)) = split_of(first) else { continue };
        let parts: Vec<&RepoFile> = (1..=count)
            .filter_map(|i| {
                matching.iter().copied().find(|f| {
                    folder(f) == folder(first)
                        && split_of(f).is_some_and(|(b, index, n)| b == base && index == i && n == count)
                })
            })
            .collect();
        match parts.len() {
            1 if count == 1 => return Choice::One(parts[0]),
            n if n == count as usize => return Choice::Split(parts),
            _ => {}
        }
    }
    Choice::NoSuchQuant { available }
}

/// The files of the hub's tree listing (`/api/models/{repo}/tree/{revision}?recursive=true`):
/// entries `{"type": "file", "path", "size", "lfs": {"oid": sha256, "size"}}`. Paths that
/// would leave the repository's folder are dropped.
pub fn parse_tree(json: &serde_json::Value) -> Option<Vec<RepoFile>> {
    let entries = json.as_array()?;
    Some(
        entries
            .iter()
            .filter(|e| e["type"].as_str() == Some("file"))
            .filter_map(|e| {
                let path = e["path"].as_str()?;
                if !path.split('/').all(is_plain_segment) {
                    return None;
                }
                let lfs = &e["lfs"];
                let sha256 = lfs["oid"]
                    .as_str()
                    .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                    .map(str::to_ascii_lowercase);
                let size = lfs["size"].as_u64().or_else(|| e["size"].as_u64())?;
                Some(RepoFile { path: path.to_owned(), size, sha256 })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> RepoFile {
        RepoFile { path: path.into(), size: 1, sha256: None }
    }

    #[test]
    fn model_names_as_users_type_them() {
        let gguf = |repo: &str, quant: Option<&str>| HubSpec::Gguf {
            repo: repo.into(),
            revision: "main".into(),
            quant: quant.map(Into::into),
        };
        assert_eq!(
            HubSpec::parse("bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M"),
            Some(gguf("bartowski/Qwen2.5-0.5B-Instruct-GGUF", Some("Q4_K_M")))
        );
        assert_eq!(HubSpec::parse("hf.co/owner/name:q8_0"), Some(gguf("owner/name", Some("Q8_0"))));
        assert_eq!(HubSpec::parse("hf.co/owner/name"), Some(gguf("owner/name", None)));
        assert_eq!(HubSpec::parse("https://huggingface.co/owner/name"), Some(gguf("owner/name", None)));
        assert_eq!(
            HubSpec::parse("owner/name@v2"),
            Some(HubSpec::Repo { repo: "owner/name".into(), revision: "v2".into() })
        );
        assert_eq!(
            HubSpec::parse("owner/name/sub/model-Q4_0.gguf"),
            Some(HubSpec::GgufFile {
                repo: "owner/name".into(),
                revision: "main".into(),
                file: "sub/model-Q4_0.gguf".into()
            })
        );
        assert_eq!(
            HubSpec::parse("owner/name@v2:q8_0"),
            Some(HubSpec::Gguf {
                repo: "owner/name".into(),
                revision: "v2".into(),
                quant: Some("Q8_0".into())
            })
        );
        for bad in [
            "a/b@.",
            "a/b@x/../y",
            "a/b@/abs",
            "a/b@C:\\x",
            "a/b:Q4_0@v:Q8_0",
            "smollm2-135m",
            "models/missing.gguf",
            "a/../b",
            "owner/name/notes.txt",
            "owner/name:Q4 K",
            "/etc/passwd:Q4_0",
            "a/b@",
        ] {
            assert_eq!(HubSpec::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn quantization_tags_of_file_names() {
        for (name, quant) in [
            ("qwen2.5-0.5b-instruct-q4_k_m.gguf", Some("Q4_K_M")),
            ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", Some("Q4_K_M")),
            ("SmolLM2-135M-Instruct.Q4_1.gguf", Some("Q4_1")),
            ("phi-2_Q5_K_S.gguf", Some("Q5_K_S")),
            ("Qwen3-30B-A3B-UD-Q4_K_XL.gguf", Some("Q4_K_XL")),
            ("Q8_0/big-model-Q8_0-00001-of-00003.gguf", Some("Q8_0")),
            ("Q4_K_M/big-model-00002-of-00003.gguf", Some("Q4_K_M")),
            ("model-f16.gguf", Some("F16")),
            ("ggml-model.gguf", None),
            ("README.md", None),
        ] {
            assert_eq!(quant_of(name).as_deref(), quant, "{name}");
        }
        assert_eq!(split_part("m-Q8_0-00002-of-00003"), Some(("m-Q8_0", 2, 3)));
        assert_eq!(split_part("m-00004-of-00003"), None);
        assert_eq!(split_part("m-2-of-3"), None);
    }

    #[test]
    fn the_asked_quant_else_q4_k_m_else_the_nearest() {
        let files: Vec<RepoFile> =
            ["m-Q8_0.gguf", "m-Q4_K_M.gguf", "m-IQ4_XS.gguf", "mmproj-m-f16.gguf", "README.md"]
                .map(file)
                .to_vec();
        assert_eq!(choose(&files, None), Choice::One(&files[1]));
        assert_eq!(choose(&files, Some("q8_0")), Choice::One(&files[0]));
        assert_eq!(
            choose(&files, Some("Q2_K")),
            Choice::NoSuchQuant { available: vec!["IQ4_XS".into(), "Q4_K_M".into(), "Q8_0".into()] }
        );
        let no_default: Vec<RepoFile> = ["m-Q8_0.gguf", "m-Q5_K_M.gguf", "m-Q2_K.gguf"].map(file).to_vec();
        assert_eq!(choose(&no_default, None), Choice::One(&no_default[1]));
        let untagged = [file("ggml-model.gguf")];
        assert_eq!(choose(&untagged, None), Choice::One(&untagged[0]));
        assert_eq!(choose(&[file("config.json")], None), Choice::NoGguf);
    }

    #[test]
    fn split_ggufs_are_taken_whole_and_in_order() {
        let files: Vec<RepoFile> = [
            "Q4_K_M/m-Q4_K_M-00002-of-00002.gguf",
            "Q4_K_M/m-Q4_K_M-00001-of-00002.gguf",
            "m-Q8_0-00001-of-00002.gguf",
        ]
        .map(file)
        .to_vec();
        assert_eq!(choose(&files, Some("Q4_K_M")), Choice::Split(vec![&files[1], &files[0]]));
        // A part missing: not a usable set.
        assert!(matches!(choose(&files, Some("Q8_0")), Choice::NoSuchQuant { .. }));
        // Parts of sets in two folders are not mixed; upper-case extensions count.
        let two: Vec<RepoFile> =
            ["a/m-Q8_0-00002-of-00002.gguf", "b/m-Q8_0-00001-of-00002.GGUF", "b/m-Q8_0-00002-of-00002.gguf"]
                .map(file)
                .to_vec();
        assert_eq!(choose(&two, Some("Q8_0")), Choice::Split(vec![&two[1], &two[2]]));
    }

    #[test]
    fn tree_listings_keep_sizes_and_lfs_hashes() {
        let sha = "a".repeat(64);
        let json = serde_json::json!([
            {"type": "directory", "path": "Q4_K_M", "size": 0},
            {"type": "file", "path": "Q4_K_M/m.gguf", "size": 134, "lfs": {"oid": sha, "size": 5000, "pointerSize": 134}},
            {"type": "file", "path": "README.md", "size": 12},
            {"type": "file", "path": "../evil.gguf", "size": 1},
            {"type": "file", "path": "no-size.gguf"}
        ]);
        assert_eq!(
            parse_tree(&json).unwrap(),
            vec![
                RepoFile { path: "Q4_K_M/m.gguf".into(), size: 5000, sha256: Some("a".repeat(64)) },
                RepoFile { path: "README.md".into(), size: 12, sha256: None },
            ]
        );
        assert_eq!(parse_tree(&serde_json::json!({"error": "x"})), None);
    }
}
