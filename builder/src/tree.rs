//! A root filesystem in memory, built by applying untrusted OCI layers with whiteouts.
//!
//! Layers are hostile input: every entry is checked before it is accepted, and a rejected entry
//! fails the build with an error naming the layer digest and the entry. Nothing is written to disk
//! here, so no entry can reach outside the output and cache directories.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Read;

use bytes::Bytes;

use crate::error::{Error, Result};

/// What a filesystem entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file with its content.
    File(Bytes),
    /// A symbolic link with its target.
    Symlink(String),
    /// A hard link to another path of the same tree (relative to the tree root).
    Hardlink(String),
    /// A character device.
    Char(u32, u32),
    /// A block device.
    Block(u32, u32),
    /// A named pipe.
    Fifo,
}

/// One filesystem entry. `path` is relative (no leading `/`), normalised, non-empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Normalised relative path.
    pub path: String,
    /// Type and payload.
    pub kind: Kind,
    /// Permission bits (including setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
}

impl Entry {
    /// A directory entry.
    pub fn dir(path: impl Into<String>, mode: u32, mtime: u64) -> Self {
        Entry {
            path: path.into(),
            kind: Kind::Dir,
            mode,
            uid: 0,
            gid: 0,
            mtime,
        }
    }
    /// A regular file entry owned by root.
    pub fn file(path: impl Into<String>, data: impl Into<Bytes>, mode: u32, mtime: u64) -> Self {
        Entry {
            path: path.into(),
            kind: Kind::File(data.into()),
            mode,
            uid: 0,
            gid: 0,
            mtime,
        }
    }
    /// A symlink entry owned by root.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>, mtime: u64) -> Self {
        Entry {
            path: path.into(),
            kind: Kind::Symlink(target.into()),
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime,
        }
    }
    /// Size of the payload in bytes.
    pub fn size(&self) -> u64 {
        match &self.kind {
            Kind::File(b) => b.len() as u64,
            Kind::Symlink(t) | Kind::Hardlink(t) => t.len() as u64,
            _ => 0,
        }
    }
}

/// Bounds that keep hostile layers from exhausting the machine.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest single file.
    pub max_entry_size: u64,
    /// Largest total of file contents in one image.
    pub max_total_size: u64,
    /// Most entries in one image.
    pub max_entries: usize,
    /// Longest path in bytes.
    pub max_path_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entry_size: 4 << 30,
            max_total_size: 16 << 30,
            max_entries: 2_000_000,
            max_path_len: 4096,
        }
    }
}

/// A flattened filesystem: sorted paths, parents before children. Every hard link points at a
/// regular file of the tree.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
    total: u64,
    /// Hard links by target: the other names of a file, which keep its content when it goes.
    links: BTreeMap<String, BTreeSet<String>>,
}

/// Normalises a layer path: strips `./`, rejects absolute paths, `..`, empty names and NULs.
/// `Ok(None)` is the root itself.
pub fn normalize(raw: &str) -> std::result::Result<Option<String>, String> {
    if raw.starts_with('/') {
        return Err("absolute path".into());
    }
    if raw.contains('\0') {
        return Err("NUL in path".into());
    }
    let mut parts = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("path traversal (`..`)".into()),
            c => parts.push(c),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

fn parent(path: &str) -> Option<&str> {
    path.rfind('/').map(|i| &path[..i])
}

/// Whether a symlink at `path` with relative `target` stays inside the root.
fn symlink_stays_inside(path: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return true; // resolved against the container's own root at run time
    }
    let mut depth: i64 = parent(path).map_or(0, |p| p.split('/').count() as i64);
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

struct LayerCtx<'a> {
    layer: &'a str,
    limits: Limits,
    added: HashSet<String>,
}

impl LayerCtx<'_> {
    fn reject(&self, entry: &str, reason: impl Into<String>) -> Error {
        Error::HostileEntry {
            layer: self.layer.to_string(),
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Tree::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total bytes of file content.
    pub fn total_size(&self) -> u64 {
        self.total
    }

    /// The entry at `path`.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// All entries in path order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Consumes the tree into entries in path order.
    pub fn into_entries(self) -> Vec<Entry> {
        self.entries.into_values().collect()
    }

    /// Applies one layer (an uncompressed tar stream) identified by `layer` (its digest).
    pub fn apply_layer(&mut self, layer: &str, reader: impl Read, limits: Limits) -> Result<()> {
        let mut ctx = LayerCtx {
            layer,
            limits,
            added: HashSet::new(),
        };
        let mut archive = tar::Archive::new(reader);
        let bad = |reason: String| Error::BadLayer {
            layer: layer.to_string(),
            reason,
        };
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("not a tar stream: {e}")))?;
        for item in entries {
            let mut item = item.map_err(|e| bad(format!("corrupt tar: {e}")))?;
            self.apply_entry(&mut ctx, &mut item)?;
        }
        Ok(())
    }

    fn apply_entry<R: Read>(&mut self, ctx: &mut LayerCtx, item: &mut tar::Entry<R>) -> Result<()> {
        let raw_bytes = item.path_bytes().into_owned();
        let raw = String::from_utf8(raw_bytes)
            .map_err(|e| ctx.reject(&String::from_utf8_lossy(e.as_bytes()), "path is not UTF-8"))?;
        if raw.len() > ctx.limits.max_path_len {
            // The first 64 bytes, cut at a character boundary (a UTF-8 name may have a
            // multi-byte character across byte 64).
            let mut end = raw.len().min(64);
            while !raw.is_char_boundary(end) {
                end -= 1;
            }
            return Err(ctx.reject(
                &raw[..end],
                format!("path longer than {} bytes", ctx.limits.max_path_len),
            ));
        }
        let Some(path) = normalize(&raw).map_err(|r| ctx.reject(&raw, r))? else {
            return Ok(()); // the root directory itself
        };
        let header = item.header();
        let etype = header.entry_type();
        let name = path.rsplit('/').next().unwrap_or(&path);
        // Whiteouts.
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let dir = parent(&path);
            self.check_parents(ctx, &path)?;
            if hidden == ".wh..opq" {
                self.opaque(ctx, dir);
            } else {
                let victim = match dir {
                    Some(d) => format!("{d}/{hidden}"),
                    None => hidden.to_string(),
                };
                self.remove_subtree(&victim);
            }
            return Ok(());
        }
        let size = header
            .entry_size()
            .map_err(|e| ctx.reject(&path, format!("bad size field: {e}")))?;
        if size > ctx.limits.max_entry_size {
            return Err(ctx.reject(
                &path,
                format!(
                    "size {size} exceeds the limit of {} bytes",
                    ctx.limits.max_entry_size
                ),
            ));
        }
        let mode = header
            .mode()
            .map_err(|e| ctx.reject(&path, format!("bad mode: {e}")))?
            & 0o7777;
        let uid = header
            .uid()
            .ok()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| ctx.reject(&path, "bad uid"))?;
        let gid = header
            .gid()
            .ok()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| ctx.reject(&path, "bad gid"))?;
        let mtime = header.mtime().unwrap_or(0);
        let link = || -> Result<String> {
            let l = item
                .link_name_bytes()
                .ok_or_else(|| ctx.reject(&path, "link without a target"))?;
            String::from_utf8(l.into_owned())
                .map_err(|_| ctx.reject(&path, "link target is not UTF-8"))
        };
        let kind = match etype {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File(Bytes::new()),
            tar::EntryType::Symlink => {
                let t = link()?;
                if t.is_empty() || t.contains('\0') {
                    return Err(ctx.reject(&path, "empty symlink target"));
                }
                if !symlink_stays_inside(&path, &t) {
                    return Err(ctx.reject(
                        &path,
                        format!("symlink target {t:?} escapes the root filesystem"),
                    ));
                }
                Kind::Symlink(t)
            }
            tar::EntryType::Link => {
                let t = link()?;
                let target = normalize(&t)
                    .map_err(|r| ctx.reject(&path, format!("hardlink target {t:?}: {r}")))?
                    .ok_or_else(|| ctx.reject(&path, "hardlink to the root directory"))?;
                if target == path {
                    return Err(ctx.reject(&path, "hardlink to itself"));
                }
                // One inode under several names: a link to a link is a link to its file.
                let target = match self.entries.get(&target).map(|e| &e.kind) {
                    Some(Kind::File(_)) => target,
                    Some(Kind::Hardlink(file)) => file.clone(),
                    Some(_) => {
                        return Err(ctx.reject(
                            &path,
                            format!("hardlink target {t:?} is not a regular file"),
                        ));
                    }
                    None => return Err(ctx.reject(
                        &path,
                        format!(
                            "hardlink target {t:?} does not exist in the image (escaping hardlink)"
                        ),
                    )),
                };
                Kind::Hardlink(target)
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                if !(path == "dev" || path.starts_with("dev/")) {
                    return Err(ctx.reject(&path, "device node outside /dev"));
                }
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                if etype == tar::EntryType::Char {
                    Kind::Char(major, minor)
                } else {
                    Kind::Block(major, minor)
                }
            }
            tar::EntryType::Fifo => Kind::Fifo,
            other => return Err(ctx.reject(&path, format!("unsupported entry type {other:?}"))),
        };
        self.check_parents(ctx, &path)?;
        let kind = match kind {
            Kind::File(_) => {
                if self.total + size > ctx.limits.max_total_size {
                    return Err(ctx.reject(
                        &path,
                        format!(
                            "image content exceeds the limit of {} bytes",
                            ctx.limits.max_total_size
                        ),
                    ));
                }
                let mut data = Vec::with_capacity(size as usize);
                (&mut *item)
                    .take(size)
                    .read_to_end(&mut data)
                    .map_err(|e| Error::BadLayer {
                        layer: ctx.layer.to_string(),
                        reason: format!("{path}: reading content: {e}"),
                    })?;
                if data.len() as u64 != size {
                    return Err(ctx.reject(&path, "truncated content"));
                }
                Kind::File(Bytes::from(data))
            }
            k => k,
        };
        if self.entries.len() >= ctx.limits.max_entries {
            return Err(ctx.reject(
                &path,
                format!("more than {} entries", ctx.limits.max_entries),
            ));
        }
        self.insert(Entry {
            path: path.clone(),
            kind,
            mode,
            uid,
            gid,
            mtime,
        });
        ctx.added.insert(path);
        Ok(())
    }

    /// Every ancestor of `path` must be a directory (created when missing); a symlink or a file
    /// on the way is an escape attempt.
    fn check_parents(&mut self, ctx: &LayerCtx, path: &str) -> Result<()> {
        let mut idx = 0;
        while let Some(off) = path[idx..].find('/') {
            let anc = &path[..idx + off];
            match self.entries.get(anc).map(|e| &e.kind) {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink(t)) => {
                    return Err(ctx.reject(path, format!("parent {anc:?} is a symlink (to {t:?}): writing through it could escape the root filesystem")));
                }
                Some(_) => {
                    return Err(ctx.reject(path, format!("parent {anc:?} is not a directory")));
                }
                None => {
                    self.entries
                        .insert(anc.to_string(), Entry::dir(anc, 0o755, 0));
                }
            }
            idx += off + 1;
        }
        Ok(())
    }

    /// Inserts an entry, replacing what was at its path (a replaced directory loses its children
    /// unless the new entry is a directory too).
    pub fn insert(&mut self, entry: Entry) {
        match self.entries.get(&entry.path) {
            Some(old) if old.kind == Kind::Dir && entry.kind != Kind::Dir => {
                self.remove_subtree(&entry.path.clone())
            }
            Some(_) => {
                self.take(&entry.path);
            }
            None => {}
        }
        match &entry.kind {
            Kind::File(b) => self.total += b.len() as u64,
            Kind::Hardlink(t) => {
                self.links
                    .entry(t.clone())
                    .or_default()
                    .insert(entry.path.clone());
            }
            _ => {}
        }
        self.entries.insert(entry.path.clone(), entry);
    }

    /// Removes the one entry at `path`. A regular file with other names (hard links) lives on
    /// under the first of them, which becomes the file; the others then link to that one.
    fn take(&mut self, path: &str) -> Option<Entry> {
        let old = self.entries.remove(path)?;
        match &old.kind {
            Kind::File(b) => {
                self.total -= b.len() as u64;
                let mut names = self.links.remove(path).unwrap_or_default().into_iter();
                if let Some(first) = names.next() {
                    let rest: BTreeSet<String> = names.collect();
                    for n in &rest {
                        if let Some(e) = self.entries.get_mut(n) {
                            e.kind = Kind::Hardlink(first.clone());
                        }
                    }
                    let file = Entry {
                        path: first.clone(),
                        ..old.clone()
                    };
                    self.total += b.len() as u64;
                    self.entries.insert(first.clone(), file);
                    if !rest.is_empty() {
                        self.links.insert(first, rest);
                    }
                }
            }
            Kind::Hardlink(t) => {
                if let Some(names) = self.links.get_mut(t) {
                    names.remove(path);
                    if names.is_empty() {
                        self.links.remove(t);
                    }
                }
            }
            _ => {}
        }
        Some(old)
    }

    /// Removes `path` and everything below it.
    pub fn remove_subtree(&mut self, path: &str) {
        let prefix = format!("{path}/");
        let mut doomed: Vec<String> = self
            .entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        doomed.push(path.to_string());
        for k in doomed {
            self.take(&k);
        }
    }

    fn opaque(&mut self, ctx: &LayerCtx, dir: Option<&str>) {
        let prefix = dir.map(|d| format!("{d}/")).unwrap_or_default();
        let doomed: Vec<String> = self
            .entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !ctx.added.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.take(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_rules() {
        assert_eq!(normalize("./a//b/./c").unwrap().as_deref(), Some("a/b/c"));
        assert_eq!(normalize("./").unwrap(), None);
        assert!(normalize("/etc/passwd").is_err());
        assert!(normalize("a/../../b").is_err());
    }

    /// A layer from `(path, kind)` in the given order: `f` a file holding its path, `d` a
    /// directory, `w` an empty file (whiteouts), anything else a hard link to that name.
    fn layer(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(0);
            let data: &[u8] = match *kind {
                "f" => path.as_bytes(),
                _ => b"",
            };
            match *kind {
                "d" => h.set_entry_type(tar::EntryType::Directory),
                "f" | "w" => h.set_entry_type(tar::EntryType::Regular),
                target => {
                    h.set_entry_type(tar::EntryType::Link);
                    b.append_link(&mut h, path, target).unwrap();
                    continue;
                }
            }
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn apply(layers: &[&[(&str, &str)]]) -> Tree {
        let mut t = Tree::new();
        for l in layers {
            t.apply_layer("sha256:test", &layer(l)[..], Limits::default())
                .unwrap();
        }
        t
    }

    fn kind(t: &Tree, path: &str) -> Option<Kind> {
        t.get(path).map(|e| e.kind.clone())
    }

    // Found writing the oci_layer fuzz target (its tree invariants): a whiteout removed a file
    // and left its hard links pointing at nothing; the `tar` output then held a link an extractor
    // refuses.
    #[test]
    fn a_removed_file_lives_on_under_its_hard_links() {
        let t = apply(&[&[("a", "f"), ("b", "a"), ("c", "a")], &[(".wh.a", "w")]]);
        assert_eq!(kind(&t, "a"), None);
        assert_eq!(kind(&t, "b"), Some(Kind::File(Bytes::from_static(b"a"))));
        assert_eq!(kind(&t, "c"), Some(Kind::Hardlink("b".into())));
        assert_eq!(t.total_size(), 1);
        // Replaced by a directory or a new file: the links keep the old content too.
        let t = apply(&[&[("a", "f"), ("b", "a"), ("a", "d")]]);
        assert_eq!(kind(&t, "b"), Some(Kind::File(Bytes::from_static(b"a"))));
        let t = apply(&[
            &[("d", "d"), ("d/a", "f"), ("b", "d/a")],
            &[("d/.wh..wh..opq", "w")],
        ]);
        assert_eq!(kind(&t, "d/a"), None);
        assert_eq!(kind(&t, "b"), Some(Kind::File(Bytes::from_static(b"d/a"))));
    }

    // Found writing the oci_layer fuzz target: a link to a link was kept as such, so the `tar`
    // output (hard links last, in path order) could write it before the link it names.
    #[test]
    fn a_link_to_a_link_is_a_link_to_its_file() {
        let t = apply(&[&[("a", "f"), ("b", "a"), ("c", "b")]]);
        assert_eq!(kind(&t, "c"), Some(Kind::Hardlink("a".into())));
        let mut t = Tree::new();
        let e = t
            .apply_layer(
                "sha256:test",
                &layer(&[("a", "f"), ("a", "a")])[..],
                Limits::default(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("hardlink to itself"), "{e}");
    }

    #[test]
    fn symlink_escape_rules() {
        assert!(symlink_stays_inside("a/b/c", "../x"));
        assert!(symlink_stays_inside("a/b/c", "../../x"));
        assert!(!symlink_stays_inside("a/b/c", "../../../x"));
        assert!(symlink_stays_inside("etc/mtab", "/proc/mounts"));
        assert!(!symlink_stays_inside("x", ".."));
    }
}
