//! Project tasks: `cargo xtask <command>`.

mod bench;
mod install;
mod matrix;
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
    /// Run every test, the privileged kernel tests included (as root), on every kernel of the
    /// matrix: this machine's, and Debian's 6.1 and 6.12 in virtual machines.
    Test {
        /// Which kernels: all, host, 6.1 or 6.12.
        #[arg(long, default_value = "all")]
        kernel: String,
    },
    /// Overhead benchmark: nginx under wrk with and without the observer.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Install => install::install(),
        Command::Run { args } => tasks::run_observer(&args),
        Command::Test { kernel } => tasks::test(&kernel),
        Command::Bench(args) => bench::run(&args),
    }
}
