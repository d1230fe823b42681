//! Parquet inputs that are not what they were: a file damaged in the
//! middle fails the run naming the file and the row group (page
//! checksums) instead of passing on garbage rows, and a file rewritten in
//! place since a checkpoint is refused (checksum of the prefix read).
//!
//! The parquet crate we build with cannot write page checksums (its writer
//! leaves the `crc` field of page headers empty), so the file is written
//! here by hand: the smallest valid layout (uncompressed PLAIN pages of two
//! required columns), with the CRC-32 of each page body in its header, as
//! parquet-mr and Spark write them.

use std::path::Path;

use crate::util::*;

/// Thrift compact protocol, just what a Parquet footer and page headers need.
struct Thrift {
    buf: Vec<u8>,
    /// Last field id of each open struct.
    last: Vec<i16>,
}

impl Thrift {
    fn new() -> Thrift {
        Thrift { buf: Vec::new(), last: vec![0] }
    }
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
    fn field(&mut self, id: i16, ty: u8) {
        let last = self.last.last_mut().expect("a struct is open");
        let delta = id - *last;
        *last = id;
        if (1..=15).contains(&delta) {
            self.buf.push(((delta as u8) << 4) | ty);
        } else {
            self.buf.push(ty);
            self.varint(((id << 1) ^ (id >> 15)) as u16 as u64);
        }
    }
    fn i32(&mut self, id: i16, v: i32) {
        self.field(id, 5);
        self.varint(((v << 1) ^ (v >> 31)) as u32 as u64);
    }
    /// An i32 always in five bytes (a varint may carry padding), so that
    /// files with other checksums have the same layout.
    fn i32_wide(&mut self, id: i16, v: i32) {
        self.field(id, 5);
        let mut z = ((v << 1) ^ (v >> 31)) as u32;
        for _ in 0..4 {
            self.buf.push((z as u8 & 0x7F) | 0x80);
            z >>= 7;
        }
        self.buf.push(z as u8);
    }
    fn i64(&mut self, id: i16, v: i64) {
        self.field(id, 6);
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }
    fn binary(&mut self, id: i16, b: &[u8]) {
        self.field(id, 8);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }
    fn list(&mut self, id: i16, elem: u8, n: usize) {
        self.field(id, 9);
        if n < 15 {
            self.buf.push(((n as u8) << 4) | elem);
        } else {
            self.buf.push(0xF0 | elem);
            self.varint(n as u64);
        }
    }
    /// A struct field (`Some(id)`) or a struct element of a list (`None`).
    fn begin(&mut self, id: Option<i16>) {
        if let Some(id) = id {
            self.field(id, 12);
        }
        self.last.push(0);
    }
    fn end(&mut self) {
        self.buf.push(0);
        self.last.pop();
    }
}

/// CRC-32 (IEEE), as Parquet page checksums use.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

const I64: i32 = 2;
const BYTE_ARRAY: i32 = 6;

/// Writes `groups` row groups of `rows` rows (Id = 1…, Name = `{name}NNNNN`),
/// in pages of `page_rows`, every page with its checksum. Returns, per row
/// group and column, the byte ranges of the page bodies.
fn write_parquet(
    path: &Path,
    name: &str,
    groups: usize,
    rows: usize,
    page_rows: usize,
) -> Vec<Vec<Vec<(usize, usize)>>> {
    let mut file = b"PAR1".to_vec();
    let mut bodies = Vec::new();
    // (type, name, [(offset, size, values)] per column) per row group.
    let mut meta = Vec::new();
    for g in 0..groups {
        let mut chunks = Vec::new();
        let mut group_bodies = Vec::new();
        for (ty, column) in [(I64, "Id"), (BYTE_ARRAY, "Name")] {
            let start = file.len();
            let mut pages = Vec::new();
            for p in (0..rows).step_by(page_rows) {
                let mut body = Vec::new();
                for r in p..(p + page_rows).min(rows) {
                    let id = (g * rows + r + 1) as i64;
                    if ty == I64 {
                        body.extend_from_slice(&id.to_le_bytes());
                    } else {
                        let s = format!("{name}{id:05}");
                        body.extend_from_slice(&(s.len() as u32).to_le_bytes());
                        body.extend_from_slice(s.as_bytes());
                    }
                }
                let mut h = Thrift::new();
                h.i32(1, 0); // DATA_PAGE
                h.i32(2, body.len() as i32);
                h.i32(3, body.len() as i32);
                h.i32_wide(4, crc32(&body) as i32);
                h.begin(Some(5));
                h.i32(1, (page_rows.min(rows - p)) as i32);
                h.i32(2, 0); // PLAIN
                h.i32(3, 3); // RLE (no levels: required, flat)
                h.i32(4, 3);
                h.end();
                h.buf.push(0);
                file.extend_from_slice(&h.buf);
                pages.push((file.len(), body.len()));
                file.extend_from_slice(&body);
            }
            group_bodies.push(pages);
            chunks.push((ty, column, start, file.len() - start));
        }
        bodies.push(group_bodies);
        meta.push(chunks);
    }
    let mut f = Thrift::new();
    f.i32(1, 1);
    f.list(2, 12, 3);
    f.begin(None);
    f.binary(4, b"schema");
    f.i32(5, 2);
    f.end();
    for (ty, name, utf8) in [(I64, "Id", false), (BYTE_ARRAY, "Name", true)] {
        f.begin(None);
        f.i32(1, ty);
        f.i32(3, 0); // REQUIRED
        f.binary(4, name.as_bytes());
        if utf8 {
            f.i32(6, 0); // UTF8
        }
        f.end();
    }
    f.i64(3, (groups * rows) as i64);
    f.list(4, 12, groups);
    for chunks in &meta {
        f.begin(None);
        f.list(1, 12, chunks.len());
        let mut total = 0;
        for &(ty, name, offset, size) in chunks {
            total += size;
            f.begin(None);
            f.i64(2, offset as i64);
            f.begin(Some(3));
            f.i32(1, ty);
            f.list(2, 5, 1);
            f.varint(0); // PLAIN
            f.list(3, 8, 1);
            f.varint(name.len() as u64);
            f.buf.extend_from_slice(name.as_bytes());
            f.i32(4, 0); // UNCOMPRESSED
            f.i64(5, rows as i64);
            f.i64(6, size as i64);
            f.i64(7, size as i64);
            f.i64(9, offset as i64);
            f.end();
            f.end();
        }
        f.i64(2, total as i64);
        f.i64(3, rows as i64);
        f.end();
    }
    f.buf.push(0);
    file.extend_from_slice(&f.buf);
    file.extend_from_slice(&(f.buf.len() as u32).to_le_bytes());
    file.extend_from_slice(b"PAR1");
    std::fs::write(path, file).expect("write parquet");
    bodies
}

fn pipeline(dir: &Path, input: &Path, out: &Path) -> String {
    write_pipeline(
        dir,
        "p.toml",
        &format!(
            r#"
[pipeline]
name = "damaged"
[pipeline.checkpoint]
interval = "off"
[sources.pq]
kind = "file"
path = "{}"
[sinks.out]
kind = "file"
inputs = ["pq"]
path = "{}"
"#,
            input.display(),
            out.display()
        ),
    )
}

#[test]
fn a_damaged_parquet_page_fails_the_run_naming_the_file_and_row_group() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("names.parquet");
    let out = dir.path().join("out.csv");
    let bodies = write_parquet(&input, "Name", 3, 1000, 250);
    let p = pipeline(dir.path(), &input, &out);

    // Intact, every checksum matches and every row arrives as written.
    let o = run(&["run", "--no-progress", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3001, "header and 3,000 rows");
    assert_eq!(lines[1], "1,Name00001");
    assert_eq!(lines[1501], "1501,Name01501");
    std::fs::remove_file(&out).unwrap();

    // One bit of one Id in the second page of the second row group: a
    // plausible number, nothing a decoder could notice; only the checksum.
    let (at, len) = bodies[1][0][1];
    let mut bytes = std::fs::read(&input).unwrap();
    bytes[at + len / 2] ^= 0x01;
    std::fs::write(&input, &bytes).unwrap();

    let o = run(&["run", "--no-progress", &p], &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "a damaged file must fail the run: {err}");
    let expected = format!(
        "{} is damaged: a page of row group 2 of 3 (rows 1,001 to 2,000) does not match its checksum",
        input.display()
    );
    assert!(err.contains(&expected), "expected {expected:?} in:\n{err}");
    assert!(!out.exists(), "a failed run publishes nothing");
}

/// Stopped at a checkpoint, a Parquet source resumes at its row; rewritten
/// in place (same size, same modification time) it is refused.
#[test]
fn a_parquet_input_resumes_at_its_row_and_a_rewritten_one_is_refused() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("names.parquet");
    let out = dir.path().join("out.csv");
    write_parquet(&input, "Name", 20, 3000, 1000);
    let p = write_pipeline(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[pipeline]
name = "pq-resume"
batch_size = 1000
channel_capacity = 2
[pipeline.checkpoint]
interval = "100ms"
dir = "{dir}/checkpoints"
[sources.pq]
kind = "file"
path = "{input}"
[sinks.out]
kind = "file"
inputs = ["pq"]
path = "{out}"
[sinks.slow]
kind = "blackhole"
inputs = ["pq"]
delay_ms = 20
"#,
            dir = dir.path().display(),
            input = input.display(),
            out = out.display()
        ),
    );
    let stop_at_a_checkpoint = || {
        let child = engine()
            .args(["run", "--no-progress", &p])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(700));
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    };

    stop_at_a_checkpoint();
    let o = run(&["run", "--no-progress", &p], &[]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("source pq at row "), "{err}");
    assert!(err.contains("checksum verified"), "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    let mut ids: Vec<u64> = text.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=60_000).collect::<Vec<_>>(), "every row once");

    stop_at_a_checkpoint();
    let before = std::fs::metadata(&input).unwrap();
    let original = std::fs::read(&input).unwrap();
    write_parquet(&dir.path().join("new.parquet"), "Nome", 20, 3000, 1000);
    let rewritten = std::fs::read(dir.path().join("new.parquet")).unwrap();
    assert_eq!(rewritten.len(), original.len());
    let mut f = std::fs::OpenOptions::new().write(true).open(&input).unwrap();
    f.write_all(&rewritten).unwrap();
    f.set_modified(before.modified().unwrap()).unwrap();
    drop(f);
    let o = run(&["run", "--no-progress", &p], &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!(" bytes of {} changed since checkpoint ", input.display())), "{err}");
}
