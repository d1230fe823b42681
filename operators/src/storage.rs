//! Turns a location from the pipeline file (`s3://bucket/key`, `file:///abs`
//! or a plain path) into an object store and a path inside it. Operators read
//! and write objects only through what this returns, so local disk and S3
//! behave the same to them.

use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

use crate::api::OperatorError;

/// A resolved location.
#[derive(Clone, Debug)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub path: Path,
    /// What to show a user: the URL without credentials.
    pub display: String,
    /// Local files are renamed atomically; S3 multipart uploads are already
    /// invisible until completed, so they need no temp name.
    pub is_local: bool,
}

pub fn resolve(location: &str) -> Result<Location, OperatorError> {
    if let Some(rest) = location.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(OperatorError::Config(format!("`{location}` names no bucket")));
        }
        // from_env reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
        // AWS_ENDPOINT(_URL), AWS_ALLOW_HTTP… as the AWS tools do.
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
            builder = builder.with_endpoint(endpoint);
        }
        let store =
            builder.build().map_err(|e| OperatorError::storage(format!("cannot configure S3 for `{location}`"), e))?;
        let path = Path::parse(key)
            .map_err(|e| OperatorError::Config(format!("`{location}` is not a valid object key: {e}")))?;
        return Ok(Location { store: Arc::new(store), path, display: format!("s3://{bucket}/{key}"), is_local: false });
    }
    let fs_path = if let Some(rest) = location.strip_prefix("file://") {
        PathBuf::from(rest)
    } else if location.contains("://") {
        let scheme = location.split("://").next().unwrap_or_default();
        return Err(OperatorError::Config(format!(
            "unsupported scheme `{scheme}://` in `{location}`: use a path, file:// or s3://"
        )));
    } else {
        PathBuf::from(location)
    };
    let abs = absolute(&fs_path)?;
    let path = Path::from_absolute_path(&abs)
        .map_err(|e| OperatorError::Config(format!("`{location}` is not a usable path: {e}")))?;
    Ok(Location { store: Arc::new(LocalFileSystem::new()), path, display: abs.display().to_string(), is_local: true })
}

/// Makes a path absolute against the working directory and removes `.` and
/// `..` lexically (the file may not exist yet, so no canonicalize).
fn absolute(p: &FsPath) -> Result<PathBuf, OperatorError> {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| OperatorError::Data(format!("cannot read the working directory: {e}")))?
            .join(p)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_path_becomes_absolute_local() {
        let loc = resolve("pipelines/../data/x.csv").unwrap();
        assert!(loc.is_local);
        assert!(loc.display.ends_with("/data/x.csv"), "{}", loc.display);
        assert!(!loc.display.contains(".."));
    }

    #[test]
    fn file_url_is_local() {
        let loc = resolve("file:///tmp/a/b.csv").unwrap();
        assert_eq!(loc.path.as_ref(), "tmp/a/b.csv");
    }

    #[test]
    fn unknown_scheme_is_refused_with_the_alternatives() {
        let err = resolve("gs://bucket/x").unwrap_err().to_string();
        assert!(err.contains("unsupported scheme `gs://`"), "{err}");
    }
}
