//! `exec`: any vault's CLI behind a script speaking Vector's protocol. The
//! command gets `{"version":"1.0","secrets":[keys...]}` on stdin and answers
//! `{"<key>":{"value":"...","error":null},...}` on stdout. One process per
//! resolution, all keys at once; killed at the timeout.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ExecSpec;

pub struct Exec {
    command: Vec<String>,
    timeout: Duration,
}

#[derive(Deserialize)]
struct Answer {
    value: Option<String>,
    error: Option<String>,
}

/// How much of the command's stderr an error quotes.
const STDERR_TAIL: usize = 400;

impl Exec {
    pub fn new(spec: &ExecSpec) -> Result<Exec, String> {
        Ok(Exec { command: spec.command.clone(), timeout: spec.timeout()? })
    }

    fn program(&self) -> &str {
        &self.command[0]
    }

    pub async fn fetch(&self, keys: &[String]) -> Result<BTreeMap<String, Result<String, String>>, String> {
        // Field order as Vector writes it, for scripts that match on the text.
        let keys_json = serde_json::to_string(keys).map_err(|e| e.to_string())?;
        let request = format!(r#"{{"version":"1.0","secrets":{keys_json}}}"#);
        let mut child = tokio::process::Command::new(self.program())
            .args(&self.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: a timeout kills the CLI it started
            // too, not only the script.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start `{}`: {e}", self.program()))?;
        let pid = child.id();
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = child.stdout.take().ok_or("no stdout")?;
        let mut stderr = child.stderr.take().ok_or("no stderr")?;
        let talk = async {
            // A command that exits without reading stdin is answered by its
            // exit status, not by a broken pipe here.
            let _ = stdin.write_all(request.as_bytes()).await;
            drop(stdin);
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let (o, e) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            o.and(e).map_err(|e| format!("reading `{}`'s output: {e}", self.program()))?;
            let status = child.wait().await.map_err(|e| format!("waiting for `{}`: {e}", self.program()))?;
            Ok::<_, String>((status, out, err))
        };
        let (status, out, err) = match tokio::time::timeout(self.timeout, talk).await {
            Ok(r) => r?,
            Err(_) => {
                if let Some(pid) = pid {
                    // SAFETY: kill(2) with a negative pid signals the group
                    // we created; it touches no memory.
                    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                }
                return Err(format!("`{}` did not answer within {:?} and was killed", self.program(), self.timeout));
            }
        };
        if !status.success() {
            let err = String::from_utf8_lossy(&err);
            let err = err.trim();
            let tail = match err.char_indices().rev().nth(STDERR_TAIL) {
                Some((i, _)) => format!("…{}", &err[i..]),
                None => err.to_string(),
            };
            return Err(format!(
                "`{}` exited with {status}{}",
                self.program(),
                if tail.is_empty() { String::new() } else { format!(": {tail}") }
            ));
        }
        let answers: BTreeMap<String, Answer> = serde_json::from_slice(&out).map_err(|e| {
            format!(
                "`{}` did not answer with {{\"<key>\": {{\"value\": ..., \"error\": ...}}}} JSON: {e}",
                self.program()
            )
        })?;
        Ok(keys
            .iter()
            .map(|k| {
                let r = match answers.get(k) {
                    None => Err(format!("`{}` gave no answer for this key", self.program())),
                    Some(Answer { error: Some(e), .. }) if !e.is_empty() => Err(e.clone()),
                    Some(Answer { value: Some(v), .. }) => Ok(v.clone()),
                    Some(_) => Err(format!("`{}` answered with neither a value nor an error", self.program())),
                };
                (k.clone(), r)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A script run as `/bin/sh <file>`, not executed itself: a test
    /// thread that forks while another still holds its new script open for
    /// writing makes executing that file fail with ETXTBSY ("Text file
    /// busy"), which reading it never does.
    fn script(body: &str) -> (tempfile::TempDir, Exec) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sh");
        std::fs::write(&path, format!("{body}\n")).unwrap();
        let command = vec!["/bin/sh".to_string(), path.display().to_string()];
        let e = Exec::new(&ExecSpec { command, timeout: Some("2s".into()) }).unwrap();
        (dir, e)
    }

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn speaks_vectors_protocol() {
        // Echoes back what it read, so the request's shape is checked too.
        let (_d, e) = script(
            r#"read -r line
case "$line" in *'"version":"1.0"'*'"a","b","c"'*) ;; *) echo "bad request: $line" >&2; exit 3;; esac
echo '{"a":{"value":"va","error":null},"b":{"value":null,"error":"b is not there"}}'"#,
        );
        let got = e.fetch(&keys(&["a", "b", "c"])).await.unwrap();
        assert_eq!(got["a"], Ok("va".to_string()));
        assert_eq!(got["b"], Err("b is not there".to_string()));
        assert!(got["c"].as_ref().unwrap_err().contains("no answer"));
    }

    #[tokio::test]
    async fn failures_timeouts_and_garbage_fail_the_call() {
        let (_d, e) = script("echo 'vault: permission denied' >&2; exit 2");
        let err = e.fetch(&keys(&["a"])).await.unwrap_err();
        assert!(err.contains("exited with exit status: 2: vault: permission denied"), "{err}");
        let (_d, e) = script("sleep 5");
        let t = std::time::Instant::now();
        let err = e.fetch(&keys(&["a"])).await.unwrap_err();
        assert!(err.contains("did not answer within 2s"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(4));
        let (_d, e) = script("echo not json");
        assert!(e.fetch(&keys(&["a"])).await.unwrap_err().contains("JSON"));
        let missing = Exec::new(&ExecSpec { command: vec!["/nonexistent/x".into()], timeout: None }).unwrap();
        assert!(missing.fetch(&keys(&["a"])).await.unwrap_err().contains("cannot start `/nonexistent/x`"));
    }
}
