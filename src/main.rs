//! The `cpis-relay` binary: everything is in the library.

fn main() -> std::process::ExitCode {
    cpis_relay::cli::main()
}
