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

use super::{link, Builder, Slot, Span};

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
        let mut seen = 0u64;
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
    fn string(&mut self) -> Option<Span> {
        let start = self.out.text.len();
        // `from` is where the text not yet copied begins, `j` where the search
        // for the next quote, backslash or control character goes on. Both are
        // at ASCII bytes (or the end), so at char boundaries.
        let mut from = self.i;
        let mut j = self.i;
        loop {
            j += plain_run(&self.bytes[j..]);
            self.out.text.push_str(&self.text[from..j]);
            match self.bytes.get(j)? {
                b'"' => {
                    self.i = j + 1;
                    let len = self.out.text.len() - start;
                    return Some(Span {
                        start: start as u32,
                        len: len as u32,
                    });
                }
                b'\\' => match self.bytes.get(j + 1)? {
                    // An escaped quote, backslash or slash is the character
                    // after the backslash: the next run starts with it
                    // (representations hold dozens of escaped quotes).
                    b'"' | b'\\' | b'/' => {
                        from = j + 1;
                        j += 2;
                    }
                    _ => {
                        j += 1 + self.escape(j + 1)?;
                        from = j;
                    }
                },
                _ => return None, // a control character
            }
        }
    }

    /// Unescapes the escape whose letter is at `at`; returns its length.
    /// (An escaped quote, backslash or slash never comes here: [`Self::string`]
    /// copies it as the first character of the next run.)
    fn escape(&mut self, at: usize) -> Option<usize> {
        let c = match self.bytes.get(at)? {
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = self.hex4(at + 1)?;
                return match unit {
                    0xD800..=0xDBFF => {
                        // Only a whole surrogate pair is taken here.
                        if self.bytes.get(at + 5..at + 7)? != b"\\u" {
                            return None;
                        }
                        let low = self.hex4(at + 7)?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        let c = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                        self.out.text.push(char::from_u32(c)?);
                        Some(11)
                    }
                    0xDC00..=0xDFFF => None,
                    _ => {
                        self.out.text.push(char::from_u32(unit)?);
                        Some(5)
                    }
                };
            }
            _ => return None,
        };
        self.out.text.push(c);
        Some(1)
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        let digits = self.bytes.get(at..at + 4)?;
        digits
            .iter()
            .try_fold(0u32, |n, &d| Some(n * 16 + (d as char).to_digit(16)?))
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

/// How many bytes from the start of `s` need no unescaping (and, written as
/// JSON, no escaping): up to the first quote, backslash or control character.
/// Eight bytes at a time.
pub(crate) fn plain_run(s: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut i = 0;
    while let Some(chunk) = s.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let found = zero_byte(x ^ (ONES * u64::from(b'"')))
            | zero_byte(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGH);
        if found != 0 {
            // The lowest flagged byte is exact (borrows only flag bytes above it).
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
    use super::super::{Builder, EventMap};
    use super::scan;

    /// The scanner's document, or `None` where it leaves the text to serde_json.
    fn scanned(json: &str, strict: bool) -> Option<String> {
        let mut b = Builder::new(json.len(), strict);
        scan(json, &mut b)?;
        b.finish().map(|m| format!("{:?}", m.doc))
    }

    fn serde(json: &str, strict: bool) -> Option<String> {
        EventMap::parse_with_serde(json, strict)
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
    fn the_scanner_says_where_the_only_number_is() {
        let at = |json: &str| EventMap::parse_strict_noting_number(json).unwrap().1;
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
        let samples = include_str!("../../../examples/samples/normal_days.ndjson");
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
