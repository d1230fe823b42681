//! `directory`: one file per secret, the key being its path under the
//! directory (Docker's and Kubernetes' `/run/secrets`). Reads only inside
//! the directory: a key with `..` or an absolute path is refused.

use std::path::{Component, Path, PathBuf};

use super::DirectorySpec;

pub struct Directory {
    root: PathBuf,
    trim: bool,
}

impl Directory {
    pub fn new(spec: &DirectorySpec) -> Directory {
        Directory { root: spec.path.clone(), trim: spec.remove_trailing_whitespace }
    }

    pub fn get(&self, key: &str) -> Result<String, String> {
        let rel = Path::new(key);
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err("the key must be a relative path inside the directory (no `..`, no leading `/`)".into());
        }
        let path = self.root.join(rel);
        let text = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound if !self.root.is_dir() => {
                format!("the directory {} does not exist", self.root.display())
            }
            std::io::ErrorKind::NotFound => format!("no file {}", path.display()),
            _ => format!("cannot read {}: {e}", path.display()),
        })?;
        let text = String::from_utf8(text).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
        Ok(if self.trim { text.trim_end().to_string() } else { text })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_trims_and_stays_inside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        std::fs::write(dir.path().join("db/password"), "hunter22\n").unwrap();
        let d = Directory::new(&DirectorySpec { path: dir.path().into(), remove_trailing_whitespace: true });
        assert_eq!(d.get("db/password").unwrap(), "hunter22");
        assert!(d.get("nope").unwrap_err().starts_with("no file"));
        assert!(d.get("../etc/passwd").unwrap_err().contains("inside the directory"));
        assert!(d.get("/etc/passwd").unwrap_err().contains("inside the directory"));
        let raw = Directory::new(&DirectorySpec { path: dir.path().into(), remove_trailing_whitespace: false });
        assert_eq!(raw.get("db/password").unwrap(), "hunter22\n");
        let gone = Directory::new(&DirectorySpec { path: dir.path().join("absent"), remove_trailing_whitespace: true });
        assert!(gone.get("x").unwrap_err().contains("does not exist"));
    }
}
