mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};
use observer::config::{Args, Config};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => daemon(cli.daemon),
        Some(Command::Run(args)) => daemon(args),
        Some(cmd) => cli::client(cmd, cli.daemon.grpc_addr),
    }
}

/// Runs the observer until SIGTERM/SIGINT.
fn daemon(args: Args) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log);
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("observer: invalid --log filter {:?}: {e}", args.log);
            return ExitCode::from(2);
        }
    };
    // kube-client logs every failed connection attempt at ERROR; the Kubernetes watchers report
    // the same failure once per outage (and count each), unless the filter asks for kube_client.
    let filter = if args.log.contains("kube_client") {
        filter
    } else {
        filter.add_directive(
            "kube_client::client::builder=off"
                .parse()
                .expect("a directive"),
        )
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = match Config::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("observer: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("observer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(observer::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with every cause (an aya error's errno is in its source).
            let mut line = format!("observer: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                line.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{line}");
            ExitCode::FAILURE
        }
    }
}
