//! `baimo mock-provider`: a stand-in for a hosted provider on loopback, speaking its real
//! protocol (for demos, SDK checks and the gateway's tests). Faults are injected with
//! `POST /_mock/faults`.

use anyhow::{Context, Result};
use baimo_gateway::ProviderKind;
use baimo_gateway::mock::{MockState, serve};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The provider to imitate (openai, anthropic, ...).
    #[arg(value_parser = parse_kind)]
    provider: ProviderKind,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port; 0: any free port (printed on stderr).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The API key clients must present.
    #[arg(long)]
    key: String,
    /// The second credential of providers that sign with a pair (ERNIE's secret key, Spark's
    /// API secret, Baichuan's legacy secret).
    #[arg(long)]
    secret: Option<String>,
    /// Spark's app id.
    #[arg(long)]
    app_id: Option<String>,
}

fn parse_kind(name: &str) -> Result<ProviderKind, String> {
    ProviderKind::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = ProviderKind::ALL.iter().map(|k| k.name()).collect();
        format!("one of {}", names.join(", "))
    })
}

pub fn main(args: Args) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
        eprintln!("listening on http://{}", listener.local_addr()?);
        let state = MockState::with_credentials(args.provider, args.key, args.secret, args.app_id);
        tokio::select! {
            served = serve(state, listener) => served.context("serving")?,
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}
