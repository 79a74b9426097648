//! A strict JSON scanner that writes a record straight into a [`Builder`].
//!
//! Every record is parsed once, and in Hex's records most of the bytes are
//! strings, the `representation` texts dense with escaped quotes. serde_json
//! unescapes such a string into its scratch buffer and hands it to the
//! builder, which copies it again; this scanner copies each run of plain bytes
//! once, into the document. It accepts only what serde_json accepts and builds
//! the same tree. Whenever it is not sure (anything invalid, a `\u` escape of
//! a surrogate, a float, deep nesting, a repeated key in a strict parse) it
//! gives up and serde_json parses the text instead, so every error message
//! stays serde_json's.

use super::build::{link, Builder};
use super::{Slot, Span};

/// Nesting deeper than this is left to serde_json (which stops at 128).
const MAX_DEPTH: u32 = 100;

/// Builds the value `json` holds into `b`; `None` leaves the text to serde_json.
pub(super) fn scan(json: &str, b: &mut Builder) -> Option<()> {
    let mut s = Scanner {
        text: json,
        bytes: json.as_bytes(),
        i: 0,
        depth: 0,
        out: b,
    };
    s.value()?;
    s.space();
    (s.i == s.bytes.len()).then_some(())
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    i: usize,
    depth: u32,
    out: &'a mut Builder,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.i).copied()
    }

    fn space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn value(&mut self) -> Option<()> {
        self.space();
        let slot = match self.peek()? {
            b'{' => return self.object(),
            b'[' => return self.array(),
            b'"' => {
                self.i += 1;
                Slot::Str(self.string()?)
            }
            b't' => self.word("true", Slot::Bool(true))?,
            b'f' => self.word("false", Slot::Bool(false))?,
            b'n' => self.word("null", Slot::Null)?,
            b'-' | b'0'..=b'9' => self.number()?,
            _ => return None,
        };
        self.out.push(slot);
        Some(())
    }

    fn word(&mut self, word: &str, slot: Slot) -> Option<Slot> {
        self.bytes[self.i..].starts_with(word.as_bytes()).then(|| {
            self.i += word.len();
            slot
        })
    }

    fn enter(&mut self) -> Option<u32> {
        self.depth += 1;
        self.i += 1;
        (self.depth <= MAX_DEPTH).then(|| self.out.push(Slot::Null))
    }

    fn object(&mut self) -> Option<()> {
        let at = self.enter()?;
        let mut len = 0;
        let mut seen = super::keys::KeysSeen::default();
        self.space();
        if self.peek() == Some(b'}') {
            self.i += 1;
        } else {
            loop {
                self.space();
                if self.peek()? != b'"' {
                    return None;
                }
                self.i += 1;
                let span = self.string()?;
                let key = self.out.push(Slot::Key { span, next: 0 });
                if self.out.add_key(at, key, &mut seen).ok()? {
                    len += 1;
                }
                self.space();
                if self.peek()? != b':' {
                    return None;
                }
                self.i += 1;
                self.value()?;
                link(&mut self.out.slots, key);
                if !self.more(b'}')? {
                    break;
                }
            }
        }
        let end = self.leave();
        self.out.slots[at as usize] = Slot::Obj { len, end };
        Some(())
    }

    fn array(&mut self) -> Option<()> {
        let at = self.enter()?;
        let mut len = 0;
        self.space();
        if self.peek() == Some(b']') {
            self.i += 1;
        } else {
            loop {
                self.value()?;
                len += 1;
                if !self.more(b']')? {
                    break;
                }
            }
        }
        let end = self.leave();
        self.out.slots[at as usize] = Slot::Arr { len, end };
        Some(())
    }

    /// After a member: true at a comma, false at the closing `close`.
    fn more(&mut self, close: u8) -> Option<bool> {
        self.space();
        let c = self.peek()?;
        self.i += 1;
        match c {
            b',' => Some(true),
            _ if c == close => Some(false),
            _ => None,
        }
    }

    /// Leaves a container: the slot after its contents.
    fn leave(&mut self) -> u32 {
        self.depth -= 1;
        self.out.slots.len() as u32
    }

    /// The string whose opening quote was just passed, unescaped into the
    /// document's text.
    ///
    /// Its runs of plain bytes are copied sixteen bytes at a time while they
    /// are searched: each sixteen are stored whole in the text's room, and
    /// the text's end moves to just before the byte that ends the run. A Hex
    /// record's runs are short (its representations hold dozens of escaped
    /// quotes), so this costs one store where a copy per run cost a call.
    /// Runs start and end at ASCII bytes, so the text stays UTF-8.
    fn string(&mut self) -> Option<Span> {
        let bytes = self.bytes;
        let mut j = self.i;
        // Unescaped, the rest of the input is no longer than it is now.
        self.out.room(bytes.len() - j + 16);
        let start = self.out.used;
        let mut w = start;
        let text = &mut self.out.text[..];
        let end = loop {
            let run = match bytes.get(j..j + 16) {
                Some(chunk) => {
                    let chunk: &[u8; 16] = chunk.try_into().expect("sixteen bytes");
                    text[w..w + 16].copy_from_slice(chunk);
                    match first_special(chunk) {
                        Some(run) => run,
                        None => {
                            w += 16;
                            j += 16;
                            continue;
                        }
                    }
                }
                None => {
                    let run = plain_run(&bytes[j..]);
                    text[w..w + run].copy_from_slice(&bytes[j..j + run]);
                    run
                }
            };
            w += run;
            j += run;
            match bytes.get(j) {
                Some(b'"') => break Some(j + 1),
                Some(b'\\') => match bytes.get(j + 1) {
                    // An escaped quote, backslash or slash is the character
                    // after the backslash (representations hold dozens).
                    Some(&c @ (b'"' | b'\\' | b'/')) => {
                        text[w] = c;
                        w += 1;
                        j += 2;
                    }
                    Some(_) => match escape(bytes, j + 1) {
                        Some((c, n)) => {
                            w += c.encode_utf8(&mut text[w..]).len();
                            j += 1 + n;
                        }
                        None => break None,
                    },
                    None => break None,
                },
                _ => break None, // a control character, or no closing quote
            }
        };
        self.out.used = w;
        self.i = end?;
        Some(Span {
            start: start as u32,
            len: (w - start) as u32,
        })
    }

    /// A number, as serde_json reads it: an integer that fits is an `Int`, a
    /// larger one or a fraction a `Float`.
    fn number(&mut self) -> Option<Slot> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.i += 1;
            integer = false;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.some_digits()?;
        }
        self.out.numbers += 1;
        if self.out.numbers == 1 {
            self.out.sole_number = Some(start..self.i);
        }
        let text = &self.text[start..self.i];
        if !integer {
            // Floats are rare in records; serde_json rounds them its own way.
            return serde_json::from_str::<f64>(text).ok().map(Slot::Float);
        }
        match text.parse::<i64>() {
            // serde_json reads "-0" as the float -0.0.
            Ok(0) if text.starts_with('-') => Some(Slot::Float(-0.0)),
            Ok(n) => Some(Slot::Int(n)),
            Err(_) => serde_json::from_str::<f64>(text).ok().map(Slot::Float),
        }
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let from = self.i;
        self.digits();
        (self.i > from).then_some(())
    }
}

/// Where the first quote, backslash or control character of `chunk` is:
/// SSE2 (part of every x86-64) compares all sixteen bytes at once.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
fn first_special(chunk: &[u8; 16]) -> Option<usize> {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        _mm_set_epi64x,
    };
    let (low, high) = chunk.split_at(8);
    let low = i64::from_le_bytes(low.try_into().expect("eight bytes"));
    let high = i64::from_le_bytes(high.try_into().expect("eight bytes"));
    // SAFETY: these intrinsics need only SSE2, which this build's target has
    // (the `cfg` above), and touch nothing but their arguments.
    let found = unsafe {
        let v = _mm_set_epi64x(high, low);
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Below 0x20 (unsigned) is where the minimum with 0x1f is the byte itself.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control))
    };
    (found != 0).then(|| found.trailing_zeros() as usize)
}

/// Where the first quote, backslash or control character of `chunk` is,
/// eight bytes at a time.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
fn first_special(chunk: &[u8; 16]) -> Option<usize> {
    first_special_by_words(chunk)
}

#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "sse2"))))]
fn first_special_by_words(chunk: &[u8; 16]) -> Option<usize> {
    let (low, high) = chunk.split_at(8);
    let low = specials(u64::from_le_bytes(low.try_into().expect("eight bytes")));
    let high = specials(u64::from_le_bytes(high.try_into().expect("eight bytes")));
    match (low, high) {
        (0, 0) => None,
        (0, _) => Some(8 + (high.trailing_zeros() / 8) as usize),
        _ => Some((low.trailing_zeros() / 8) as usize),
    }
}

/// The character of the escape whose letter is at `at`, and the escape's
/// length. (An escaped quote, backslash or slash never comes here:
/// [`Scanner::string`] copies it itself.)
fn escape(bytes: &[u8], at: usize) -> Option<(char, usize)> {
    let c = match bytes.get(at)? {
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let unit = hex4(bytes, at + 1)?;
            return match unit {
                0xD800..=0xDBFF => {
                    // Only a whole surrogate pair is taken here.
                    if bytes.get(at + 5..at + 7)? != b"\\u" {
                        return None;
                    }
                    let low = hex4(bytes, at + 7)?;
                    if !(0xDC00..=0xDFFF).contains(&low) {
                        return None;
                    }
                    let c = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                    Some((char::from_u32(c)?, 11))
                }
                0xDC00..=0xDFFF => None,
                _ => Some((char::from_u32(unit)?, 5)),
            };
        }
        _ => return None,
    };
    Some((c, 1))
}

fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    digits
        .iter()
        .try_fold(0u32, |n, &d| Some(n * 16 + (d as char).to_digit(16)?))
}

/// The bytes of `x` (eight, little-endian) that end a plain run: a quote, a
/// backslash or a control character. The lowest flagged byte is exact;
/// bytes above it may be flagged wrongly (borrows), so only it counts.
fn specials(x: u64) -> u64 {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    zero_byte(x ^ (ONES * u64::from(b'"')))
        | zero_byte(x ^ (ONES * u64::from(b'\\')))
        | (x.wrapping_sub(ONES * 0x20) & !x & HIGH)
}

/// How many bytes from the start of `s` need no unescaping (and, written as
/// JSON, no escaping): up to the first quote, backslash or control character.
/// Sixteen bytes at a time, then eight.
pub fn plain_run(s: &[u8]) -> usize {
    let mut i = 0;
    while let Some(chunk) = s.get(i..i + 16) {
        if let Some(run) = first_special(chunk.try_into().expect("sixteen bytes")) {
            return i + run;
        }
        i += 16;
    }
    while let Some(chunk) = s.get(i..i + 8) {
        let found = specials(u64::from_le_bytes(chunk.try_into().expect("eight bytes")));
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + s[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .unwrap_or(s.len() - i)
}

#[cfg(test)]
mod tests {
    use super::super::{Builder, RecordObject};
    use super::scan;

    /// The scanner's document, or `None` where it leaves the text to serde_json.
    fn scanned(json: &str, strict: bool) -> Option<String> {
        let mut b = Builder::new(json.len(), strict);
        scan(json, &mut b)?;
        b.finish().map(|m| format!("{:?}", m.doc))
    }

    fn serde(json: &str, strict: bool) -> Option<String> {
        RecordObject::parse_with_serde(json, strict)
            .ok()
            .map(|m| format!("{:?}", m.doc))
    }

    /// Whatever the scanner accepts, serde_json accepts, into the same slots
    /// and text; `fast` says the scanner must take it.
    fn same(json: &str, fast: bool) {
        for strict in [false, true] {
            match (scanned(json, strict), serde(json, strict)) {
                (Some(a), Some(b)) => assert_eq!(a, b, "{json}"),
                (Some(_), None) => panic!("the scanner took what serde_json refuses: {json}"),
                (None, Some(_)) => assert!(!fast, "the scanner left a plain record: {json}"),
                (None, None) => {}
            }
        }
    }

    #[test]
    fn the_scanner_builds_what_serde_json_builds_and_refuses_what_it_refuses() {
        let fast = [
            r#"{}"#,
            r#" { "a" : [ ] , "b" : { } , "c" : [ 1 , [ 2 , { } ] ] } "#,
            "{\"a\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\u0041\\ud83d\\ude00x\",\"\\u0062\":1}",
            r#"{"n":[0,-1,7,1.5,-0.25,1e5,1E+2,2e-3,-0,-0.0,9223372036854775807,-9223372036854775808]}"#,
            r#"{"big":[9223372036854775808,18446744073709551615,18446744073709551616,-9223372036854775809]}"#,
            r#"{"t":true,"f":false,"z":null,"é":"ü€😀","tab":"a	b"}"#,
            "{\"a\":1}\n\r\t ",
        ];
        for json in fast {
            // A raw tab inside a string is a control character: refused by both.
            same(json, !json.contains('\t') || json.ends_with(' '));
        }
        let refused = [
            "",
            " ",
            "{",
            "}",
            "[]",
            "1",
            "\"a\"",
            "null",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{,"a":1}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":[,1]}"#,
            r#"{"a":1}x"#,
            r#"{"a":1}{}"#,
            r#"{"a":01}"#,
            r#"{"a":-}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":+1}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul}"#,
            r#"{"a":True}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":"\u12G4"}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\udc00"}"#,
            r#"{"a":"\ud800\u0041"}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":"unterminated}"#,
            r#"{1:2}"#,
            r#"{'a':1}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a":{"b":1,"c":2,"b":3}}"#,
            "{\"a\":1}\u{c}",
        ];
        for json in refused {
            same(json, false);
        }
        // A repeated key: the last one wins unless strict.
        assert!(scanned(r#"{"a":1,"a":2}"#, false).is_some());
        assert!(scanned(r#"{"a":1,"a":2}"#, true).is_none());
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        same(&deep, false);
        let nested = format!("{{\"a\":{}1{}}}", "[".repeat(50), "]".repeat(50));
        same(&nested, true);
    }

    #[test]
    fn the_scanner_copies_runs_of_every_length_with_escapes_at_every_place() {
        // Runs are copied sixteen bytes at a time and cut back where they end:
        // every length around the sixteens, and every kind of end at every
        // place, including multi-byte characters across a chunk's edge.
        let ends = [
            "\\\"",
            "\\\\",
            "\\/",
            "\\n",
            "\\u00e9",
            "\\ud83d\\ude00",
            "é",
            "€",
            "😀",
            "\u{1}",
        ];
        for len in 0..=40 {
            let plain: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            same(&format!("{{\"{plain}\":\"{plain}\"}}"), true);
            for end in ends {
                for at in 0..=len {
                    let s = format!("{}{end}{}", &plain[..at], &plain[at..]);
                    let json = format!("{{\"k{s}\":[\"{s}\",\"{s}{s}\"],\"z\":\"{s}\"}}");
                    same(&json, !end.starts_with('\u{1}'));
                }
            }
        }
    }

    #[test]
    fn sixteen_bytes_at_once_find_what_eight_at_a_time_find() {
        // Every byte value at every place, behind plain bytes and behind
        // every other byte value (a flagged byte must hide what follows it).
        for at in 0..16 {
            for b in 0..=255u8 {
                for before in [b'a', 0xc3, 0x7f, 0xff, b'"'] {
                    let mut chunk = [before; 16];
                    chunk[at] = b;
                    let expect = chunk
                        .iter()
                        .position(|&c| c == b'"' || c == b'\\' || c < 0x20);
                    assert_eq!(super::first_special(&chunk), expect, "{chunk:?}");
                    assert_eq!(super::first_special_by_words(&chunk), expect, "{chunk:?}");
                }
            }
        }
    }

    #[test]
    fn the_scanner_says_where_the_only_number_is() {
        let at = |json: &str| RecordObject::parse_strict_noting_number(json).unwrap().1;
        assert_eq!(at(r#" {"a":"1","v": 12 ,"b":[true]}"#), Some(15..17));
        assert_eq!(at(r#"{"v":-1.5e3}"#), Some(5..11));
        assert_eq!(at(r#"{"v":1,"w":2}"#), None);
        assert_eq!(at(r#"{"v":"1"}"#), None);
        // Left to serde_json (nested deeper than the scanner goes): not known.
        let deep = format!(r#"{{"v":1,"d":{}{}}}"#, "[".repeat(101), "]".repeat(101));
        assert_eq!(at(&deep), None);
    }

    #[test]
    fn the_scanner_agrees_with_serde_json_on_every_sample_and_on_damaged_copies() {
        let samples = include_str!("../../../../examples/samples/normal_days.ndjson");
        let marks = [
            "\"", "\\", "{", "}", "[", "]", ",", ":", "0", "-", "x", " ", "\u{1}", "é",
        ];
        for (n, line) in samples.lines().enumerate() {
            same(line, true);
            if n % 450 != 0 {
                continue;
            }
            // Every third place of some records, damaged in each way.
            let ends: Vec<usize> = (0..=line.len())
                .filter(|&i| line.is_char_boundary(i))
                .collect();
            for w in ends.windows(2).step_by(3) {
                let (i, j) = (w[0], w[1]);
                same(&line[..i], false);
                for m in marks {
                    same(&[&line[..i], m, &line[j..]].concat(), false);
                    same(&[&line[..i], m, &line[i..]].concat(), false);
                }
            }
        }
    }
}
