//! Finding a value's bytes in a record as sent, without parsing it: the
//! fast path that keeps a valid record's text as it arrived.

/// Where `event.version`'s value sits in `raw`, a JSON text that parsed
/// strictly. Usually `"version"` is a key once in the whole text (inside the
/// representation strings its quotes are escaped), and then that is the one:
/// an unescaped quote followed by `version"` can only open that key's name, and
/// without any `\u` escape no other spelling of it exists. Otherwise the text
/// is walked from the root.
pub(super) fn version_span(raw: &[u8]) -> Option<std::ops::Range<usize>> {
    if memchr::memmem::find(raw, b"\\u").is_none() {
        let mut keys = memchr::memmem::find_iter(raw, b"\"version\"")
            .filter(|&p| p == 0 || raw[p - 1] != b'\\')
            .map(|p| skip_ws(raw, p + 9))
            .filter(|&colon| raw.get(colon) == Some(&b':'));
        if let (Some(colon), None) = (keys.next(), keys.next()) {
            let start = skip_ws(raw, colon + 1);
            return Some(start..value_end(raw, start)?);
        }
    }
    value_span(raw, &["event", "version"])
}

/// Where the value at `path` (object keys from the root) sits in `raw`, a JSON
/// text that parsed strictly (so no key is repeated). A light scan that builds
/// nothing: strings are skipped with `memchr`, keys compared as written, so a
/// key spelled with escapes is not found (the caller serialises instead).
pub(super) fn value_span(raw: &[u8], path: &[&str]) -> Option<std::ops::Range<usize>> {
    let mut i = raw.iter().position(|c| !c.is_ascii_whitespace())?;
    for key in path {
        // At an object: read its members until `key`.
        (raw.get(i) == Some(&b'{')).then_some(())?;
        i += 1;
        loop {
            i = skip_ws(raw, i);
            let name = string_end(raw, i)?;
            let found = &raw[i + 1..name - 1] == key.as_bytes();
            i = skip_ws(raw, name);
            (raw.get(i) == Some(&b':')).then_some(())?;
            i = skip_ws(raw, i + 1);
            if found {
                break;
            }
            i = skip_ws(raw, value_end(raw, i)?);
            (raw.get(i) == Some(&b',')).then_some(())?;
            i += 1;
        }
    }
    Some(i..value_end(raw, i)?)
}

pub(super) fn skip_ws(raw: &[u8], mut i: usize) -> usize {
    while raw.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// The end of the string that starts at `i` (just past its closing quote).
pub(super) fn string_end(raw: &[u8], mut i: usize) -> Option<usize> {
    (raw.get(i) == Some(&b'"')).then_some(())?;
    i += 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', raw.get(i..)?)?;
        if raw[i] == b'"' {
            return Some(i + 1);
        }
        i += 2;
    }
}

/// The end of the value that starts at `i`.
pub(super) fn value_end(raw: &[u8], mut i: usize) -> Option<usize> {
    match raw.get(i)? {
        b'"' => string_end(raw, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match raw.get(i)? {
                    b'"' => {
                        i = string_end(raw, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let len = raw[i..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']') || c.is_ascii_whitespace());
            Some(len.map_or(raw.len(), |n| i + n))
        }
    }
}
