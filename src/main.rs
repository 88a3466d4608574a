fn main() -> std::process::ExitCode {
    qkd_ipsec::cli::main()
}
