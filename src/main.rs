//! The `rebuy` binary: parses the command line and runs it. Errors are printed with their
//! whole context chain (`{:#}`) and turn into a non-zero exit code.
//!
//! The binary owns the terminal: every command, the printing, the progress bars, the demo and
//! the benchmarks live in [`cli`]; the `rebuy` library never prints and reaches no CLI code.
use clap::Parser;

mod cli;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    cli::init_tracing(&cli);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rebuy: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rebuy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
