//! CSV decoding on every core: the bytes of an object are cut into
//! *segments* at record boundaries, each segment is decoded by its own
//! [`CsvDecoder`] on the blocking pool, and the results come back in input
//! order. Owns the boundary scan, the queue of segments in flight and the
//! position a checkpoint may record; the CSV dialect, rejects and line
//! numbers stay the decoder's, so the rows, rejects and their order are
//! exactly a single decoder's.
//!
//! A segment starts where a record starts: after a `\n` outside quotes. Its
//! decoder is a [`CsvDecoder::resume`] at that byte and line, as after a
//! checkpoint, so everything a resumed decoder guarantees holds per segment.
//! The scan agrees with the decoder's grammar (csv-core): a quote opens a
//! quoted field only as a field's first byte, `""` inside one is a quote,
//! and a quoted field's newlines are data.
//!
//! Must not read the object or emit rows: the file source does both, and
//! takes outputs from here only in order.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use crate::api::OperatorError;
use crate::sources::csv::{CsvDecoder, CsvOptions, DecoderPosition, Unit, count_newlines};

/// Where the boundary scan is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quoting {
    Outside,
    Quoted,
    /// A quote inside a quoted field was the last byte scanned: the next
    /// byte says whether it closed the field or was the first of `""`.
    QuotedAtQuote,
}

/// The quote-aware scan for record ends, resumable across chunks.
#[derive(Debug)]
pub struct Scanner {
    quote: u8,
    delimiter: u8,
    state: Quoting,
    /// The byte before the next one scanned (`\n` at a record start).
    prev: u8,
}

impl Scanner {
    /// A scanner at the start of a record.
    pub fn new(delimiter: u8, quote: u8) -> Self {
        Scanner { quote, delimiter, state: Quoting::Outside, prev: b'\n' }
    }

    /// Scans `buf` (the bytes after the last scanned); the offset just past
    /// the last record end in it, if any.
    pub fn scan(&mut self, buf: &[u8]) -> Option<usize> {
        let q = self.quote;
        let mut last = None;
        let mut i = 0;
        if buf.is_empty() {
            return None;
        }
        if self.state == Quoting::QuotedAtQuote {
            if buf[0] == q {
                self.state = Quoting::Quoted;
                i = 1;
            } else {
                self.state = Quoting::Outside;
            }
        }
        while i < buf.len() {
            match self.state {
                Quoting::Outside => {
                    let Some(at) = memchr::memchr(q, &buf[i..]).map(|p| i + p) else {
                        if let Some(nl) = memchr::memrchr(b'\n', &buf[i..]) {
                            last = Some(i + nl + 1);
                        }
                        break;
                    };
                    if let Some(nl) = memchr::memrchr(b'\n', &buf[i..at]) {
                        last = Some(i + nl + 1);
                    }
                    let prev = if at == 0 { self.prev } else { buf[at - 1] };
                    // Anywhere else in a field a quote is data.
                    if prev == self.delimiter || prev == b'\n' || prev == b'\r' {
                        self.state = Quoting::Quoted;
                    }
                    i = at + 1;
                }
                Quoting::Quoted => {
                    let Some(at) = memchr::memchr(q, &buf[i..]).map(|p| i + p) else { break };
                    i = match buf.get(at + 1) {
                        None => {
                            self.state = Quoting::QuotedAtQuote;
                            at + 1
                        }
                        // `""`: a quote, still inside.
                        Some(&b) if b == q => at + 2,
                        // The byte after the closing quote is read as
                        // outside (it may well end the record).
                        Some(_) => {
                            self.state = Quoting::Outside;
                            at + 1
                        }
                    };
                }
                Quoting::QuotedAtQuote => unreachable!("resolved before the loop"),
            }
        }
        self.prev = buf[buf.len() - 1];
        last
    }
}

/// The end of a segment cut from the start of `buf` (a record start): the
/// last record end within the first `segment_bytes` window that holds one.
fn cut_in(buf: &[u8], segment_bytes: usize, opts: &CsvOptions) -> Option<usize> {
    let mut s = Scanner::new(opts.delimiter, opts.quote);
    let mut from = 0;
    while from < buf.len() {
        let to = (from + segment_bytes.max(1)).min(buf.len());
        if let Some(end) = s.scan(&buf[from..to]) {
            return Some(from + end);
        }
        from = to;
    }
    None
}

/// What a segment decoded to: its units, in order.
struct Decoded {
    units: Vec<Unit>,
    /// Object offset and line where the next segment starts.
    end: (u64, u64),
}

/// The segment has no record end within this many bytes: the source goes
/// back to one decoder, which reads past an over-long record without
/// holding it.
#[derive(Debug)]
pub struct NoBoundary;

/// Settings of the parallel path.
#[derive(Clone, Copy, Debug)]
pub struct Parallelism {
    /// Segments decoded at once.
    pub threads: usize,
    /// Bytes a segment aims for (it ends at the last record end before).
    pub segment_bytes: usize,
}

pub struct Segments {
    operator: Arc<str>,
    object: Arc<str>,
    opts: CsvOptions,
    pos: DecoderPosition,
    par: Parallelism,
    /// Read, not yet in a segment; starts at a record start.
    pending: BytesMut,
    /// Bytes of `pending` scanned so far, and the end of the last record in
    /// them.
    scanned: usize,
    boundary: Option<usize>,
    scanner: Scanner,
    /// Object offset and line where `pending` starts.
    next: (u64, u64),
    in_flight: VecDeque<JoinHandle<Result<Decoded, OperatorError>>>,
    ready: VecDeque<Unit>,
    /// End of the last segment collected.
    tail: (u64, u64),
    /// Object offset and line after the last segment whose outputs were
    /// handed out: where a checkpoint resumes once they are all emitted.
    taken: (u64, u64),
    /// Most bytes `pending` may hold without a record end.
    limit: usize,
}

impl Segments {
    /// Continues an object at `offset`, a record start on line `pos.line`.
    pub fn new(
        operator: &str,
        object: &str,
        opts: CsvOptions,
        pos: DecoderPosition,
        offset: u64,
        par: Parallelism,
    ) -> Self {
        let limit = par.segment_bytes.max(1).saturating_mul(4).max(opts.max_record_bytes.saturating_add(1 << 16));
        Segments {
            operator: operator.into(),
            object: object.into(),
            scanner: Scanner::new(opts.delimiter, opts.quote),
            next: (offset, pos.line),
            taken: (offset, pos.line),
            tail: (offset, pos.line),
            opts,
            pos,
            par,
            pending: BytesMut::new(),
            scanned: 0,
            boundary: None,
            in_flight: VecDeque::new(),
            ready: VecDeque::new(),
            limit,
        }
    }

    /// Rows per batch of segments dispatched from now on.
    pub fn set_batch_size(&mut self, rows: usize) {
        self.opts.batch_size = rows.max(1);
    }

    /// Takes the next bytes of the object; dispatches whole segments.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), NoBoundary> {
        self.pending.extend_from_slice(bytes);
        if let Some(end) = self.scanner.scan(&self.pending[self.scanned..]) {
            self.boundary = Some(self.scanned + end);
        }
        self.scanned = self.pending.len();
        while let Some(b) = self.boundary.filter(|&b| b >= self.par.segment_bytes || self.pending.len() >= self.limit) {
            let cut = self.cut(b);
            self.dispatch_pending(cut);
        }
        if self.pending.len() >= self.limit {
            return Err(NoBoundary);
        }
        Ok(())
    }

    /// Where the next segment ends: the last record end within the first
    /// `segment_bytes` that hold one, so that segments stay about that long
    /// even around records longer than a segment. `b` is a record end.
    fn cut(&self, b: usize) -> usize {
        cut_in(&self.pending[..b], self.par.segment_bytes, &self.opts).unwrap_or(b)
    }

    /// Takes a chunk of a local object read from `at` (`last`: it reaches
    /// the end). With nothing pending, whole segments are cut from the
    /// chunk itself, without copying it, and the bytes after the last
    /// record end are left for the next read; otherwise the chunk joins
    /// what is pending, as [`Segments::push`]. Returns where to read next.
    pub fn push_local(&mut self, chunk: Bytes, at: u64, last: bool) -> Result<u64, NoBoundary> {
        if self.pending.is_empty() {
            debug_assert_eq!(at, self.next.0, "a local read starts where the segments stop");
            let mut from = 0;
            while from < chunk.len() {
                let rest = &chunk[from..];
                let cut = if last && rest.len() <= self.par.segment_bytes {
                    Some(rest.len())
                } else {
                    cut_in(rest, self.par.segment_bytes, &self.opts)
                };
                let Some(cut) = cut else { break };
                self.dispatch(chunk.slice(from..from + cut));
                from += cut;
            }
            if from > 0 {
                return Ok(at + from as u64);
            }
        }
        let before = self.in_flight.len();
        self.push(&chunk)?;
        if self.in_flight.len() > before && !last {
            // A segment left: drop the partial record after it and read it
            // again, so that the next chunk starts a segment.
            self.pending.clear();
            self.scanned = 0;
            self.boundary = None;
            self.scanner = Scanner::new(self.opts.delimiter, self.opts.quote);
            return Ok(self.next.0);
        }
        Ok(at + chunk.len() as u64)
    }

    /// The object ended: what is left is the last segment.
    pub fn finish_input(&mut self) {
        if !self.pending.is_empty() {
            self.dispatch_pending(self.pending.len());
        }
    }

    /// The line where the bytes not yet in a segment start, and those
    /// bytes (for going back to one decoder).
    pub fn undispatched(&self) -> (u64, &[u8]) {
        (self.next.1, &self.pending)
    }

    /// Sends `pending`'s first `cut` bytes to be decoded.
    fn dispatch_pending(&mut self, cut: usize) {
        let seg: Bytes = self.pending.split_to(cut).freeze();
        // The scan state stays valid: it describes the end of `pending`.
        self.scanned -= cut;
        self.boundary = self.boundary.and_then(|b| b.checked_sub(cut)).filter(|&b| b > 0);
        self.dispatch(seg);
    }

    /// Decodes `seg`, the object's bytes from `self.next` on.
    fn dispatch(&mut self, seg: Bytes) {
        let start = self.next;
        let newlines = count_newlines(&seg);
        let end = (start.0 + seg.len() as u64, start.1 + newlines);
        self.next = end;
        let (operator, object, opts) = (self.operator.clone(), self.object.clone(), self.opts.clone());
        let pos = DecoderPosition { line: start.1, ..self.pos.clone() };
        self.in_flight.push_back(tokio::spawn(async move {
            let mut d = CsvDecoder::resume(&operator, &object, opts, &pos)?;
            d.track_units();
            // A segment ends at a record end, so it holds whole characters:
            // one check of all of it spares one per cell.
            d.set_utf8_checked(std::str::from_utf8(&seg).is_ok());
            d.decode_plain(&seg)?;
            d.finish()?;
            let mut units = Vec::new();
            while let Some((rejects, batch, at)) = d.take_unit() {
                // A segment of rejects only announces the schema with an
                // empty batch; the object's first batch already did.
                let batch = batch.filter(|b| b.num_rows() > 0);
                if rejects.is_none() && batch.is_none() {
                    continue;
                }
                let end = at.map_or(end, |(consumed, line)| (start.0 + consumed, line));
                units.push(Unit { rejects, batch, end });
            }
            Ok(Decoded { units, end })
        }));
    }

    /// True when no more segments should be started before one is taken.
    /// A read is only made while fewer than one per thread are in flight,
    /// and a chunk makes at most `CHUNK / segment_bytes` segments (two by
    /// default): what decoding holds ahead of the consumers stays within a
    /// few segments' batches.
    pub fn is_full(&self) -> bool {
        self.in_flight.len() >= self.par.threads
    }

    pub fn in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// The oldest segment finished decoding.
    pub fn front_done(&self) -> bool {
        self.in_flight.front().is_some_and(JoinHandle::is_finished)
    }

    /// Waits for the oldest segment and queues its units; false when none
    /// was in flight.
    pub async fn collect(&mut self) -> Result<bool, OperatorError> {
        let Some(h) = self.in_flight.pop_front() else { return Ok(false) };
        let d = h.await.map_err(|e| OperatorError::Data(format!("decoding a segment of {}: {e}", self.object)))??;
        self.ready.extend(d.units);
        // Nothing of the segment to emit past its last unit (blank lines).
        self.tail = d.end;
        if self.ready.is_empty() {
            self.taken = self.tail;
        }
        Ok(true)
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The next unit to emit (rejects, then the batch): once it is, a
    /// checkpoint may record [`Segments::position`].
    pub fn take_unit(&mut self) -> Option<Unit> {
        let u = self.ready.pop_front()?;
        self.taken = if self.ready.is_empty() { self.tail.max(u.end) } else { u.end };
        Some(u)
    }

    /// Where a checkpoint resumes, given that every unit taken so far is
    /// emitted: an object offset and the decoder position there.
    pub fn position(&self) -> (u64, DecoderPosition) {
        (self.taken.0, DecoderPosition { line: self.taken.1, ..self.pos.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every record end, as a slow reference: csv-core's own reader.
    fn record_ends(input: &[u8]) -> Vec<usize> {
        let mut r = csv_core::ReaderBuilder::new().build();
        let (mut out, mut ends) = (vec![0u8; 1 << 16], vec![0usize; 256]);
        let (mut at, mut found) = (0, Vec::new());
        loop {
            let (res, nin, _, _) = r.read_record(&input[at..], &mut out, &mut ends);
            at += nin;
            match res {
                csv_core::ReadRecordResult::Record => found.push(at),
                csv_core::ReadRecordResult::End => return found,
                csv_core::ReadRecordResult::InputEmpty if at == input.len() => {
                    let (res, _, _, _) = r.read_record(&[], &mut out, &mut ends);
                    if res == csv_core::ReadRecordResult::Record {
                        found.push(at);
                    }
                    return found;
                }
                _ => {}
            }
        }
    }

    /// Offsets just past a `\n` where csv-core stands between records (it
    /// would start a new record at the next byte): where a segment may begin.
    fn record_starts_after_newlines(input: &[u8], delimiter: u8) -> Vec<usize> {
        let mut r = csv_core::ReaderBuilder::new().delimiter(delimiter).build();
        let (mut out, mut ends) = (vec![0u8; 1 << 16], vec![0usize; 256]);
        let (mut last_end, mut valid) = (0, Vec::new());
        for p in 0..input.len() {
            let mut byte = &input[p..=p];
            while !byte.is_empty() {
                let (res, nin, _, _) = r.read_record(byte, &mut out, &mut ends);
                byte = &byte[nin..];
                if res == csv_core::ReadRecordResult::Record {
                    last_end = p + 1 - byte.len();
                }
            }
            if input[p] == b'\n' && input[last_end..=p].iter().all(|&b| b == b'\n' || b == b'\r') {
                valid.push(p + 1);
            }
        }
        valid
    }

    proptest::proptest! {
        #[test]
        fn the_scan_finds_exactly_the_record_starts_csv_core_sees(
            input in proptest::collection::vec(proptest::sample::select(b"ab,;\"\n\r".to_vec()), 0..200),
            chunk in 1usize..40,
            semicolon in proptest::bool::ANY,
        ) {
            let delimiter = if semicolon { b';' } else { b',' };
            let valid = record_starts_after_newlines(&input, delimiter);
            let mut s = Scanner::new(delimiter, b'"');
            let mut last = None;
            for (i, c) in input.chunks(chunk).enumerate() {
                if let Some(b) = s.scan(c) {
                    proptest::prop_assert!(valid.contains(&(i * chunk + b)), "{} not in {:?}", i * chunk + b, valid);
                    last = Some(i * chunk + b);
                }
            }
            proptest::prop_assert_eq!(last, valid.last().copied());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segments_keep_lines_and_order() {
        use crate::sources::csv::{ColumnDecl, ColumnType};
        let opts = CsvOptions {
            header: true,
            delimiter: b',',
            quote: b'"',
            schema: Some(vec![
                ColumnDecl { name: "a".into(), ty: ColumnType::Int64 },
                ColumnDecl { name: "b".into(), ty: ColumnType::String },
            ]),
            infer_rows: 0,
            batch_size: 3,
            max_record_bytes: 1 << 20,
        };
        let mut body = Vec::new();
        for i in 0..200 {
            // Every tenth row is a reject; every seventh has a quoted newline.
            let b = if i % 7 == 0 { "\"x\ny\"".to_string() } else { format!("r{i}") };
            let a = if i % 10 == 0 { "bad".to_string() } else { i.to_string() };
            body.extend_from_slice(format!("{a},{b}\n").as_bytes());
        }
        let pos = DecoderPosition {
            line: 2,
            header: Some(vec!["a".into(), "b".into()]),
            types: vec![ColumnType::Int64, ColumnType::String],
        };
        let mut seg = Segments::new("op", "obj", opts, pos, 100, Parallelism { threads: 2, segment_bytes: 50 });
        let (mut lines, mut reject_lines, mut n) = (Vec::new(), Vec::new(), 0);
        for c in body.chunks(64) {
            seg.push(c).unwrap();
            n += seg.in_flight.len();
            while seg.front_done() || seg.is_full() {
                seg.collect().await.unwrap();
            }
        }
        seg.finish_input();
        while seg.collect().await.unwrap() {}
        assert!(n > 20, "many segments: {n}");
        let mut last_end = 0;
        while let Some(u) = seg.take_unit() {
            if let Some(b) = u.batch {
                lines.extend((0..b.num_rows()).map(|i| b.line(i).unwrap()));
            }
            if let Some(r) = u.rejects {
                reject_lines.extend((0..r.num_rows()).map(|i| r.line(i).unwrap()));
            }
            // A unit ends after its last row, on the line after it.
            assert!(u.end.0 > last_end, "units end further and further");
            let last = lines.last().copied().unwrap_or(0).max(reject_lines.last().copied().unwrap_or(0));
            assert!(u.end.1 > last, "unit ends on line {} after line {last}", u.end.1);
            last_end = u.end.0;
        }
        reject_lines.sort_unstable();
        // Line of row i: 2 + i + the quoted newlines before it.
        let line_of = |i: u64| 2 + i + (0..i).filter(|j| j % 7 == 0).count() as u64;
        let want: Vec<u64> = (0..200).filter(|i| i % 10 != 0).map(line_of).collect();
        assert_eq!(lines, want);
        assert_eq!(reject_lines, (0..200).filter(|i| i % 10 == 0).map(line_of).collect::<Vec<_>>());
        assert_eq!(seg.position().0, 100 + body.len() as u64);
        assert_eq!(seg.position().1.line, line_of(200));
    }

    #[test]
    fn boundaries_are_record_ends_whatever_the_chunking() {
        let input: &[u8] = b"a,b\n\"x\ny\",1\n\"q\"\"\n\",2\r\nab\"c,3\n\n\"\",\"\"\"\"\n\"un\nterminated";
        let ends = record_ends(input);
        for chunk in 1..input.len() {
            let mut s = Scanner::new(b',', b'"');
            let mut found = Vec::new();
            for (i, c) in input.chunks(chunk).enumerate() {
                if let Some(b) = s.scan(c) {
                    found.push(i * chunk + b);
                }
            }
            // Each boundary the scan reports ends a record (after its \n).
            for b in &found {
                assert_eq!(input[b - 1], b'\n', "chunk {chunk}: {b}");
                assert!(
                    ends.iter().any(|&e| e == *b || e + 1 == *b),
                    "chunk {chunk}: {b} is not a record end: {ends:?}"
                );
            }
            // The last one is the last \n outside quotes: after `,3`'s line
            // and the blank line, before the unterminated quote.
            let last_nl = input.len() - b"\"un\nterminated".len();
            assert_eq!(found.last(), Some(&last_nl), "chunk {chunk}");
        }
    }
}
