//! `kitfleet-sandbox`: exec (the launcher), check, compile.

fn main() {
    std::process::exit(kitfleet_sandbox::cli::run());
}
