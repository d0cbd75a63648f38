//! Writes the generated CRD YAML (`crds/*.yaml`). `crdgen --check` fails when the checked-in files differ.
fn main() -> std::process::ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut drift = false;
    for (file, yaml) in kitfleet_api::crds::all() {
        let path = dir.join(file);
        if check {
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current != yaml {
                eprintln!(
                    "{}: differs from the generated CRD; run `cargo run -p kitfleet-api --bin crdgen`",
                    path.display()
                );
                drift = true;
            }
        } else if let Err(e) = std::fs::write(&path, yaml) {
            eprintln!("{}: {e}", path.display());
            return std::process::ExitCode::FAILURE;
        } else {
            println!("wrote {}", path.display());
        }
    }
    if drift {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
