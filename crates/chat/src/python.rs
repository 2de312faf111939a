//! The pieces of Python behaviour that chat templates rely on and that minijinja does not give
//! out of the box: how Python prints values (`str`/`repr`), `json.dumps` as transformers' `tojson`
//! filter calls it, Jinja2's looser `sequence` test and a few extra string methods.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Output, State, Value};

/// Deepest nesting `tojson` and `repr` follow. Template values come from JSON (which serde_json
/// already bounds) or from template literals (which the parser bounds); this is a backstop so
/// that a hostile value can never exhaust the stack.
const MAX_NESTING: usize = 256;

/// Writes what Jinja2 writes for `{{ value }}`: `str(value)`, and nothing for undefined.
pub(crate) fn format_output(out: &mut Output, _state: &mut State, value: &Value) -> Result<(), Error> {
    let text = python_str(value)?;
    out.write_str(&text)
        .map_err(|err| Error::new(ErrorKind::WriteFailure, "cannot write output").with_source(err))
}

/// The `string` filter: Python's `str(value)`.
pub(crate) fn string_filter(state: &State, value: &Value) -> Result<Value, Error> {
    if value.kind() == ValueKind::String {
        return Ok(value.clone());
    }
    let text = python_str(value)?;
    charge_serialization(state, &text)?;
    Ok(Value::from(text))
}

/// Pays fuel for text made by walking a value. minijinja charges every byte a filter returns
/// as if it were copied; walking a value costs more, and its own `tojson` charges 16 times a
/// copy. Ours charge the same, so that a loop of serializations runs out of fuel as soon.
fn charge_serialization(state: &State, text: &str) -> Result<(), Error> {
    state.consume_fuel(text.len() as u64 / 4)
}

/// Python's `str(value)`: strings as they are, everything else as its `repr`.
pub(crate) fn python_str(value: &Value) -> Result<String, Error> {
    match value.kind() {
        ValueKind::Undefined => Ok(String::new()),
        ValueKind::String => Ok(value.as_str().unwrap_or_default().to_owned()),
        _ => {
            let mut text = String::new();
            write_repr(value, &mut text, 0)?;
            Ok(text)
        }
    }
}

fn write_repr(value: &Value, out: &mut String, depth: usize) -> Result<(), Error> {
    if depth > MAX_NESTING {
        return Err(nesting_error());
    }
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => write_number_repr(value, out),
        ValueKind::String => write_string_repr(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            let tuple = value.is_tuple();
            out.push(if tuple { '(' } else { '[' });
            let mut count = 0usize;
            for item in value.try_iter()? {
                if count > 0 {
                    out.push_str(", ");
                }
                write_repr(&item, out, depth + 1)?;
                count += 1;
            }
            if tuple && count == 1 {
                out.push(',');
            }
            out.push(if tuple { ')' } else { ']' });
        }
        ValueKind::Map => {
            out.push('{');
            for (index, key) in value.try_iter()?.enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                write_repr(&key, out, depth + 1)?;
                out.push_str(": ");
                write_repr(&value.get_item(&key)?, out, depth + 1)?;
            }
            out.push('}');
        }
        // Bytes, macros and other opaque objects: minijinja's own rendering is as good a
        // guess as any, and no chat template prints them.
        _ => {
            let _ = write!(out, "{value}");
        }
    }
    Ok(())
}

fn write_number_repr(value: &Value, out: &mut String) {
    if !value.is_integer()
        && let Ok(float) = f64::try_from(value.clone())
    {
        out.push_str(&python_float_repr(float));
    } else {
        let _ = write!(out, "{value}");
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, in positional notation for
/// exponents from -4 to 15 and in scientific notation (`1e+16`, `1.5e-05`) outside them.
pub(crate) fn python_float_repr(value: f64) -> String {
    if value.is_nan() {
        return "nan".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    // Rust's `{:e}` prints the shortest round-trip digits, e.g. "-1.2345e-7" or "0e0".
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut text = String::from(sign);
    if (-4..16).contains(&exponent) {
        if exponent < 0 {
            text.push_str("0.");
            text.extend(std::iter::repeat_n('0', (-exponent - 1) as usize));
            text.push_str(&digits);
        } else {
            let integer_len = exponent as usize + 1;
            if digits.len() <= integer_len {
                text.push_str(&digits);
                text.extend(std::iter::repeat_n('0', integer_len - digits.len()));
                text.push_str(".0");
            } else {
                text.push_str(&digits[..integer_len]);
                text.push('.');
                text.push_str(&digits[integer_len..]);
            }
        }
    } else {
        text.push_str(&digits[..1]);
        if digits.len() > 1 {
            text.push('.');
            text.push_str(&digits[1..]);
        }
        let _ = write!(text, "e{}{:02}", if exponent < 0 { '-' } else { '+' }, exponent.unsigned_abs());
    }
    text
}

/// Python's `repr(str)`: single quotes unless the text holds a single quote and no double
/// quote, with control and other unprintable characters escaped.
fn write_string_repr(text: &str, out: &mut String) {
    let quote = if text.contains('\'') && !text.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for ch in text.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            _ if ch == quote => {
                out.push('\\');
                out.push(ch);
            }
            _ if !is_python_printable(ch) => {
                let code = u32::from(ch);
                let _ = if code < 0x100 {
                    write!(out, "\\x{code:02x}")
                } else if code < 0x10000 {
                    write!(out, "\\u{code:04x}")
                } else {
                    write!(out, "\\U{code:08x}")
                };
            }
            _ => out.push(ch),
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable` for one character, approximated without Unicode tables: control
/// characters, separators other than the ASCII space, the common format characters and private
/// use code points are unprintable; unassigned code points are not detected.
fn is_python_printable(ch: char) -> bool {
    let code = u32::from(ch);
    !(ch.is_control()
        || matches!(
            code,
            0xA0 | 0xAD
                | 0x1680
                | 0x2000..=0x200F
                | 0x2028..=0x202F
                | 0x205F..=0x2064
                | 0x2066..=0x206F
                | 0x3000
                | 0xFEFF
                | 0xFFF9..=0xFFFB
                | 0xE000..=0xF8FF
                | 0xF0000..
        ))
}

/// transformers' `tojson` filter: `json.dumps(value, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, overridable by keyword (the first two also by position,
/// which is as far as templates go). Unlike Jinja's own `tojson` it escapes no HTML characters.
pub(crate) fn tojson(
    state: &State,
    value: &Value,
    ensure_ascii: Option<Value>,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let ensure_ascii = pick_argument(ensure_ascii, &kwargs, "ensure_ascii")?;
    let indent = pick_argument(indent, &kwargs, "indent")?;
    let separators = pick_argument(None, &kwargs, "separators")?;
    let sort_keys = pick_argument(None, &kwargs, "sort_keys")?;
    kwargs.assert_all_used()?;

    let indent = match indent {
        Some(indent) if !indent.is_none() => Some(json_indent(&indent)?),
        _ => None,
    };
    let (item_separator, key_separator) = match separators {
        Some(separators) if !separators.is_none() => json_separators(&separators)?,
        // json.dumps drops the space after commas when it indents, to avoid trailing spaces.
        _ if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        _ => (", ".to_owned(), ": ".to_owned()),
    };
    let writer = JsonWriter {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
        indent,
        item_separator,
        key_separator,
    };
    let mut out = String::new();
    writer.write_value(value, &mut out, 0)?;
    charge_serialization(state, &out)?;
    Ok(Value::from(out))
}

fn pick_argument(positional: Option<Value>, kwargs: &Kwargs, name: &str) -> Result<Option<Value>, Error> {
    let keyword: Option<Value> = kwargs.get(name)?;
    if positional.is_some() && keyword.is_some() {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            format!("tojson got multiple values for argument '{name}'"),
        ));
    }
    Ok(positional.or(keyword))
}

/// `indent` may be a number of spaces or the indent string itself, as in Python.
fn json_indent(indent: &Value) -> Result<String, Error> {
    if let Some(text) = indent.as_str() {
        return Ok(text.to_owned());
    }
    match indent.as_i64() {
        // Python repeats " " by the count; a negative count gives the empty string.
        Some(count) => Ok(" ".repeat(count.clamp(0, 64) as usize)),
        None => Err(Error::new(ErrorKind::InvalidOperation, "tojson indent must be a number or a string")),
    }
}

fn json_separators(separators: &Value) -> Result<(String, String), Error> {
    let parts: Vec<Value> = separators.try_iter()?.collect();
    match parts.as_slice() {
        [item, key] if item.as_str().is_some() && key.as_str().is_some() => {
            Ok((item.as_str().unwrap_or_default().to_owned(), key.as_str().unwrap_or_default().to_owned()))
        }
        _ => Err(Error::new(ErrorKind::InvalidOperation, "tojson separators must be a pair of strings")),
    }
}

struct JsonWriter {
    ensure_ascii: bool,
    sort_keys: bool,
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
}

impl JsonWriter {
    fn write_value(&self, value: &Value, out: &mut String, depth: usize) -> Result<(), Error> {
        if depth > MAX_NESTING {
            return Err(nesting_error());
        }
        match value.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => self.write_number(value, out),
            ValueKind::String => self.write_string(value.as_str().unwrap_or_default(), out),
            ValueKind::Seq => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.write_container(out, depth, '[', ']', &items, |item, out| {
                    self.write_value(item, out, depth + 1)
                })?;
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    entries.push((self.json_key(&key)?, item));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.write_container(out, depth, '{', '}', &entries, |(key, item), out| {
                    self.write_string(key, out);
                    out.push_str(&self.key_separator);
                    self.write_value(item, out, depth + 1)
                })?;
            }
            // Python's json refuses what is not a plain value, list or dict: Jinja's Undefined,
            // generators (`dict.items()`, `map`, `range`), macros.
            kind => {
                let type_name = match kind {
                    ValueKind::Undefined => "Undefined",
                    ValueKind::Iterable => "generator",
                    _ => "object",
                };
                return Err(Error::new(
                    ErrorKind::BadSerialization,
                    format!("Object of type {type_name} is not JSON serializable"),
                ));
            }
        }
        Ok(())
    }

    fn write_container<T>(
        &self,
        out: &mut String,
        depth: usize,
        open: char,
        close: char,
        items: &[T],
        mut write_item: impl FnMut(&T, &mut String) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        for (index, item) in items.iter().enumerate() {
            if index > 0 {
                out.push_str(&self.item_separator);
            }
            self.write_newline(out, depth + 1);
            write_item(item, out)?;
        }
        self.write_newline(out, depth);
        out.push(close);
        Ok(())
    }

    fn write_newline(&self, out: &mut String, depth: usize) {
        if let Some(indent) = &self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(indent);
            }
        }
    }

    /// Python's json turns non-string keys into strings and refuses the rest.
    fn json_key(&self, key: &Value) -> Result<String, Error> {
        match key.kind() {
            ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
            ValueKind::None => Ok("null".to_owned()),
            ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_owned()),
            ValueKind::Number => {
                let mut text = String::new();
                self.write_number(key, &mut text);
                Ok(text)
            }
            kind => Err(Error::new(
                ErrorKind::BadSerialization,
                format!("keys must be str, int, float, bool or None, not {kind}"),
            )),
        }
    }

    fn write_number(&self, value: &Value, out: &mut String) {
        if !value.is_integer()
            && let Ok(float) = f64::try_from(value.clone())
        {
            if float.is_nan() {
                out.push_str("NaN");
            } else if float.is_infinite() {
                out.push_str(if float > 0.0 { "Infinity" } else { "-Infinity" });
            } else {
                out.push_str(&python_float_repr(float));
            }
        } else {
            let _ = write!(out, "{value}");
        }
    }

    fn write_string(&self, text: &str, out: &mut String) {
        out.push('"');
        for ch in text.chars() {
            match ch {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                _ if u32::from(ch) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", u32::from(ch));
                }
                _ if self.ensure_ascii && !ch.is_ascii() => {
                    let mut units = [0u16; 2];
                    for unit in ch.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                _ => out.push(ch),
            }
        }
        out.push('"');
    }
}

fn nesting_error() -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("value is nested deeper than {MAX_NESTING} levels"))
}

/// Jinja2's `sequence` test: anything with a length and indexing, so strings and dicts too
/// (minijinja's counts only lists). Templates use it to tell string content from parts.
pub(crate) fn is_sequence(value: &Value) -> bool {
    matches!(value.kind(), ValueKind::Undefined | ValueKind::String | ValueKind::Seq | ValueKind::Map)
}

/// Jinja2's `iterable` test: whatever Python can iterate. Unlike minijinja's, `none` is not
/// iterable, which templates rely on in `tools is iterable and tools | length > 0`.
pub(crate) fn is_iterable(value: &Value) -> bool {
    matches!(
        value.kind(),
        ValueKind::Undefined
            | ValueKind::String
            | ValueKind::Bytes
            | ValueKind::Seq
            | ValueKind::Map
            | ValueKind::Iterable
    )
}

/// Jinja2's `indent(width=4, first=False, blank=False)` filter, quirks included: it appends a
/// newline before splitting, so a trailing newline survives (minijinja's drops it), and it
/// splits lines the way Python's `str.splitlines` does.
pub(crate) fn indent_filter(
    value: &Value,
    width: Option<Value>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let width = pick_argument(width, &kwargs, "width")?;
    let first = first.or(kwargs.get("first")?).unwrap_or(false);
    let blank = blank.or(kwargs.get("blank")?).unwrap_or(false);
    kwargs.assert_all_used()?;
    let indentation = match width {
        None => "    ".to_owned(),
        Some(width) => json_indent(&width)?,
    };
    let mut text = python_str(value)?;
    text.push('\n');
    let lines = python_splitlines(&text);
    let mut out = String::new();
    if blank {
        out = lines.join(&format!("\n{indentation}"));
    } else if let Some((head, tail)) = lines.split_first() {
        out.push_str(head);
        for line in tail {
            out.push('\n');
            if !line.is_empty() {
                out.push_str(&indentation);
            }
            out.push_str(line);
        }
    }
    if first {
        out.insert_str(0, &indentation);
    }
    Ok(Value::from(out))
}

/// Python's `str.splitlines()`: splits on every Unicode line boundary, `\r\n` counting once.
fn python_splitlines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((index, ch)) = chars.next() {
        let is_break = matches!(
            ch,
            '\n' | '\r'
                | '\u{b}'
                | '\u{c}'
                | '\u{1c}'
                | '\u{1d}'
                | '\u{1e}'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        );
        if !is_break {
            continue;
        }
        lines.push(&text[start..index]);
        let mut end = index + ch.len_utf8();
        if ch == '\r' && chars.next_if(|(_, next)| *next == '\n').is_some() {
            end += 1;
        }
        start = end;
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// Python methods on values (`content.strip()`, `message.get('x')`, `tools.items()`, ...):
/// minijinja-contrib's pycompat set, plus a few string methods it lacks.
pub(crate) fn call_method(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    match minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args) {
        Err(err) if err.kind() == ErrorKind::UnknownMethod => {
            extra_string_method(value, method, args).unwrap_or(Err(err))
        }
        result => result,
    }
}

fn extra_string_method(value: &Value, method: &str, args: &[Value]) -> Option<Result<Value, Error>> {
    let text = value.as_str()?;
    let result =
        match method {
            "removeprefix" => single_str_arg(args, method)
                .map(|prefix| Value::from(text.strip_prefix(prefix).unwrap_or(text))),
            "removesuffix" => single_str_arg(args, method)
                .map(|suffix| Value::from(text.strip_suffix(suffix).unwrap_or(text))),
            "rsplit" => rsplit(text, args),
            _ => return None,
        };
    Some(result)
}

fn single_str_arg<'a>(args: &'a [Value], method: &str) -> Result<&'a str, Error> {
    match args {
        [arg] => arg.as_str().ok_or_else(|| {
            Error::new(ErrorKind::InvalidOperation, format!("{method}() argument must be str"))
        }),
        _ => Err(Error::new(ErrorKind::InvalidOperation, format!("{method}() takes exactly one argument"))),
    }
}

/// Python's `str.rsplit(sep=None, maxsplit=-1)`.
fn rsplit(text: &str, args: &[Value]) -> Result<Value, Error> {
    let separator = args.first().filter(|v| !v.is_none());
    let max_splits = match args.get(1) {
        Some(v) => v
            .as_i64()
            .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "rsplit() maxsplit must be int"))?,
        None => -1,
    };
    let max_splits = usize::try_from(max_splits).unwrap_or(usize::MAX);
    let mut parts: Vec<Value> = match separator {
        Some(separator) => {
            let separator = separator.as_str().filter(|s| !s.is_empty()).ok_or_else(|| {
                Error::new(ErrorKind::InvalidOperation, "rsplit() separator must be a non-empty str")
            })?;
            text.rsplitn(max_splits.saturating_add(1), separator).map(Value::from).collect()
        }
        None => {
            // Whitespace splitting drops empty pieces; the rest after `max_splits` keeps its
            // inner whitespace but loses the trailing run, as in Python.
            let mut parts = Vec::new();
            let mut rest = text.trim_end();
            while !rest.is_empty() {
                if parts.len() == max_splits {
                    parts.push(Value::from(rest.trim_end()));
                    break;
                }
                match rest.rfind(char::is_whitespace) {
                    Some(index) => {
                        let (head, tail) = rest.split_at(index);
                        let tail = tail.trim_start();
                        parts.push(Value::from(tail));
                        rest = head.trim_end();
                    }
                    None => {
                        parts.push(Value::from(rest));
                        break;
                    }
                }
            }
            parts
        }
    };
    parts.reverse();
    Ok(Value::from(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python_repr() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.5, "0.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (123456789.0, "123456789.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e-4, "0.0001"),
            (1.5e-5, "1.5e-05"),
            (-2.5e-7, "-2.5e-07"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (f64::NAN, "nan"),
            (f64::NEG_INFINITY, "-inf"),
        ];
        for (value, expected) in cases {
            assert_eq!(python_float_repr(value), expected, "{value:e}");
        }
    }

    #[test]
    fn strings_repr_like_python() {
        let repr = |text: &str| {
            let mut out = String::new();
            write_string_repr(text, &mut out);
            out
        };
        assert_eq!(repr("plain 中文 😀"), "'plain 中文 😀'");
        assert_eq!(repr("it's"), "\"it's\"");
        assert_eq!(repr("both ' and \""), "'both \\' and \"'");
        assert_eq!(repr("a\\b\n\t\r\u{1}\u{7f}\u{a0}\u{200b}"), "'a\\\\b\\n\\t\\r\\x01\\x7f\\xa0\\u200b'");
    }

    #[test]
    fn rsplit_matches_python() {
        let split = |text: &str, args: &[Value]| rsplit(text, args).unwrap().to_string();
        assert_eq!(split("a-b-c", &[Value::from("-")]), "['a', 'b', 'c']");
        assert_eq!(split("a-b-c", &[Value::from("-"), Value::from(1)]), "['a-b', 'c']");
        assert_eq!(split("  a  b c  ", &[]), "['a', 'b', 'c']");
        assert_eq!(split("  a  b c  ", &[Value::from(()), Value::from(1)]), "['  a  b', 'c']");
        assert_eq!(split("", &[]), "[]");
        assert!(rsplit("x", &[Value::from("")]).is_err());
    }

    #[test]
    fn splitlines_matches_python() {
        assert_eq!(python_splitlines("a\nb\r\nc\rd\u{2028}e\n"), ["a", "b", "c", "d", "e"]);
        assert_eq!(python_splitlines("\n\n"), ["", ""]);
        assert!(python_splitlines("").is_empty());
    }
}
