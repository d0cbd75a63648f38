//! `kitfleet-node-agent upgrade`: the standalone upgrade command the DaemonSet runs and tests call directly.

use std::path::PathBuf;

use super::efi;
use super::efivars::{DEFAULT_EFIVARS, EfiVars};
use super::firmware::{Firmware, FirmwareConfig};
use super::{Executor, Result, UpgradeError, artifact, booted, gpt, io};

/// How the node moves to the new image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// ESP file + Boot#### + BootNext, reboot; `--commit` after a healthy boot puts it in BootOrder.
    Firmware,
    /// kexec_file_load of the UKI's kernel, initrd and cmdline.
    Kexec,
}

/// Flags of `upgrade`.
#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    /// The artifact to stage (pulled with `kitfleet-build pull`, every file verified).
    #[arg(long, value_name = "REF", required_unless_present_any = ["disk", "commit"])]
    pub artifact: Option<String>,
    /// A local raw-efi disk image instead of an artifact (needs --build-key).
    #[arg(long, conflicts_with = "artifact", requires = "build_key")]
    pub disk: Option<PathBuf>,
    /// The build key expected (hex); with --artifact it must equal the artifact's.
    #[arg(long)]
    pub build_key: Option<String>,
    #[arg(long, value_enum, default_value = "firmware")]
    pub method: Method,
    /// The mounted ESP.
    #[arg(long, default_value = "/boot/efi")]
    pub esp: PathBuf,
    /// efivarfs.
    #[arg(long, default_value = DEFAULT_EFIVARS)]
    pub efivars: PathBuf,
    /// The disk holding the ESP and the ESP's partition number (default: found from the ESP's mount).
    #[arg(long, requires = "esp_partition")]
    pub esp_disk: Option<PathBuf>,
    #[arg(long)]
    pub esp_partition: Option<u32>,
    /// The running kernel's command line.
    #[arg(long, default_value = booted::PROC_CMDLINE)]
    pub proc_cmdline: PathBuf,
    /// Stage and set BootNext (or load the kexec image) but do not reboot.
    #[arg(long)]
    pub no_reboot: bool,
    /// After a healthy boot: put BootCurrent first in BootOrder if it is the Kitfleet entry of the booted key.
    #[arg(long)]
    pub commit: bool,
    /// Working directory for the pulled artifact.
    #[arg(long, default_value = "/var/lib/kitfleet/upgrade")]
    pub work: PathBuf,
    /// The `kitfleet-build` program.
    #[arg(long, env = "KITFLEET_BUILD", default_value = "kitfleet-build")]
    pub builder: PathBuf,
    /// Registries (`host:port`) reached over plain HTTP.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure: Vec<String>,
}

/// Runs the command.
pub fn run(a: UpgradeArgs) -> Result<()> {
    if a.commit {
        return commit_current(&a);
    }
    std::fs::create_dir_all(&a.work).map_err(io(&a.work))?;
    let uki = a.work.join("uki.efi");
    let build_key = match (&a.artifact, &a.disk) {
        (Some(r), _) => {
            let pulled = artifact::pull(&a.builder, r, &a.work.join("artifact"), &a.insecure)?;
            if let Some(want) = &a.build_key
                && *want != pulled.build_key
            {
                return Err(UpgradeError::Invalid {
                    field: "--build-key",
                    reason: format!("{r} has build key {}, not {want}", pulled.build_key),
                });
            }
            artifact::uki_from(&pulled, &uki)?;
            pulled.build_key
        }
        (None, Some(d)) => {
            let mut f = std::fs::File::open(d).map_err(io(d))?;
            let mut o = std::fs::File::create(&uki).map_err(io(&uki))?;
            super::esp_image::extract_uki(&mut f, &mut o)?;
            a.build_key.clone().expect("clap requires it")
        }
        (None, None) => unreachable!("clap requires one"),
    };
    match a.method {
        Method::Firmware => {
            let mut fw = firmware(&a)?;
            let staged = fw.stage(&build_key, &uki)?;
            println!(
                "staged {build_key} as {}",
                efi::boot_name(staged.boot_number.unwrap_or(0))
            );
            fw.activate(&staged, !a.no_reboot)
        }
        Method::Kexec => super::kexec::load_and_exec(&uki, &a.work, !a.no_reboot),
    }
}

fn firmware(a: &UpgradeArgs) -> Result<Firmware> {
    let (disk, number) = match (&a.esp_disk, a.esp_partition) {
        (Some(d), Some(n)) => (d.clone(), n),
        _ => gpt::locate(&a.esp)?,
    };
    let mut f = std::fs::File::open(&disk).map_err(io(&disk))?;
    let partition = gpt::read_partition(&mut f, number)?;
    Ok(Firmware::new(FirmwareConfig {
        esp: a.esp.clone(),
        efivars: a.efivars.clone(),
        partition,
        proc_cmdline: a.proc_cmdline.clone(),
    }))
}

/// `--commit`: BootCurrent goes first in BootOrder when its description names the booted build key.
fn commit_current(a: &UpgradeArgs) -> Result<()> {
    let vars = EfiVars::new(&a.efivars);
    let booted =
        booted::booted_build_key(&a.proc_cmdline).ok_or_else(|| UpgradeError::NotStaged {
            reason: format!("{} carries no kitfleet.buildkey", a.proc_cmdline.display()),
        })?;
    let cur = vars
        .read("BootCurrent")?
        .ok_or_else(|| UpgradeError::NotStaged {
            reason: "BootCurrent is not set".into(),
        })?;
    let n = match cur[..] {
        [lo, hi] => u16::from_le_bytes([lo, hi]),
        _ => {
            return Err(UpgradeError::BadVariable {
                name: "BootCurrent".into(),
                reason: format!("{} bytes, not a UINT16", cur.len()),
            });
        }
    };
    let name = efi::boot_name(n);
    let opt = vars.read(&name)?.ok_or_else(|| UpgradeError::NotStaged {
        reason: format!("{name} does not exist"),
    })?;
    let info = efi::parse_load_option(&name, &opt)?;
    if info.description != format!("Kitfleet {}", &booted[..12]) {
        return Err(UpgradeError::NotStaged {
            reason: format!(
                "BootCurrent {name} is {:?}, not the Kitfleet entry of {booted}",
                info.description
            ),
        });
    }
    let order = match vars.read("BootOrder")? {
        Some(d) => efi::parse_boot_order(&d)?,
        None => Vec::new(),
    };
    let new = efi::boot_order_with_first(&order, n);
    if new != order {
        vars.write("BootOrder", &efi::encode_boot_order(&new))?;
    }
    println!("committed {name} ({booted}) to BootOrder");
    Ok(())
}
