//! `engine health URL`: a health probe for containers, whose images carry
//! no curl. The Dockerfile's `HEALTHCHECK` runs
//! `engine health http://127.0.0.1:9464/health/ready`: exit 0 when the URL
//! answers 2xx within the timeout, 1 otherwise, with one line saying why.
//!
//! No proxy is used (a loopback probe must not go through `HTTPS_PROXY`),
//! no redirect is followed (a probe that lands elsewhere is not healthy),
//! and the whole exchange, connect included, is bounded by the timeout.

use std::time::Duration;

/// Why a probe failed; the `Display` is the line the command prints.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("`{url}` is not an http:// or https:// URL{why}")]
    BadUrl { url: String, why: String },
    #[error("{url} answered {status}{body}")]
    Status { url: String, status: u16, body: String },
    #[error("{url} did not answer within {}", humanize(*timeout))]
    Timeout { url: String, timeout: Duration },
    #[error("cannot reach {url}: {why}")]
    Unreachable { url: String, why: String },
}

/// GETs `url`: `Ok` on a 2xx answer within `timeout`.
pub async fn check(url: &str, timeout: Duration) -> Result<(), HealthError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| HealthError::BadUrl { url: url.to_string(), why: format!(": {e}") })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(HealthError::BadUrl { url: url.to_string(), why: String::new() });
    }
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| HealthError::Unreachable { url: url.to_string(), why: chain(&e) })?;
    let exchange = async {
        let resp = client.get(parsed).send().await?;
        let status = resp.status();
        let body = if status.is_success() { String::new() } else { resp.text().await.unwrap_or_default() };
        Ok::<_, reqwest::Error>((status, body))
    };
    // reqwest's own timeout covers the request; this one also bounds a
    // server that trickles its body.
    let (status, body) = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => return Err(HealthError::Timeout { url: url.to_string(), timeout }),
        Ok(Err(e)) if e.is_timeout() => return Err(HealthError::Timeout { url: url.to_string(), timeout }),
        Ok(Err(e)) => return Err(HealthError::Unreachable { url: url.to_string(), why: chain(&e) }),
        Ok(Ok(answer)) => answer,
    };
    if status.is_success() {
        return Ok(());
    }
    let body: String = body.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(200).collect();
    let body = if body.is_empty() { String::new() } else { format!(": {body}") };
    Err(HealthError::Status { url: url.to_string(), status: status.as_u16(), body })
}

/// The error and its causes ("error sending request: client error
/// (Connect): tcp connect error: Connection refused (os error 111)").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cause = c.source();
    }
    parts.join(": ")
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{} s", d.as_secs()) } else { format!("{} ms", d.as_millis()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server that answers every connection with `response` (raw HTTP),
    /// or never answers when it is `None`. Returns its base URL.
    async fn server(response: Option<&'static str>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    match response {
                        Some(r) => {
                            let _ = sock.write_all(r.as_bytes()).await;
                            let _ = sock.shutdown().await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(30)).await,
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_2xx_answer_is_healthy() {
        let url = server(Some("HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nready\n")).await;
        check(&format!("{url}/health/ready"), Duration::from_secs(5)).await.unwrap();
        let url = server(Some("HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")).await;
        check(&url, Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn another_status_is_unhealthy_and_says_what_the_server_said() {
        let url = server(Some(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\nconnection: close\r\n\r\nstarting\n",
        ))
        .await;
        let e = check(&format!("{url}/health/ready"), Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, HealthError::Status { status: 503, .. }), "{e:?}");
        assert_eq!(e.to_string(), format!("{url}/health/ready answered 503: starting"));
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        let url =
            server(Some("HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:9/\r\ncontent-length: 0\r\n\r\n")).await;
        let e = check(&url, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, HealthError::Status { status: 302, .. }), "{e:?}");
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable() {
        // Bind, note the port, close: nothing listens there any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = check(&format!("http://127.0.0.1:{port}/health/ready"), Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, HealthError::Unreachable { .. }), "{e:?}");
        assert!(e.to_string().starts_with(&format!("cannot reach http://127.0.0.1:{port}/health/ready: ")), "{e}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out_in_time() {
        let url = server(None).await;
        let started = std::time::Instant::now();
        let e = check(&url, Duration::from_millis(300)).await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(e, HealthError::Timeout { .. }), "{e:?}");
        assert_eq!(e.to_string(), format!("{url} did not answer within 300 ms"));
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
    }

    #[tokio::test]
    async fn only_http_urls_are_probed() {
        for bad in ["127.0.0.1:9464/health/ready", "ftp://127.0.0.1/health", "file:///etc/passwd", "http://"] {
            let e = check(bad, Duration::from_secs(1)).await.unwrap_err();
            assert!(matches!(e, HealthError::BadUrl { .. }), "{bad}: {e:?}");
        }
    }
}
