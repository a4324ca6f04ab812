//! The `cpis-relay` binary: everything is in the library.

/// mimalloc rather than the system allocator: a search allocates and frees
/// many small buffers on two threads at once (TLS records, HTTP/2 frames,
/// protobuf fields), and under glibc's malloc a quarter of the relay's CPU went
/// to the allocator (`perf`, PERFORMANCE.md). The echo baseline is this same
/// binary, so ratios compare like with like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cpis_relay::cli::main()
}
