//! A mock provider on its own, for trying an SDK against it without building all of baimo
//! (`baimo mock-provider` does the same):
//!
//!     cargo run --release -p baimo-gateway --example mock_provider -- openai 8990 sk-test [secret] [app-id]

use baimo_gateway::ProviderKind;
use baimo_gateway::mock::{MockState, serve};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: mock_provider <provider> <port> <key> [secret] [app-id]";
    let (Some(kind), Some(port), Some(key)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let Some(kind) = ProviderKind::from_name(kind) else {
        let names: Vec<&str> = ProviderKind::ALL.iter().map(|k| k.name()).collect();
        eprintln!("unknown provider {kind:?}; one of {}", names.join(", "));
        std::process::exit(2);
    };
    let state = MockState::with_credentials(kind, key.clone(), args.get(3).cloned(), args.get(4).cloned());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>().unwrap_or(0))).await?;
    println!("mock {} listening on http://{}", kind.name(), listener.local_addr()?);
    serve(state, listener).await
}
