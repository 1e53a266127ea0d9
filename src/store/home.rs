//! A node's home: the folders and files it keeps (see PRODUCT.md), made
//! private where they list what is shared, and the one rule that turns a
//! name from the network into a file name ([`safe_file_name`]).

use std::path::{Path, PathBuf};

/// The directories and files of a node's home (see PRODUCT.md).
#[derive(Clone, Debug)]
pub struct Home {
    pub root: PathBuf,
}

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Home { root: root.into() }
    }
    pub fn shared(&self) -> PathBuf {
        self.root.join("shared")
    }
    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(".lanshare")
    }
    pub fn download_log(&self) -> PathBuf {
        self.root.join("download_log.txt")
    }
    pub fn upload_log(&self) -> PathBuf {
        self.root.join("upload_log.txt")
    }
    pub fn control_socket(&self) -> PathBuf {
        self.state_dir().join("control.sock")
    }
    pub fn node_id_file(&self) -> PathBuf {
        self.state_dir().join("node_id")
    }
    /// The node's Ed25519 key (see `identity`).
    pub fn identity_file(&self) -> PathBuf {
        self.state_dir().join("identity.key")
    }
    pub fn index_cache(&self) -> PathBuf {
        self.state_dir().join("index.bin")
    }
    pub fn partial_dir(&self) -> PathBuf {
        self.state_dir().join("partial")
    }
    pub fn shares_file(&self) -> PathBuf {
        self.state_dir().join("shares.json")
    }

    /// Creates the directories a node needs. The state folder (which lists
    /// the full paths of shared files) is private: created mode 0700, and
    /// tightened to it when it exists with a looser mode.
    pub fn create_dirs(&self) -> std::io::Result<()> {
        for d in [self.shared(), self.downloads()] {
            std::fs::create_dir_all(&d)?;
        }
        for d in [self.state_dir(), self.partial_dir()] {
            private_dir(&d)?;
        }
        Ok(())
    }
}

/// Creates `dir` (its parent must exist) mode 0700, or tightens an existing
/// one to 0700 when group or others have any access.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a folder", dir.display()),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        tracing::info!(dir = %dir.display(), mode = format!("{mode:o}"), "making the state folder private (0700)");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Turns a file name from the network into one safe to create in
/// downloads/: a single path component, no separators, control characters
/// or leading dots, at most 255 bytes. Never empty.
pub fn safe_file_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c == ':' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    while out.starts_with('.') || out.starts_with(' ') {
        out.remove(0);
    }
    let out = out.trim_end().to_string();
    let mut out = if out.is_empty() {
        "download".to_string()
    } else {
        out
    };
    while out.len() > crate::wire::MAX_FILE_NAME {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn safe_names_stay_in_one_component() {
        assert_eq!(safe_file_name("photo.png"), "photo.png");
        assert_eq!(safe_file_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_file_name("..\\..\\x"), "_.._x");
        assert_eq!(safe_file_name(".bashrc"), "bashrc");
        assert_eq!(safe_file_name(".."), "download");
        assert_eq!(safe_file_name(""), "download");
        assert_eq!(safe_file_name("a\0b\nc"), "a_b_c");
        assert!(safe_file_name(&"é".repeat(300)).len() <= 255);
    }

    #[test]
    fn state_folder_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("fresh"));
        let _store = Store::open(home.clone(), Vec::new()).unwrap();
        assert_eq!(mode(&home.state_dir()), 0o700);
        assert_eq!(mode(&home.partial_dir()), 0o700);
        // An existing one with a looser mode is tightened.
        let home = Home::new(dir.path().join("old"));
        std::fs::create_dir_all(home.partial_dir()).unwrap();
        std::fs::set_permissions(home.state_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(home.partial_dir(), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let _store = Store::open(home.clone(), Vec::new()).unwrap();
        assert_eq!(mode(&home.state_dir()), 0o700);
        assert_eq!(mode(&home.partial_dir()), 0o700);
    }

    proptest::proptest! {
        #[test]
        fn any_name_is_one_safe_component(name in ".*") {
            let s = safe_file_name(&name);
            proptest::prop_assert!(!s.is_empty() && s.len() <= 255);
            proptest::prop_assert!(!s.contains('/') && !s.contains('\0') && !s.starts_with('.'));
            let p = Path::new(&s);
            proptest::prop_assert_eq!(p.components().count(), 1);
            proptest::prop_assert!(matches!(p.components().next(), Some(std::path::Component::Normal(_))));
        }
    }
}
