//! Project tasks: `cargo xtask <command>`.

mod bench;
mod hygiene;
mod image;
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
    /// Install, idempotently, what building and running need (`--for run`), also what the
    /// benchmark drives (`--for bench`), the image tools (`--for image`), or everything the tests
    /// need (`--for test`, the default).
    Install {
        #[arg(long = "for", value_enum, default_value = "test")]
        scope: install::Scope,
    },
    /// Build everything and run the observer with its defaults (extra flags after `--`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test, the privileged kernel tests included (as root), on every kernel of the
    /// matrix: this machine's, and Debian's guest kernels in virtual machines.
    Test {
        /// Which kernels: all, host, or a guest series (6.1, 6.12).
        #[arg(long, default_value = "all")]
        kernel: String,
    },
    /// Build the observer's image from the Dockerfile with podman (a Debian base made locally
    /// when none is there) and print its size.
    Image {
        /// Pack the host's release binary onto the runtime base instead of building the
        /// workspace in the image (what the tests run).
        #[arg(long)]
        prebuilt: bool,
    },
    /// Overhead benchmark: nginx under wrk with and without the observer.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Install { scope } => install::install(scope),
        Command::Run { args } => tasks::run_observer(&args),
        Command::Test { kernel } => tasks::test(&kernel),
        Command::Image { prebuilt } => image::image(prebuilt),
        Command::Bench(args) => bench::run(&args),
    }
}
