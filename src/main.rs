//! The `ramp-ca` binary: parse, run, map the error to an exit code and a one-line message.

use clap::Parser;

fn main() {
    let cli = ramp_ca::cli::Cli::parse();
    if !matches!(cli.command, ramp_ca::cli::Command::Serve { .. }) {
        // Rust ignores SIGPIPE, so printing to a closed pipe (`ramp-ca audit list | head`)
        // would panic; a command-line tool should just stop, as `cat` does. The daemon keeps
        // ignoring it: a client hanging up must never kill it.
        // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(|| LogWriter)
        // Colours are escape codes too, and every escape code in a line is escaped.
        .with_ansi(false)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ramp-ca: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let json = cli.command.json();
    if let Err(e) = runtime.block_on(ramp_ca::cli::run(cli)) {
        if json {
            // With --json the error is JSON on stdout too, for the script reading it.
            let body = serde_json::json!({"error": e.to_string(), "exit": e.exit_code()});
            println!("{body}");
        }
        // The daemon's refusals quote what was asked; its lines stay lines, nothing else acts.
        let text = e.to_string();
        let lines: Vec<_> = text.lines().map(ramp_ca::shown::shown).collect();
        eprintln!("ramp-ca: {}", lines.join("\n"));
        std::process::exit(e.exit_code());
    }
}

/// Stderr for the service log, one event a line: control characters in what users sent
/// (login names, commands, reasons) are escaped, so they can neither drive the reader's
/// terminal nor start a forged log line. The formatter hands over one whole event a write.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(ramp_ca::shown::log_line(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
