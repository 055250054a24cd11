fn main() -> std::process::ExitCode {
    orchestrator::run_main()
}
