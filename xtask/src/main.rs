//! Project tasks: `cargo xtask <command>`.

mod bench;
mod install;
mod tasks;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "Project tasks (cargo xtask <command>)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what the build and the tests need (Debian packages, bpf-linker), idempotently.
    Install,
    /// Build everything and run the observer with its defaults (extra flags after `--`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test, the privileged kernel tests included (as root).
    Test,
    /// Overhead benchmark: nginx under wrk with and without the observer.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Install => install::install(),
        Command::Run { args } => tasks::run_observer(&args),
        Command::Test => tasks::test(),
        Command::Bench(args) => bench::run(&args),
    }
}
