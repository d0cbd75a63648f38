//! The build driver: resolve every reference, compute the build key, plan the layout, then
//! produce the requested outputs from cached or freshly computed segments.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use kitfleet_api::OutputFormat;
use kitfleet_api::linuxkit::Config;
use kitfleet_api::nodeimage::{HardeningSpec, KsppMode};
use serde::Serialize;

use crate::assemble::{self, KernelPlan, Mtime, Part, Plan, ResolvedMap, Segment};
use crate::cache::Cache;
use crate::cpio;
use crate::digest::{Hasher, sha256};
use crate::error::{Error, Result};
use crate::kspp::{self, KsppOutcome};
use crate::oci;
use crate::progress::Progress;
use crate::reference::ImageRef;
use crate::source::{Resolved, Sources};
use crate::tarout::TarWriter;
use crate::tree::{Entry, Kind, Limits, Tree};

/// The status of one reference after resolution.
#[derive(Debug, Clone, Serialize)]
pub struct RefStatus {
    /// YAML location (`onboot[0].image`).
    pub location: String,
    /// The reference as written.
    pub reference: String,
    /// The digest it resolves to, when resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Why it could not be resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<String>,
}

/// Resolves every reference of `cfg`. With `strict`, the first failure is an error; without, failures
/// are reported in the statuses (for `resolve` and offline plans) and left out of the map.
pub async fn resolve_all(
    sources: &Sources,
    cfg: &Config,
    strict: bool,
) -> Result<(ResolvedMap, Vec<RefStatus>)> {
    let mut map = ResolvedMap::new();
    let mut statuses = Vec::new();
    let mut by_ref: BTreeMap<String, Resolved> = BTreeMap::new();
    for (location, reference) in cfg.references() {
        let parsed = ImageRef::parse(reference, &location);
        let result = match parsed {
            Err(e) => Err(e),
            Ok(r) => match by_ref.get(&r.to_string()) {
                Some(done) => Ok(done.clone()),
                None => sources.resolve(&r, &location).await,
            },
        };
        match result {
            Ok(res) => {
                by_ref.insert(res.reference.to_string(), res.clone());
                statuses.push(RefStatus {
                    location: location.clone(),
                    reference: reference.to_string(),
                    digest: Some(res.digest.clone()),
                    unresolved: None,
                });
                map.insert(location, res);
            }
            Err(e) if strict => return Err(e),
            Err(e) => statuses.push(RefStatus {
                location,
                reference: reference.to_string(),
                digest: None,
                unresolved: Some(e.to_string()),
            }),
        }
    }
    Ok((map, statuses))
}

/// The build key: sha256 of the spec with every reference replaced by its digest, the contents of
/// local `files[].source`, the formats, the architecture, the mtime policy, the gzip level and the
/// builder version. Hardening is the default (`kspp: audit`, no exceptions): see
/// [`build_key_hardened`].
pub fn build_key(
    cfg: &Config,
    map: &ResolvedMap,
    formats: &[OutputFormat],
    arch: &str,
    mtime: Mtime,
    level: u32,
    base_dir: &Path,
) -> Result<[u8; 32]> {
    let default = HardeningSpec::default();
    build_key_hardened(cfg, map, formats, arch, mtime, level, base_dir, &default)
}

/// [`build_key`] with `spec.hardening`: a non-default one (another mode, or exceptions) is part of
/// the key, so `apply`/`enforce` images and their recorded reports get their own artifacts, while
/// an explicit `kspp: audit` keeps the key (and every byte) of a spec without `hardening`.
#[allow(clippy::too_many_arguments)]
pub fn build_key_hardened(
    cfg: &Config,
    map: &ResolvedMap,
    formats: &[OutputFormat],
    arch: &str,
    mtime: Mtime,
    level: u32,
    base_dir: &Path,
    hardening: &HardeningSpec,
) -> Result<[u8; 32]> {
    let mut pinned = cfg.clone();
    let pin = |loc: &str, s: &mut String| -> Result<()> {
        let r = map.get(loc).ok_or_else(|| Error::Unresolved {
            location: loc.to_string(),
            reference: s.clone(),
            reason: "not resolved".into(),
        })?;
        *s = r.reference.with_digest(&r.digest);
        Ok(())
    };
    if let Some(k) = pinned.kernel.as_mut() {
        pin("kernel.image", &mut k.image)?;
    }
    for (i, r) in pinned.init.iter_mut().enumerate() {
        pin(&format!("init[{i}]"), r)?;
    }
    for (section, list) in [
        ("onboot", &mut pinned.onboot),
        ("onshutdown", &mut pinned.onshutdown),
        ("services", &mut pinned.services),
    ] {
        for (i, img) in list.iter_mut().enumerate() {
            pin(&format!("{section}[{i}].image"), &mut img.image)?;
        }
    }
    for (i, v) in pinned.volumes.iter_mut().enumerate() {
        if let Some(img) = v.image.as_mut() {
            pin(&format!("volumes[{i}].image"), img)?;
        }
    }
    let mut sources = BTreeMap::new();
    for f in &cfg.files {
        if let Some(src) = &f.source {
            let p = base_dir.join(src);
            let d = std::fs::read(&p)
                .map(|b| sha256(&b))
                .unwrap_or_else(|_| "absent".into());
            sources.insert(src.clone(), d);
        }
    }
    let mut formats: Vec<&str> = formats.iter().map(|f| f.as_str()).collect();
    formats.sort();
    formats.dedup();
    let mut doc = serde_json::json!({
        "builder": crate::BUILDER_VERSION,
        "arch": arch,
        "formats": formats,
        "mtime": mtime.generated,
        "clamp": mtime.clamp,
        "gzipLevel": level,
        "spec": pinned,
        "fileSources": sources,
    });
    if !hardening.is_default() {
        doc["hardening"] = serde_json::to_value(hardening).expect("plain struct serialises");
    }
    let mut h = Hasher::default();
    h.update(&serde_json::to_vec(&doc).expect("JSON values serialise"));
    Ok(h.finish_bytes())
}

/// The gzip level used unless told otherwise.
pub const DEFAULT_LEVEL: u32 = 6;

/// The tag an artifact is published under for a build key.
pub fn artifact_tag(build_key: &[u8; 32]) -> String {
    format!("bk-{}", hex::encode(build_key))
}

/// Options of a build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Formats to write.
    pub formats: Vec<OutputFormat>,
    /// Output directory.
    pub out_dir: PathBuf,
    /// Output file stem (`<name>-kernel`…).
    pub name: String,
    /// gzip level of initrd members.
    pub level: u32,
    /// Directory against which `files[].source` resolves.
    pub base_dir: PathBuf,
    /// Modification-time policy.
    pub mtime: Mtime,
    /// Layer limits.
    pub limits: Limits,
    /// Progress display.
    pub progress: Progress,
    /// UKI stub for disk formats.
    pub stub_path: PathBuf,
}

/// One written output file.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputFile {
    /// Format it belongs to.
    pub format: String,
    /// Role within the format (`kernel`, `initrd`, `cmdline`, `tar`, `initrd-tar`, `disk`).
    pub role: String,
    /// Path written.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// sha256 digest.
    pub digest: String,
}

/// What a build produced.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildResult {
    /// Hex build key.
    pub build_key: String,
    /// Resolved inputs.
    pub inputs: Vec<RefStatus>,
    /// Files written.
    pub outputs: Vec<OutputFile>,
    /// Segments whose initrd member came from the cache.
    pub cached_segments: usize,
    /// Segments computed.
    pub built_segments: usize,
    /// The KSPP check (unset for `kspp: off` or without a kernel).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kspp: Option<KsppOutcome>,
}

struct Ctx<'a> {
    sources: &'a Sources,
    opts: &'a BuildOptions,
    trees: BTreeMap<String, Tree>,
    /// Cache writes running beside the build (flattened images), joined before it returns.
    background: std::sync::Mutex<Vec<std::thread::JoinHandle<Result<()>>>>,
}

impl Ctx<'_> {
    fn cache(&self) -> &Cache {
        self.sources.cache()
    }

    /// The flattened tree of an image (from the cache, or pulled and flattened).
    async fn tree(&mut self, image: &Resolved) -> Result<&Tree> {
        let key = image.manifest_digest.clone();
        if !self.trees.contains_key(&key) {
            let t = self.flatten(image).await?;
            self.trees.insert(key.clone(), t);
        }
        Ok(&self.trees[&key])
    }

    async fn flatten(&self, image: &Resolved) -> Result<Tree> {
        let mut h = Hasher::default();
        h.field(crate::BUILDER_VERSION.as_bytes());
        h.field(image.manifest_digest.as_bytes());
        let flat = self.cache().flat_path(&h.finish());
        let mut tree = Tree::new();
        if let Some(tar) = self.cache().get_file(&flat)? {
            tree.apply_layer(
                &format!("{} (flattened, cached)", image.manifest_digest),
                &tar[..],
                self.opts.limits,
            )?;
            return Ok(tree);
        }
        let total: u64 = image.layers().iter().map(|l| l.size).sum();
        let task = self
            .opts
            .progress
            .task(format!("pull+extract {}", image.reference), Some(total));
        for layer in image.layers() {
            // Streamed to the cache on disk, then applied from the file.
            let path = self.sources.blob_file(&image.reference, layer).await?;
            task.inc(layer.size);
            let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            let reader = std::io::BufReader::with_capacity(1 << 20, file);
            apply_blob_reader(&mut tree, layer, reader, self.opts.limits)?;
        }
        task.done(&format!("{} entries", tree.len()));
        let entries: Vec<Entry> = tree.entries().cloned().collect();
        let cache = self.cache().clone();
        let handle = std::thread::spawn(move || {
            let tar = crate::tarout::to_tar(&entries).map_err(|e| Error::io(&flat, e))?;
            cache.write_atomic(&flat, &tar)
        });
        self.background.lock().expect("not poisoned").push(handle);
        Ok(tree)
    }

    async fn segment_entries(&mut self, seg: &Segment) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for part in &seg.parts {
            match part {
                Part::Generated(e) => out.extend(e.iter().cloned()),
                Part::Image {
                    image,
                    prefix,
                    resolv,
                } => {
                    let mtime = self.opts.mtime;
                    let tree = self.tree(image).await?;
                    out.extend(assemble::image_entries(
                        tree,
                        prefix,
                        resolv.as_deref(),
                        mtime,
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// Decompresses and applies one layer blob.
pub fn apply_blob(
    tree: &mut Tree,
    layer: &oci::Descriptor,
    blob: &[u8],
    limits: Limits,
) -> Result<()> {
    apply_blob_reader(tree, layer, blob, limits)
}

/// Decompresses and applies one layer read from `blob` (e.g. its file in the cache).
pub fn apply_blob_reader<R: std::io::BufRead>(
    tree: &mut Tree,
    layer: &oci::Descriptor,
    mut blob: R,
    limits: Limits,
) -> Result<()> {
    let mt = layer.media_type.as_str();
    let gzip_magic = mt.is_empty()
        && blob
            .fill_buf()
            .map_err(|e| Error::BadLayer {
                layer: layer.digest.clone(),
                reason: e.to_string(),
            })?
            .starts_with(&[0x1f, 0x8b]);
    if oci::MT_LAYER_GZIP.contains(&mt) || gzip_magic {
        tree.apply_layer(
            &layer.digest,
            flate2::read::MultiGzDecoder::new(blob),
            limits,
        )
    } else if mt == oci::MT_LAYER_TAR || mt == "application/vnd.docker.image.rootfs.diff.tar" {
        tree.apply_layer(&layer.digest, blob, limits)
    } else {
        Err(Error::BadLayer {
            layer: layer.digest.clone(),
            reason: format!(
                "unsupported layer media type {mt:?} (gzip and uncompressed tar are supported)"
            ),
        })
    }
}

/// The kernel's outputs.
struct KernelParts {
    kernel: Vec<u8>,
    modules: Vec<Entry>,
    ucode: Option<Vec<u8>>,
}

async fn kernel_parts(ctx: &mut Ctx<'_>, plan: &Plan) -> Result<Option<KernelParts>> {
    let Some(k) = &plan.kernel else {
        return Ok(None);
    };
    let limits = ctx.opts.limits;
    let tree = ctx.tree(&k.image).await?;
    let loc = |r: String| Error::Config {
        location: "kernel".into(),
        reason: r,
    };
    let file = |name: &str| -> Option<Vec<u8>> {
        match tree.get(name.trim_start_matches('/')).map(|e| &e.kind) {
            Some(Kind::File(b)) => Some(b.to_vec()),
            _ => None,
        }
    };
    let kernel = file(&k.binary).ok_or_else(|| {
        loc(format!(
            "did not find kernel {:?} in kernel image {}",
            k.binary, k.image.reference
        ))
    })?;
    let mut modules = Vec::new();
    if let Some(t) = &k.tar {
        let tar = file(t).ok_or_else(|| {
            loc(format!(
                "did not find kernel tar {t:?} in kernel image {}",
                k.image.reference
            ))
        })?;
        let mut mt = Tree::new();
        mt.apply_layer(
            &format!("{} ({t})", k.image.manifest_digest),
            &tar[..],
            limits,
        )?;
        modules = mt.into_entries();
        if let Some(c) = plan.mtime.clamp {
            for e in &mut modules {
                e.mtime = e.mtime.min(c);
            }
        }
    }
    let ucode = match &k.ucode {
        Some(u) => {
            Some(file(u).ok_or_else(|| loc(format!("did not find ucode {u:?} in kernel image")))?)
        }
        None => None,
    };
    Ok(Some(KernelParts {
        kernel,
        modules,
        ucode,
    }))
}

fn is_initrd_format(f: OutputFormat) -> bool {
    !matches!(f, OutputFormat::Tar)
}

/// Builds the outputs of `plan` with the default hardening (`kspp: audit`).
pub async fn build(
    sources: &Sources,
    plan: &Plan,
    build_key: [u8; 32],
    inputs: Vec<RefStatus>,
    opts: &BuildOptions,
) -> Result<BuildResult> {
    let default = HardeningSpec::default();
    build_hardened(sources, plan, build_key, inputs, opts, &default).await
}

/// The kernel configuration as the cache keeps it (text re-rendered by `KernelConfig::to_text`).
#[derive(Serialize, serde::Deserialize)]
struct CachedConfig {
    source: Option<String>,
    text: Option<String>,
    error: Option<String>,
}

/// The kernel image's configuration, remembered in the cache by kernel manifest and binary name
/// (so a build whose kernel members are cached does not flatten the kernel image again).
async fn kernel_config(
    ctx: &mut Ctx<'_>,
    k: &KernelPlan,
) -> Result<std::result::Result<kspp::image::Found, String>> {
    let mut h = Hasher::default();
    h.field(crate::BUILDER_VERSION.as_bytes());
    h.field(b"kspp-config");
    h.field(k.image.manifest_digest.as_bytes());
    h.field(k.binary.as_bytes());
    let path = ctx.cache().member_path(&h.finish(), "kconfig.json");
    if let Some(bytes) = ctx.cache().get_file(&path)?
        && let Ok(c) = serde_json::from_slice::<CachedConfig>(&bytes)
    {
        match (c.source, c.text, c.error) {
            (Some(source), Some(text), None) => {
                if let Ok(config) = kspp::parse(&text) {
                    return Ok(Ok(kspp::image::Found { source, config }));
                }
            }
            (None, None, Some(error)) => return Ok(Err(error)),
            _ => {}
        }
    }
    let tree = ctx.tree(&k.image).await?;
    let found = kspp::find_config(tree, &k.binary);
    let cached = match &found {
        Ok(f) => CachedConfig {
            source: Some(f.source.clone()),
            text: Some(f.config.to_text()),
            error: None,
        },
        Err(e) => CachedConfig {
            source: None,
            text: None,
            error: Some(e.clone()),
        },
    };
    let json = serde_json::to_vec(&cached).expect("plain struct serialises");
    ctx.cache().write_atomic(&path, &json)?;
    Ok(found)
}

/// The KSPP step: check the kernel's configuration; for `apply`/`enforce`, a plan with the boot
/// parameters on the command line and the sysctl file as a last segment; `enforce` fails here.
async fn kspp_step(
    ctx: &mut Ctx<'_>,
    plan: &Plan,
    spec: &HardeningSpec,
) -> Result<(Option<KsppOutcome>, Option<Plan>)> {
    let Some(k) = plan.kernel.as_ref().filter(|_| spec.kspp != KsppMode::Off) else {
        return Ok((None, None));
    };
    let started = std::time::Instant::now();
    let found = kernel_config(ctx, k).await?;
    let config = found.as_ref().ok().map(|f| &f.config);
    let arch = kspp::image::kernel_arch(&k.image.config.architecture, config);
    let kernel = k.image.reference.with_digest(&k.image.digest);
    let evaluated = kspp::evaluate(spec, &kernel, arch, found.as_ref().map_err(String::as_str))
        .map_err(|e| Error::Config {
            location: "spec.hardening".into(),
            reason: e.to_string(),
        })?;
    let Some((outcome, additions)) = evaluated else {
        return Ok((None, None));
    };
    tracing::info!(
        elapsed = ?started.elapsed(),
        mode = %outcome.mode,
        config = ?outcome.config,
        met = outcome.met.len(),
        unmet = outcome.unmet.len(),
        "kspp check"
    );
    if let Some(why) = outcome.enforce_failure() {
        return Err(Error::Config {
            location: "spec.hardening.kspp".into(),
            reason: why,
        });
    }
    let hardened = additions.map(|a| {
        let mut p = plan.clone();
        if let Some(k) = p.kernel.as_mut() {
            let mut words: Vec<&str> = k.cmdline.split_whitespace().collect();
            words.extend(a.cmdline.iter().map(String::as_str));
            k.cmdline = words.join(" ");
        }
        let t = p.mtime.generated;
        let (path, contents) = a.sysctl_file;
        let parts = vec![Part::Generated(vec![
            Entry::dir("etc/sysctl.d", 0o755, t),
            Entry::file(path, contents.into_bytes(), 0o644, t),
        ])];
        let key = assemble::segment_key("spec.hardening", &parts, p.mtime);
        p.segments.push(Segment {
            location: "spec.hardening".into(),
            parts,
            key,
        });
        p
    });
    Ok((Some(outcome), hardened))
}

/// Builds the outputs of `plan` under `spec.hardening`: the KSPP check first (recorded in the
/// result), then for `apply`/`enforce` the plan with KSPP's boot parameters and sysctl file.
pub async fn build_hardened(
    sources: &Sources,
    plan: &Plan,
    build_key: [u8; 32],
    inputs: Vec<RefStatus>,
    opts: &BuildOptions,
    hardening: &HardeningSpec,
) -> Result<BuildResult> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| Error::io(&opts.out_dir, e))?;
    let mut ctx = Ctx {
        sources,
        opts,
        trees: BTreeMap::new(),
        background: std::sync::Mutex::new(Vec::new()),
    };
    let (kspp, hardened) = kspp_step(&mut ctx, plan, hardening).await?;
    let plan = hardened.as_ref().unwrap_or(plan);
    let need_initrd = opts.formats.iter().any(|f| is_initrd_format(*f));
    let need_tar = opts.formats.contains(&OutputFormat::Tar);
    let t = plan.mtime.generated;

    // Kernel: kernel file + modules member from the cache, unless missing or a tar output needs
    // the entries. Members are referenced by their cache paths and concatenated at the end.
    let kernel_key = format!("{}-l{}{}", plan.kernel_key, opts.level, cpio::MEMBER_FORMAT);
    let cache = sources.cache();
    let kcache = |ext: &str| cache.member_path(&kernel_key, ext);
    let mut kernel_file: Option<PathBuf> = None;
    let mut ucode_file: Option<PathBuf> = None;
    let mut kernel_entries: Vec<Entry> = Vec::new();
    let mut members: Vec<PathBuf> = Vec::new();
    let mut raw_total = 0u64;
    let (mut cached_segments, mut built_segments) = (0, 0);
    if let Some(k) = &plan.kernel {
        let size = cache.get_file(&kcache("size"))?;
        let have_all = size.is_some()
            && kcache("kernel").exists()
            && kcache("cpio.gz").exists()
            && (k.ucode.is_none() || kcache("ucode").exists());
        if have_all {
            raw_total += parse_size(size.as_deref());
            cached_segments += 1;
        }
        if !have_all || need_tar {
            let parts = kernel_parts(&mut ctx, plan)
                .await?
                .expect("plan has a kernel");
            if !have_all {
                let task = opts.progress.task("compress kernel modules", None);
                let (m, raw) = cpio::compressed_members(&parts.modules, opts.level)?;
                task.done("");
                cache.write_atomic(&kcache("kernel"), &parts.kernel)?;
                cache.write_atomic(&kcache("cpio.gz"), &m)?;
                if let Some(u) = &parts.ucode {
                    cache.write_atomic(&kcache("ucode"), u)?;
                }
                cache.write_atomic(&kcache("size"), raw.to_string().as_bytes())?;
                raw_total += raw;
                built_segments += 1;
            }
            kernel_entries.push(Entry::dir("boot", 0o755, t));
            kernel_entries.push(Entry::file(
                "boot/cmdline",
                k.cmdline.clone().into_bytes(),
                0o644,
                t,
            ));
            kernel_entries.push(Entry::file("boot/kernel", parts.kernel, 0o644, t));
            kernel_entries.extend(parts.modules);
            if let Some(u) = parts.ucode {
                kernel_entries.push(Entry::file("boot/ucode.cpio", u, 0o644, t));
            }
        }
        kernel_file = Some(kcache("kernel"));
        ucode_file = k.ucode.as_ref().map(|_| kcache("ucode"));
        members.push(kcache("cpio.gz"));
    }

    let tar_path = opts.out_dir.join(format!("{}.tar", opts.name));
    let mut tar = if need_tar {
        let f = std::fs::File::create(&tar_path).map_err(|e| Error::io(&tar_path, e))?;
        let mut w = TarWriter::new(std::io::BufWriter::new(f));
        for e in &kernel_entries {
            w.append(e).map_err(|e| Error::io(&tar_path, e))?;
        }
        Some(w)
    } else {
        None
    };
    drop(kernel_entries);

    for seg in &plan.segments {
        let member_key = format!("{}-l{}{}", seg.key, opts.level, cpio::MEMBER_FORMAT);
        let mpath = cache.member_path(&member_key, "cpio.gz");
        let spath = cache.member_path(&member_key, "size");
        let cached_size = match need_initrd && mpath.exists() {
            true => cache.get_file(&spath)?.map(|s| parse_size(Some(&s))),
            false => None,
        };
        if let Some(s) = cached_size {
            members.push(mpath.clone());
            raw_total += s;
            cached_segments += 1;
            if !need_tar {
                continue;
            }
        }
        let entries = ctx.segment_entries(seg).await?;
        if let Some(w) = tar.as_mut() {
            for e in &entries {
                w.append(e).map_err(|e| Error::io(&tar_path, e))?;
            }
        }
        if need_initrd && cached_size.is_none() {
            let task = opts
                .progress
                .task(format!("compress {}", seg.location), None);
            let (m, raw) = cpio::compressed_members(&entries, opts.level)?;
            task.done(&format!("{} -> {} bytes", raw, m.len()));
            cache.write_atomic(&mpath, &m)?;
            cache.write_atomic(&spath, raw.to_string().as_bytes())?;
            raw_total += raw;
            members.push(mpath);
            built_segments += 1;
        }
    }
    if raw_total > cpio::MAX_NEWC {
        return Err(Error::Cpio {
            reason: format!(
                "the initrd holds {raw_total} bytes of newc archives, more than 4 GiB; use a disk format with a root filesystem instead"
            ),
        });
    }

    let mut outputs = Vec::new();
    if let Some(w) = tar.take() {
        let mut bw = w.finish().map_err(|e| Error::io(&tar_path, e))?;
        std::io::Write::flush(&mut bw).map_err(|e| Error::io(&tar_path, e))?;
        drop(bw);
        outputs.push(describe("tar", "tar", &tar_path)?);
    }
    if need_initrd {
        let kernel = kernel_file.ok_or_else(|| Error::Config {
            location: "kernel".into(),
            reason: "the requested formats need a kernel section".into(),
        })?;
        // The running kernel reports the build key in /proc/cmdline (node agent: booted build key).
        let cmdline = crate::disk::cmdline_with_build_key(
            plan.kernel.as_ref().map_or("", |k| k.cmdline.as_str()),
            &build_key,
        );
        let mut initrd_parts: Vec<PathBuf> = ucode_file.into_iter().collect();
        initrd_parts.extend(members);
        let parts = InitrdParts {
            kernel,
            initrd: initrd_parts,
            cmdline,
        };
        tracing::debug!(elapsed = ?started.elapsed(), "initrd planned");
        write_initrd_outputs(opts, cache, &parts, &build_key, &mut outputs)?;
        tracing::debug!(elapsed = ?started.elapsed(), "outputs written");
    }
    for h in ctx.background.into_inner().expect("not poisoned") {
        h.join().map_err(|_| {
            Error::io(
                sources.cache().root(),
                std::io::Error::other("a cache writer panicked"),
            )
        })??;
    }
    Ok(BuildResult {
        build_key: hex::encode(build_key),
        inputs,
        outputs,
        cached_segments,
        built_segments,
        kspp,
    })
}

/// The kernel and the initrd as cache files: the initrd is the concatenation of `initrd`.
struct InitrdParts {
    kernel: PathBuf,
    initrd: Vec<PathBuf>,
    cmdline: String,
}

impl InitrdParts {
    /// A key naming this exact initrd (its parts are content-keyed cache files).
    fn initrd_key(&self) -> String {
        let mut h = Hasher::default();
        for p in &self.initrd {
            h.field(
                p.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or_default(),
            );
        }
        h.finish()
    }

    fn write_initrd(&self, out: &Path) -> Result<()> {
        let mut f = std::fs::File::create(out).map_err(|e| Error::io(out, e))?;
        for p in &self.initrd {
            let mut m = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
            std::io::copy(&mut m, &mut f).map_err(|e| Error::io(out, e))?;
        }
        Ok(())
    }

    fn initrd_bytes(&self) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        for p in &self.initrd {
            let mut m = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
            m.read_to_end(&mut v).map_err(|e| Error::io(p, e))?;
        }
        Ok(v)
    }
}

/// The digest of `path`, remembered in the cache under `key` (the file is a pure function of it).
fn cached_digest(
    cache: &Cache,
    key: &str,
    format: &str,
    role: &str,
    path: &Path,
) -> Result<OutputFile> {
    let dpath = cache.member_path(key, "digest");
    if let Some(d) = cache.get_file(&dpath)?
        && let Some((size, digest)) = std::str::from_utf8(&d)
            .ok()
            .and_then(|s| s.trim().split_once(' '))
        && let Ok(size) = size.parse()
        && crate::digest::hex_part(digest).is_some()
    {
        return Ok(OutputFile {
            format: format.into(),
            role: role.into(),
            path: path.to_path_buf(),
            size,
            digest: digest.to_string(),
        });
    }
    let o = describe(format, role, path)?;
    cache.write_atomic(&dpath, format!("{} {}", o.size, o.digest).as_bytes())?;
    Ok(o)
}

fn parse_size(s: Option<&[u8]>) -> u64 {
    s.and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).map_err(|e| Error::io(path, e))
}

fn describe(format: &str, role: &str, path: &Path) -> Result<OutputFile> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Hasher::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok(OutputFile {
        format: format.into(),
        role: role.into(),
        path: path.to_path_buf(),
        size,
        digest: h.finish(),
    })
}

fn describe_bytes(format: &str, role: &str, path: &Path, data: &[u8]) -> OutputFile {
    OutputFile {
        format: format.into(),
        role: role.into(),
        path: path.to_path_buf(),
        size: data.len() as u64,
        digest: sha256(data),
    }
}

fn write_initrd_outputs(
    opts: &BuildOptions,
    cache: &Cache,
    parts: &InitrdParts,
    build_key: &[u8; 32],
    outputs: &mut Vec<OutputFile>,
) -> Result<()> {
    let t = opts.mtime.generated;
    let dir = &opts.out_dir;
    let name = &opts.name;
    let cmdline = parts.cmdline.as_str();
    let mut disks = Vec::new();
    let mut bytes: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut in_memory = || -> Result<(Vec<u8>, Vec<u8>)> {
        if bytes.is_none() {
            let k = std::fs::read(&parts.kernel).map_err(|e| Error::io(&parts.kernel, e))?;
            bytes = Some((k, parts.initrd_bytes()?));
        }
        Ok(bytes.clone().expect("just set"))
    };
    for f in &opts.formats {
        match f {
            OutputFormat::KernelInitrd => {
                let kp = dir.join(format!("{name}-kernel"));
                std::fs::copy(&parts.kernel, &kp).map_err(|e| Error::io(&kp, e))?;
                let kkey = parts
                    .kernel
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                outputs.push(cached_digest(cache, &kkey, f.as_str(), "kernel", &kp)?);
                let ip = dir.join(format!("{name}-initrd.img"));
                parts.write_initrd(&ip)?;
                outputs.push(cached_digest(
                    cache,
                    &parts.initrd_key(),
                    f.as_str(),
                    "initrd",
                    &ip,
                )?);
                let cp = dir.join(format!("{name}-cmdline"));
                write_file(&cp, cmdline.as_bytes())?;
                outputs.push(describe_bytes(
                    f.as_str(),
                    "cmdline",
                    &cp,
                    cmdline.as_bytes(),
                ));
            }
            OutputFormat::TarKernelInitrd => {
                let p = dir.join(format!("{name}-initrd.tar"));
                let (kernel, initrd) = in_memory()?;
                let mut entries = vec![
                    Entry::file("kernel", kernel, 0o644, t),
                    Entry::file("initrd.img", initrd, 0o644, t),
                ];
                if !cmdline.is_empty() {
                    entries.push(Entry::file(
                        "cmdline",
                        cmdline.as_bytes().to_vec(),
                        0o644,
                        t,
                    ));
                }
                let tar = crate::tarout::to_tar(&entries).map_err(|e| Error::io(&p, e))?;
                write_file(&p, &tar)?;
                outputs.push(describe_bytes(f.as_str(), "initrd-tar", &p, &tar));
            }
            OutputFormat::Tar => {}
            other => disks.push(
                other
                    .as_str()
                    .parse::<crate::disk::DiskFormat>()
                    .map_err(|e| Error::UnknownFormat(other.to_string(), e.to_string()))?,
            ),
        }
    }
    if !disks.is_empty() {
        let stub = crate::disk::read_stub(&opts.stub_path).map_err(|e| Error::Config {
            location: "--uki-stub".into(),
            reason: e.to_string(),
        })?;
        let os_release = crate::disk::os_release(build_key);
        let (kernel, initrd) = in_memory()?;
        let inputs = crate::disk::DiskInputs {
            kernel: &kernel,
            initrd: &initrd,
            cmdline,
            os_release: &os_release,
            build_key: *build_key,
            stub: &stub,
            mtime: t,
        };
        let infos = crate::disk::write_disks(
            &disks,
            &inputs,
            &crate::disk::DiskOptions::default(),
            dir,
            name,
        )
        .map_err(|e| Error::Config {
            location: "disk".into(),
            reason: e.to_string(),
        })?;
        for i in infos {
            outputs.push(describe(i.format.name(), "disk", &i.path)?);
        }
    }
    Ok(())
}
