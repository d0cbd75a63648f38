//! Writes the generated CRD YAML into `crds/` and the Helm chart's `charts/kitfleet/crds/`.
//! `crdgen --check` writes nothing and fails when a checked-in file differs.
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let mut drift = false;
    for (path, yaml) in kitfleet_api::crds::files() {
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                eprintln!(
                    "{}: differs from the generated CRD; run `cargo run -p kitfleet-api --bin crdgen`",
                    path.display()
                );
                drift = true;
            }
        } else if let Err(e) = std::fs::write(&path, yaml) {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("wrote {}", path.display());
        }
    }
    if drift {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
