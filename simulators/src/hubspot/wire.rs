//! What every answer shares on the wire: HubSpot's error body
//! (`status`, `message`, `correlationId`, `category`, optional `context` and
//! `errors`), JSON responses (so every 4xx/5xx carries
//! `content-type: application/json`), correlation ids, ISO 8601 timestamps
//! with milliseconds, and small parsing helpers (JSON bodies with HubSpot's
//! "Invalid input JSON" message, percent-decoding of path segments).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::{Value, json};

/// The portal id HubSpot puts in some messages.
pub const PORTAL_ID: u64 = 20_260_301;

/// An answer before the shared headers (rate limits) are added.
pub struct Reply {
    pub status: StatusCode,
    /// `None` for an empty body (204).
    pub body: Option<Value>,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: StatusCode, body: Value) -> Reply {
        Reply { status, body: Some(body), headers: Vec::new() }
    }
    pub fn ok(body: Value) -> Reply {
        Reply::json(StatusCode::OK, body)
    }
    pub fn empty(status: StatusCode) -> Reply {
        Reply { status, body: None, headers: Vec::new() }
    }
    /// A HubSpot error body.
    pub fn error(status: StatusCode, err: ApiError) -> Reply {
        Reply::json(status, err.into_body())
    }
    pub fn with_header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_string()));
        self
    }
    pub fn into_response(self, extra: HeaderMap) -> Response {
        let mut headers = extra;
        for (k, v) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(k, v);
            }
        }
        match self.body {
            Some(b) => (self.status, headers, axum::Json(b)).into_response(),
            None => (self.status, headers).into_response(),
        }
    }
}

/// HubSpot's error body, built field by field.
pub struct ApiError {
    pub message: String,
    pub category: &'static str,
    pub correlation_id: String,
    pub context: Option<Value>,
    pub errors: Option<Vec<Value>>,
    /// Extra top-level fields (`errorType`, `policyName`, `subCategory`…).
    pub extra: Vec<(&'static str, Value)>,
}

impl ApiError {
    pub fn new(category: &'static str, message: impl Into<String>, correlation_id: String) -> ApiError {
        ApiError { message: message.into(), category, correlation_id, context: None, errors: None, extra: Vec::new() }
    }
    pub fn context(mut self, c: Value) -> ApiError {
        self.context = Some(c);
        self
    }
    pub fn errors(mut self, e: Vec<Value>) -> ApiError {
        self.errors = Some(e);
        self
    }
    pub fn extra(mut self, k: &'static str, v: Value) -> ApiError {
        self.extra.push((k, v));
        self
    }
    pub fn into_body(self) -> Value {
        let mut v = json!({
            "status": "error",
            "message": self.message,
            "correlationId": self.correlation_id,
            "category": self.category,
        });
        if let Some(c) = self.context {
            v["context"] = c;
        }
        if let Some(e) = self.errors {
            v["errors"] = Value::Array(e);
        }
        for (k, x) in self.extra {
            v[k] = x;
        }
        v
    }
}

/// A random correlation id shaped like HubSpot's (a UUID v4).
pub fn correlation(rng: &mut rand::rngs::StdRng) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        rng.random::<u32>(),
        rng.random::<u16>(),
        rng.random::<u16>() & 0xfff,
        rng.random::<u16>() & 0xfff,
        rng.random::<u64>() & 0xffff_ffff_ffff
    )
}

/// Milliseconds since the Unix epoch.
pub fn epoch_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// `2026-11-29T20:37:41.123Z`.
pub fn iso(t: SystemTime) -> String {
    iso_ms(epoch_ms(t))
}

pub fn now_iso() -> String {
    iso(SystemTime::now())
}

/// ISO 8601 in UTC with milliseconds from epoch milliseconds.
pub fn iso_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses a JSON body; HubSpot answers bad JSON with a 400 whose message
/// starts with "Invalid input JSON on line L, column C".
pub fn parse_body(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice::<Value>(body)
        .map_err(|e| format!("Invalid input JSON on line {}, column {}: {e}", e.line(), e.column()))
}

/// Decodes `%XX` escapes in a path segment (`+` stays a plus, as in paths).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_iso_8601_utc_with_milliseconds() {
        assert_eq!(iso_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_ms(1_427_997_766_000), "2015-04-02T18:02:46.000Z");
        assert_eq!(iso_ms(1_795_984_661_123), "2026-11-29T20:37:41.123Z");
        assert_eq!(iso_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decode("Mary%7CF%7C1880"), "Mary|F|1880");
        assert_eq!(percent_decode("a%40b.com"), "a@b.com");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
