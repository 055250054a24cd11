// The service allocates many small short-lived buffers (JSON, SQL arguments, AMQP frames) on
// several threads; glibc's malloc took about a tenth of its CPU (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    orchestrator::run_main()
}
