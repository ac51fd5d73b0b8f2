//! The field-table nesting check: how deeply a frame's field tables and arrays nest, measured
//! on its bytes before amq-protocol parses it.
//!
//! amq-protocol's parser recurses once per nested table or array and puts no limit on the
//! depth, so [`check_nesting`] walks the one field table a method or content header can carry
//! with an explicit stack and refuses anything deeper than [`MAX_NESTING`];
//! [`FrameReader`](super::codec::FrameReader) calls it on every method and content header
//! frame before parsing. Also here: `nested_table`, the raw-bytes builder of deep tables the
//! unit tests and the property tests use.

use amq_protocol::protocol::constants;

use super::codec::{FRAME_OVERHEAD, HEADER_LEN};

/// The deepest nesting of field tables and arrays accepted in a frame; a flat table is 1.
///
/// amq-protocol's parser, and the derived `Clone`, `Debug`, `PartialEq` and `Drop` of what it
/// returns, recurse once per level; a deeper frame could overflow a stack (an abort, not an
/// error), so [`check_nesting`] refuses it before it is parsed.
///
/// Why 32: frames are parsed on whichever thread holds the read token, the I/O thread (8 MiB
/// stack) or, on plain TCP, a user thread waiting for a reply or a delivery, whose stack is
/// 2 MiB for a spawned thread by default and may be less. In a debug build the parser takes
/// about 10 to 11 KiB of stack a level (the derived impls less), so 32 levels need some
/// 350 KiB: far inside any reasonable stack. Real headers nest 2 to 4 levels (`x-death` is an
/// array of tables).
pub(crate) const MAX_NESTING: usize = 32;

/// One field of a method that comes before its field table.
#[derive(Clone, Copy)]
enum Field {
    /// A fixed number of bytes: octets, shorts, and packed bits (one octet for up to 8).
    Fixed(usize),
    /// A short string: one length octet, then that many bytes.
    ShortStr,
}

/// The fields before the field table of each method that carries one (the table comes after
/// them, and no method carries two), as amq-protocol 10.6 parses them.
fn fields_before_table(class_id: u16, method_id: u16) -> Option<&'static [Field]> {
    use Field::{Fixed, ShortStr};
    Some(match (class_id, method_id) {
        // connection.start: version-major, version-minor, server-properties.
        (10, 10) => &[Fixed(2)],
        // connection.start-ok: client-properties first.
        (10, 11) => &[],
        // exchange.declare: reserved short, exchange, type, 5 bits, arguments.
        (40, 10) => &[Fixed(2), ShortStr, ShortStr, Fixed(1)],
        // exchange.bind / exchange.unbind: reserved short, destination, source, routing-key,
        // no-wait bit, arguments.
        (40, 30) | (40, 40) => &[Fixed(2), ShortStr, ShortStr, ShortStr, Fixed(1)],
        // queue.declare: reserved short, queue, 5 bits, arguments.
        (50, 10) => &[Fixed(2), ShortStr, Fixed(1)],
        // queue.bind: reserved short, queue, exchange, routing-key, no-wait bit, arguments.
        (50, 20) => &[Fixed(2), ShortStr, ShortStr, ShortStr, Fixed(1)],
        // queue.unbind: reserved short, queue, exchange, routing-key, arguments (no bits).
        (50, 50) => &[Fixed(2), ShortStr, ShortStr, ShortStr],
        // basic.consume: reserved short, queue, consumer-tag, 4 bits, arguments.
        (60, 20) => &[Fixed(2), ShortStr, ShortStr, Fixed(1)],
        _ => return None,
    })
}

/// Content header property flags (the basic class's, which amq-protocol parses for every
/// class): the two short strings before `headers`, and `headers` itself. The properties after
/// `headers` hold no table, so the walk stops there.
const CONTENT_TYPE_FLAG: u16 = 1 << 15;
const CONTENT_ENCODING_FLAG: u16 = 1 << 14;
const HEADERS_FLAG: u16 = 1 << 13;

/// Refuses a frame (the whole frame, header and frame-end included) whose field tables and
/// arrays nest deeper than [`MAX_NESTING`], without parsing it and without recursion.
///
/// Walks the payload only as far as the one field table a method or content header can carry
/// (`server_properties` of connection.start, the `arguments` of declare, bind and consume
/// methods, the `headers` property), then walks the table's encoding with a fixed stack of the
/// end offsets of the tables and arrays it is inside: work bounded by the frame's length,
/// memory by [`MAX_NESTING`]. Bytes inside strings are skipped by their length, never read as
/// type tags. Any encoding error met on the way (a length past its enclosing table, an unknown
/// type tag) is refused too: amq-protocol's parser would fail on the same bytes.
pub(crate) fn check_nesting(frame: &[u8]) -> std::result::Result<(), String> {
    if frame.len() < FRAME_OVERHEAD {
        return Ok(());
    }
    let payload = Cursor {
        bytes: &frame[HEADER_LEN..frame.len() - 1],
        pos: 0,
    };
    let table = match frame[0] {
        constants::FRAME_METHOD => method_table(payload)?,
        constants::FRAME_HEADER => header_table(payload)?,
        _ => None,
    };
    match table {
        Some(cursor) => check_table_nesting(cursor),
        None => Ok(()),
    }
}

/// A method payload positioned at its field table, `None` for a method without one.
fn method_table(mut c: Cursor<'_>) -> std::result::Result<Option<Cursor<'_>>, String> {
    let class_id = c.short()?;
    let method_id = c.short()?;
    let Some(fields) = fields_before_table(class_id, method_id) else {
        return Ok(None);
    };
    for field in fields {
        match field {
            Field::Fixed(n) => c.skip(*n)?,
            Field::ShortStr => c.short_str()?,
        }
    }
    Ok(Some(c))
}

/// A content header payload positioned at its `headers` table, `None` when the property
/// flags leave it out.
fn header_table(mut c: Cursor<'_>) -> std::result::Result<Option<Cursor<'_>>, String> {
    // class-id, weight, body-size.
    c.skip(2 + 2 + 8)?;
    let flags = c.short()?;
    if flags & HEADERS_FLAG == 0 {
        return Ok(None);
    }
    if flags & CONTENT_TYPE_FLAG != 0 {
        c.short_str()?;
    }
    if flags & CONTENT_ENCODING_FLAG != 0 {
        c.short_str()?;
    }
    Ok(Some(c))
}

/// Walks the field table at `c`: every entry's short-string key and typed value, descending
/// into nested tables (`F`) and arrays (`A`) by their byte lengths, with an explicit stack.
fn check_table_nesting(mut c: Cursor<'_>) -> std::result::Result<(), String> {
    /// A table or array being walked: where it ends, and whether its entries have keys.
    #[derive(Clone, Copy)]
    struct Level {
        end: usize,
        keyed: bool,
    }
    let mut stack = [Level {
        end: 0,
        keyed: false,
    }; MAX_NESTING];
    let len = c.long()? as usize;
    stack[0] = Level {
        end: c.end_of(len)?,
        keyed: true,
    };
    let mut depth = 1;
    loop {
        let level = stack[depth - 1];
        if c.pos == level.end {
            depth -= 1;
            if depth == 0 {
                return Ok(());
            }
            continue;
        }
        // Every read below stays inside the innermost table or array, as amq-protocol's
        // parser does: it parses each one from a slice of exactly its byte length.
        let mut entry = Cursor {
            bytes: &c.bytes[..level.end],
            pos: c.pos,
        };
        if level.keyed {
            entry.short_str()?;
        }
        let tag = entry.octet()?;
        match tag {
            b'V' => {}
            b't' | b'b' | b'B' => entry.skip(1)?,
            b's' | b'U' | b'u' => entry.skip(2)?,
            b'I' | b'i' | b'f' => entry.skip(4)?,
            b'D' => entry.skip(1 + 4)?,
            b'l' | b'L' | b'd' | b'T' => entry.skip(8)?,
            b'S' | b'x' => {
                let len = entry.long()? as usize;
                entry.skip(len)?;
            }
            b'F' | b'A' => {
                let len = entry.long()? as usize;
                let end = entry.end_of(len)?;
                if depth == MAX_NESTING {
                    return Err(format!(
                        "field tables and arrays nested more than {MAX_NESTING} levels deep"
                    ));
                }
                stack[depth] = Level {
                    end,
                    keyed: tag == b'F',
                };
                depth += 1;
            }
            other => {
                return Err(format!(
                    "unknown field value type {:?} ({other:#04x})",
                    other as char
                ))
            }
        }
        c.pos = entry.pos;
    }
}

/// A read position in a frame payload; every read is checked against the end of `bytes`.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    /// Moves past `n` bytes.
    fn skip(&mut self, n: usize) -> std::result::Result<(), String> {
        self.pos = self.end_of(n)?;
        Ok(())
    }

    /// The offset `n` bytes on, if that is still inside `bytes`.
    fn end_of(&self, n: usize) -> std::result::Result<usize, String> {
        if n > self.bytes.len() - self.pos {
            return Err(format!(
                "a field of {n} bytes runs past its table or frame ({} bytes left)",
                self.bytes.len() - self.pos
            ));
        }
        Ok(self.pos + n)
    }

    /// Takes `N` bytes.
    fn take<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let start = self.pos;
        self.skip(N)?;
        let mut out = [0; N];
        out.copy_from_slice(&self.bytes[start..self.pos]);
        Ok(out)
    }

    /// Takes one octet.
    fn octet(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take::<1>()?[0])
    }

    /// Takes a big-endian short.
    fn short(&mut self) -> std::result::Result<u16, String> {
        Ok(u16::from_be_bytes(self.take()?))
    }

    /// Takes a big-endian long (a length, here).
    fn long(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_be_bytes(self.take()?))
    }

    /// Moves past a short string (length octet and bytes).
    fn short_str(&mut self) -> std::result::Result<(), String> {
        let len = self.octet()? as usize;
        self.skip(len)
    }
}

/// The encoding of a field table (length included) nested `kinds.len() + 1` levels deep, for
/// tests: the top table holds one entry, keyed `k`, whose value is the next level, a table
/// (`true`) or an array (`false`) as `kinds` says, and so on; the innermost is empty. Built
/// as raw bytes without recursion, so any depth can be built (and none is ever parsed or
/// dropped as a deep value).
#[cfg(test)]
pub(crate) fn nested_table(kinds: &[bool]) -> Vec<u8> {
    // Level 0 is the top table; level i > 0 has kind kinds[i - 1].
    let keyed = |level: usize| level == 0 || kinds[level - 1];
    // sizes[i]: the length of level i's contents.
    let mut sizes = vec![0u32; kinds.len() + 1];
    for level in (0..kinds.len()).rev() {
        let key = if keyed(level) { 2 } else { 0 };
        sizes[level] = key + 1 + 4 + sizes[level + 1];
    }
    let mut out = Vec::with_capacity(4 + sizes[0] as usize);
    out.extend_from_slice(&sizes[0].to_be_bytes());
    for (level, &kind) in kinds.iter().enumerate() {
        if keyed(level) {
            out.extend_from_slice(&[1, b'k']);
        }
        out.push(if kind { b'F' } else { b'A' });
        out.extend_from_slice(&sizes[level + 1].to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Result, FRAME_ERROR};
    use crate::protocol::codec::{encode_content_header, encode_method, FrameReader, Inbound};
    use amq_protocol::frame::{parse_frame, AMQPFrame};
    use amq_protocol::protocol::{basic, AMQPClass};
    use amq_protocol::types::{AMQPValue, FieldTable};

    /// Runs `f` on a thread with a stack of `bytes`, passing on its panic.
    fn on_stack<T: Send + 'static>(bytes: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(bytes)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// A field table nested `depth` levels deep (see [`nested_table`]); with `alternate`,
    /// the even levels are arrays (tables in arrays in tables...).
    fn nested(depth: usize, alternate: bool) -> Vec<u8> {
        let kinds: Vec<bool> = (2..=depth)
            .map(|level| !alternate || level % 2 == 1)
            .collect();
        nested_table(&kinds)
    }

    /// A whole frame of `frame_type` on channel 1 around `payload`.
    fn raw_frame(frame_type: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![frame_type, 0, 1];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(constants::FRAME_END);
        frame
    }

    /// A content header frame (basic class, empty body) whose only property is the `headers`
    /// table encoded as `table`.
    fn header_frame(table: &[u8]) -> Vec<u8> {
        let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        payload.extend_from_slice(&HEADERS_FLAG.to_be_bytes());
        payload.extend_from_slice(table);
        raw_frame(constants::FRAME_HEADER, &payload)
    }

    /// What the reader makes of `frame`, read whole, with a `frame_max` it fits in.
    fn read_one(frame: &[u8]) -> Result<Option<Inbound>> {
        let mut reader = FrameReader::new(frame.len().max(131_072) as u32);
        let mut input = frame;
        while !input.is_empty() {
            reader.read_from(&mut input).unwrap();
        }
        reader.next_frame()
    }

    /// How deeply the `k` chain built by [`nested_table`] nests in `table` (1 for a flat
    /// table), walked without recursion.
    fn chain_depth(table: &FieldTable) -> usize {
        let mut depth = 1;
        let mut value = table.inner().get("k");
        while let Some(v) = value {
            depth += 1;
            value = match v {
                AMQPValue::FieldTable(t) => t.inner().get("k"),
                AMQPValue::FieldArray(a) => a.as_slice().first(),
                _ => panic!("not a nested table or array: {v:?}"),
            };
        }
        depth
    }

    /// Headers holding a 300-byte value of only `A` and `F` (what uppercase hex or base64 can
    /// look like): more of those bytes than [`MAX_NESTING`], in a flat table.
    fn af_properties() -> crate::protocol::properties::BasicProperties {
        crate::protocol::properties::BasicProperties::default()
            .with_content_type("text/plain")
            .with_header("x-hex", "AF".repeat(150))
            .with_delivery_mode(2)
    }

    /// Parses the header frame of [`af_properties`] and checks it came back intact.
    fn af_header_parses_back() {
        let props = af_properties();
        let mut frame = Vec::new();
        encode_content_header(&mut frame, 4, 11, &props).unwrap();
        let tags = frame.iter().filter(|&&b| b == b'A' || b == b'F').count();
        assert!(tags > MAX_NESTING, "only {tags} A/F bytes");
        match read_one(&frame) {
            Ok(Some(Inbound::Frame(frame))) => match *frame {
                AMQPFrame::Header(4, header) => {
                    assert_eq!(header.body_size, 11);
                    assert_eq!(
                        crate::protocol::properties::from_wire(&header.properties),
                        props
                    );
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_and_f_bytes_inside_strings_parse_inline_and_intact() {
        af_header_parses_back();
        // However many of its bytes look like type tags, a flat table needs little stack.
        on_stack(64 * 1024, af_header_parses_back);
    }

    /// Where no thread with a large stack can be started (here: a child process limited to
    /// 512 MiB of address space by `sh`'s `ulimit -v`), a header full of `A` and `F` bytes
    /// still parses: nothing is handed to a thread of its own.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_and_f_bytes_inside_strings_parse_where_no_big_thread_can_start() {
        const CHILD: &str = "COTTONTAIL_TEST_ADDRESS_SPACE_LIMITED";
        if std::env::var_os(CHILD).is_some() {
            let big = std::thread::Builder::new().stack_size(1 << 30).spawn(|| {});
            assert!(
                big.is_err(),
                "the limit should keep a thread with a 1 GiB stack from starting"
            );
            af_header_parses_back();
            return;
        }
        let module = module_path!().split_once("::").unwrap().1;
        let name =
            format!("{module}::a_and_f_bytes_inside_strings_parse_where_no_big_thread_can_start");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -v 524288 && exec "$0" "$@""#)
            .arg(std::env::current_exe().unwrap())
            .args([name.as_str(), "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .expect("running the test binary under sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child run failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
    }

    #[test]
    fn nesting_of_32_levels_parses_on_a_user_threads_stack() {
        for alternate in [false, true] {
            let frame = header_frame(&nested(32, alternate));
            assert_eq!(check_nesting(&frame), Ok(()));
            // amq-protocol's parser recurses per level (some 350 KiB for 32 levels in a debug
            // build): parse, clone, format, compare and drop on a stack the size of a spawned
            // thread's default, as a user thread holding the read token would.
            let depth = on_stack(2 << 20, move || match read_one(&frame) {
                Ok(Some(Inbound::Frame(frame))) => match *frame {
                    AMQPFrame::Header(1, h) => {
                        let copy = h.clone();
                        assert!(!format!("{copy:?}").is_empty());
                        assert_eq!(copy, h);
                        drop(copy);
                        chain_depth(h.properties.headers().as_ref().unwrap())
                    }
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            });
            assert_eq!(depth, 32, "alternate: {alternate}");
        }
    }

    #[test]
    fn deeper_nesting_is_refused_unparsed_on_a_small_stack() {
        on_stack(256 * 1024, || {
            for depth in [33, 100_000] {
                for alternate in [false, true] {
                    let frame = header_frame(&nested(depth, alternate));
                    let err = read_one(&frame).unwrap_err();
                    assert_eq!(err.reply_code(), Some(FRAME_ERROR), "{err}");
                    assert!(err.to_string().contains("nested"), "{err}");
                }
            }
        });
    }

    #[test]
    fn arrays_in_tables_and_tables_in_arrays_count() {
        // Table, array, table, ...: each level counts, whichever kind it is.
        assert_eq!(
            check_nesting(&header_frame(&nested(MAX_NESTING, true))),
            Ok(())
        );
        let err = read_one(&header_frame(&nested(MAX_NESTING + 1, true))).unwrap_err();
        assert_eq!(err.reply_code(), Some(FRAME_ERROR), "{err}");
        // A flat table whose one entry is an array of MAX_NESTING - 1 nested arrays.
        let mut arrays = Vec::new();
        let inner = 5 * (MAX_NESTING as u32 - 1);
        arrays.extend_from_slice(&(2 + inner).to_be_bytes());
        arrays.extend_from_slice(&[1, b'k']);
        for level in 1..MAX_NESTING as u32 {
            arrays.push(b'A');
            arrays.extend_from_slice(&(inner - 5 * level).to_be_bytes());
        }
        assert_eq!(check_nesting(&header_frame(&arrays)), Ok(()));
        // The same, plus a table (with one entry) inside the innermost array: one too many.
        let mut deeper = Vec::new();
        let extra = 1 + 4 + 3;
        deeper.extend_from_slice(&(2 + inner + extra).to_be_bytes());
        deeper.extend_from_slice(&[1, b'k']);
        for level in 1..MAX_NESTING as u32 {
            deeper.push(b'A');
            deeper.extend_from_slice(&(inner - 5 * level + extra).to_be_bytes());
        }
        deeper.extend_from_slice(&[b'F', 0, 0, 0, 3, 1, b'v', b'V']);
        let err = check_nesting(&header_frame(&deeper)).unwrap_err();
        assert!(err.contains("nested"), "{err}");
    }

    #[test]
    fn every_method_that_carries_a_table_is_checked() {
        use amq_protocol::protocol::{connection, exchange, queue};
        // A table no other field encodes to: found in each encoding and swapped for a deep one.
        let marker_value = "MARKER-0123";
        let mut marker = FieldTable::default();
        marker.insert("m".into(), AMQPValue::LongString(marker_value.into()));
        let mut marker_bytes = vec![0, 0, 0, 18, 1, b'm', b'S', 0, 0, 0, 11];
        marker_bytes.extend_from_slice(marker_value.as_bytes());
        let methods = [
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                server_properties: marker.clone(),
                mechanisms: "PLAIN".into(),
                locales: "en_US".into(),
                ..Default::default()
            })),
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: marker.clone(),
                mechanism: "PLAIN".into(),
                ..Default::default()
            })),
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: "e".into(),
                kind: "topic".into(),
                durable: true,
                arguments: marker.clone(),
                ..Default::default()
            })),
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: "d".into(),
                source: "s".into(),
                routing_key: "rk".into(),
                arguments: marker.clone(),
                ..Default::default()
            })),
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
                destination: "d".into(),
                source: "s".into(),
                routing_key: "rk".into(),
                arguments: marker.clone(),
                ..Default::default()
            })),
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "q".into(),
                arguments: marker.clone(),
                ..Default::default()
            })),
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: "q".into(),
                exchange: "e".into(),
                routing_key: "rk".into(),
                arguments: marker.clone(),
                ..Default::default()
            })),
            AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: "q".into(),
                exchange: "e".into(),
                routing_key: "rk".into(),
                arguments: marker.clone(),
            })),
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "q".into(),
                consumer_tag: "ctag".into(),
                no_ack: true,
                arguments: marker.clone(),
                ..Default::default()
            })),
        ];
        for method in methods {
            let mut frame = Vec::new();
            encode_method(&mut frame, 0, method.clone()).unwrap();
            assert_eq!(check_nesting(&frame), Ok(()), "{method:?}");
            let at = frame
                .windows(marker_bytes.len())
                .position(|w| w == marker_bytes)
                .unwrap();
            for (depth, ok) in [(MAX_NESTING, true), (MAX_NESTING + 1, false)] {
                let mut deep = frame[..at].to_vec();
                deep.extend_from_slice(&nested(depth, true));
                deep.extend_from_slice(&frame[at + marker_bytes.len()..]);
                let size = (deep.len() - FRAME_OVERHEAD) as u32;
                deep[3..7].copy_from_slice(&size.to_be_bytes());
                assert_eq!(check_nesting(&deep).is_ok(), ok, "{method:?} at {depth}");
            }
        }
    }

    #[test]
    fn unknown_value_types_and_overlong_lengths_are_refused() {
        // 'z' is no type amq-protocol knows.
        let frame = header_frame(&[0, 0, 0, 3, 1, b'k', b'z']);
        assert!(check_nesting(&frame).unwrap_err().contains("unknown"));
        assert!(parse_frame(&frame[..]).is_err());
        // A nested table longer than the table holding it.
        let frame = header_frame(&[0, 0, 0, 7, 1, b'k', b'F', 0, 0, 0, 9]);
        assert!(check_nesting(&frame).is_err());
        assert!(parse_frame(&frame[..]).is_err());
        // A long string of u32::MAX bytes.
        let frame = header_frame(&[0, 0, 0, 7, 1, b'k', b'S', 255, 255, 255, 255]);
        assert!(check_nesting(&frame).is_err());
        assert_eq!(
            read_one(&frame).unwrap_err().reply_code(),
            Some(FRAME_ERROR)
        );
    }
}
