//! The `ramp-ca` binary: parse, run, map the error to an exit code and a one-line message.

use clap::Parser;

fn main() {
    let cli = ramp_ca::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ramp-ca: cannot start: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(ramp_ca::cli::run(cli)) {
        eprintln!("ramp-ca: {e}");
        std::process::exit(e.exit_code());
    }
}
