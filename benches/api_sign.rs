//! Load on a running daemon's signing API: N certificates at concurrency C, each a signed
//! `POST /v1/requests` that is granted and certified at once (the daemon verifies the
//! request, decides, mints, and makes grant, certificate and audit records durable before it
//! answers). One persistent client, as an automation or a fleet agent would hold, so the
//! figure is the daemon's rate, not process start-up.
//!
//! ```sh
//! cargo bench --bench api_sign -- --server http://127.0.0.1:7400 --key demo/alice/id_ed25519 \
//!     --contract prod-db --step observe -n 2000 -c 8
//! ```
//!
//! Prints one JSON line: `{"n", "concurrency", "seconds", "rate", "p50_ms", "p99_ms",
//! "errors", "first_error", "distinct_serials"}`. Without `--server` (as under `cargo test
//! --all-targets`) it prints its usage and exits 0.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ramp_ca::client::{signer_for, Client};
use ramp_ca::wire::grants::{Outcome, RequestBody};
use ramp_ca::wire::REQUESTS;
use reqwest::Method;

struct Args {
    server: String,
    key: PathBuf,
    contract: String,
    step: Option<String>,
    n: usize,
    concurrency: usize,
}

const USAGE: &str = "usage: api_sign --server URL --key PATH --contract C [--step S] [-n N] [-c C]";

fn parse() -> Result<Option<Args>, String> {
    let mut it = std::env::args().skip(1);
    let (mut server, mut key, mut contract, mut step) = (None, None, None, None);
    let (mut n, mut concurrency) = (1000, 8);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--server" => server = Some(value()?),
            "--key" => key = Some(PathBuf::from(value()?)),
            "--contract" => contract = Some(value()?),
            "--step" => step = Some(value()?),
            "-n" => n = value()?.parse().map_err(|e| format!("-n: {e}"))?,
            "-c" => concurrency = value()?.parse().map_err(|e| format!("-c: {e}"))?,
            // What cargo passes to a bench target.
            "--bench" | "--nocapture" => {}
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    let Some(server) = server else {
        return Ok(None);
    };
    Ok(Some(Args {
        server,
        key: key.ok_or("--key is required")?,
        contract: contract.ok_or("--contract is required")?,
        step,
        n,
        concurrency: concurrency.max(1),
    }))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args = match parse() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("api_sign: {e}");
            std::process::exit(2);
        }
    };
    let signer = match signer_for(&args.key).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("api_sign: {e}");
            std::process::exit(2);
        }
    };
    let client = match Client::new(&args.server, None, signer) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("api_sign: {e}");
            std::process::exit(2);
        }
    };
    let body = Arc::new(RequestBody {
        contract: args.contract.clone(),
        step: args.step.clone(),
        ttl: None,
        reason: Some("api_sign bench".into()),
        certify: true,
        start: None,
    });
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, body, next, n) = (client.clone(), body.clone(), next.clone(), args.n);
            tokio::spawn(async move {
                let mut done = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < n {
                    let t = Instant::now();
                    let out: Result<Outcome, _> = client
                        .call(Method::POST, REQUESTS, Some(body.as_ref()))
                        .await;
                    done.push((t.elapsed(), out.map_err(|e| e.to_string())));
                }
                done
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut serials = HashSet::new();
    let (mut errors, mut first_error) = (0usize, None);
    for w in workers {
        for (took, out) in w.await.expect("worker") {
            match out {
                Ok(o) if o.certificate.is_some() => {
                    latencies.push(took);
                    serials.extend(o.serial);
                }
                Ok(o) => {
                    errors += 1;
                    first_error.get_or_insert(format!("no certificate: {:?}", o.reasons));
                }
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let report = serde_json::json!({
        "n": args.n,
        "concurrency": args.concurrency,
        "seconds": seconds,
        "rate": latencies.len() as f64 / seconds,
        "p50_ms": percentile(&latencies, 0.50),
        "p99_ms": percentile(&latencies, 0.99),
        "errors": errors,
        "first_error": first_error,
        "distinct_serials": serials.len(),
    });
    println!("{report}");
}
