//! `plughost`: the command-line entry point.

fn main() -> std::process::ExitCode {
    host::cli::main()
}
