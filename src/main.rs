//! The `rebuy` binary: parses the command line and runs it. Errors are printed with their
//! whole context chain (`{:#}`) and turn into a non-zero exit code.
use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = rebuy::cli::Cli::parse();
    rebuy::cli::init_tracing(&cli);
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
    match rt.block_on(rebuy::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rebuy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
