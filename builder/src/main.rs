//! `kitfleet-build`: see the library's `cli` module.
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(kitfleet_builder::cli::main());
}
