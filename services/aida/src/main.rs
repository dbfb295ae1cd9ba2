//! The `aida` command: parses arguments and hands over to the library.

use clap::Parser;

// mimalloc: the services allocate many small, short-lived buffers per request; glibc's
// malloc spent about 8% of the edge's CPU in `aida-bench-edge`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = aida::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("aida: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(aida::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("aida: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
