//! PyTorch checkpoints (`torch.save` zip files: `*/data.pkl` plus one entry per storage), read
//! without running Python and without trusting the pickle.
//!
//! The pickle is interpreted by a small stack machine that knows only the opcodes and the
//! globals a state dict needs (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter` and the typed storage classes). Any other global, such as
//! `os.system`, is an error: nothing is ever called or imported. Tensors point into the mapped
//! file when their storage entry is stored uncompressed (as `torch.save` writes them).

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;
use std::rc::Rc;

use crate::hf::{HfTensor, StorageType};
use crate::{Bytes, FormatError};

/// The globals a checkpoint may name. Everything else is refused.
#[derive(Clone, Debug, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(StorageType),
}

fn allowed_global(module: &str, name: &str) -> Option<Global> {
    Some(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch", "FloatStorage") => Global::Storage(StorageType::F32),
        ("torch", "HalfStorage") => Global::Storage(StorageType::F16),
        ("torch", "BFloat16Storage") => Global::Storage(StorageType::BF16),
        ("torch", "DoubleStorage") => Global::Storage(StorageType::F64),
        ("torch", "LongStorage") => Global::Storage(StorageType::I64),
        ("torch", "IntStorage") => Global::Storage(StorageType::I32),
        ("torch", "ShortStorage") => Global::Storage(StorageType::I16),
        ("torch", "CharStorage") => Global::Storage(StorageType::I8),
        ("torch", "ByteStorage") => Global::Storage(StorageType::U8),
        ("torch", "BoolStorage") => Global::Storage(StorageType::Bool),
        _ => return None,
    })
}

/// A storage named by a persistent id: `('storage', type, key, location, numel)`.
#[derive(Clone, Debug, PartialEq)]
struct StorageRef {
    dtype: StorageType,
    key: String,
    numel: usize,
}

/// A tensor as `_rebuild_tensor_v2` describes it, elements counted in the storage's type.
#[derive(Clone, Debug, PartialEq)]
struct TensorRef {
    storage: StorageRef,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// Pickle values. Containers are shared (`Rc`) so a memo lookup costs nothing, however often a
/// pickle repeats it.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Vec<Value>>, u8),
    List(Vec<Value>, u8),
    Dict(Vec<(Value, Value)>, u8),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    /// Nesting depth of containers: 0 for anything else.
    fn depth(&self) -> u8 {
        match self {
            Value::Tuple(_, d) | Value::List(_, d) | Value::Dict(_, d) => *d,
            _ => 0,
        }
    }
}

/// Deepest nesting of containers (a state dict needs four levels): keeps every recursion over
/// values, including their drop, shallow.
const MAX_DEPTH: u8 = 32;

/// The depth of a container of `depth` after `child` goes into it.
fn nest(depth: u8, child: &Value) -> Result<u8, PickleError> {
    let d = depth.max(child.depth() + 1);
    if d > MAX_DEPTH { err("containers nested too deeply") } else { Ok(d) }
}

fn tuple(items: Vec<Value>) -> Result<Value, PickleError> {
    let mut depth = 1;
    for item in &items {
        depth = nest(depth, item)?;
    }
    Ok(Value::Tuple(Rc::new(items), depth))
}

#[derive(Debug)]
struct PickleError(String);

fn err<T>(message: impl Into<String>) -> Result<T, PickleError> {
    Err(PickleError(message.into()))
}

/// Longest list or dict a state dict pickle may build (entries are tensors: thousands at most).
const MAX_CONTAINER: usize = 1 << 20;
/// Deepest stack of marks.
const MAX_MARKS: usize = 1 << 10;
/// Values copied out of the memo, in total.
const MAX_COPIED: usize = 1 << 24;

/// Values a clone of `v` copies (shared parts count once), counted up to `limit`.
fn copy_cost(v: &Value, limit: usize) -> usize {
    let mut cost = 1;
    match v {
        Value::List(items, _) => {
            for item in items {
                cost += copy_cost(item, limit);
                if cost > limit {
                    break;
                }
            }
        }
        Value::Dict(items, _) => {
            for (k, item) in items {
                cost += copy_cost(k, limit) + copy_cost(item, limit);
                if cost > limit {
                    break;
                }
            }
        }
        _ => {}
    }
    cost
}

struct Machine<'a> {
    input: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    copied: usize,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.input.len());
        let Some(end) = end else { return err(format!("truncated at byte {}", self.at)) };
        let bytes = &self.input[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.input[self.at..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else { return err("unterminated GLOBAL") };
        let text =
            std::str::from_utf8(&rest[..end]).map_err(|_| PickleError("GLOBAL is not UTF-8".into()))?;
        self.at += end + 1;
        Ok(text)
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return err("pop across a MARK");
        }
        self.stack.pop().ok_or_else(|| PickleError("stack underflow".into()))
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        self.stack.last_mut().ok_or_else(|| PickleError("stack underflow".into()))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let mark = self.marks.pop().ok_or_else(|| PickleError("no MARK".into()))?;
        if mark > self.stack.len() {
            return err("MARK above the stack");
        }
        Ok(self.stack.split_off(mark))
    }

    fn string(&mut self, len: usize) -> Result<Value, PickleError> {
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes).map_err(|_| PickleError("string is not UTF-8".into()))?;
        Ok(Value::Str(text.into()))
    }

    /// A memo entry, copied. Lists and dicts are copied element by element, so the copies are
    /// charged to a budget: a pickle cannot double a list through the memo until memory runs out.
    fn memo_get(&mut self, key: u32) -> Result<Value, PickleError> {
        let v = self.memo.get(&key).ok_or_else(|| PickleError(format!("memo key {key} unset")))?;
        self.copied = self.copied.saturating_add(copy_cost(v, MAX_COPIED));
        if self.copied > MAX_COPIED {
            return err("the pickle copies too much through its memo");
        }
        Ok(v.clone())
    }

    fn run(mut self) -> Result<Value, PickleError> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let _protocol = self.u8()?;
                }
                0x95 => {
                    let _frame_len = self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => {
                    if self.marks.len() >= MAX_MARKS {
                        return err("too many nested MARKs");
                    }
                    self.marks.push(self.stack.len());
                }
                b'}' => self.stack.push(Value::Dict(Vec::new(), 1)),
                b']' => self.stack.push(Value::List(Vec::new(), 1)),
                b')' => self.stack.push(Value::Tuple(Rc::new(Vec::new()), 1)),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v.into()))
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes"));
                    self.stack.push(Value::Int(v.into()))
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
                    self.stack.push(Value::Int(v.into()))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?;
                    if n > 8 {
                        return err("integer wider than 64 bits");
                    }
                    // Little-endian two's complement of n bytes.
                    let fill = if bytes.last().is_some_and(|&b| b & 0x80 != 0) { 0xff } else { 0 };
                    let mut full = [fill; 8];
                    full[..n].copy_from_slice(bytes);
                    self.stack.push(Value::Int(i64::from_le_bytes(full)))
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.stack.push(Value::Float(v))
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v)
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v)
                }
                b'T' | b'B' => {
                    let n = self.u32()? as usize;
                    let v = Value::Bytes(self.take(n)?.into());
                    self.stack.push(v)
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    let v = Value::Bytes(self.take(n)?.into());
                    self.stack.push(v)
                }
                b'q' => {
                    let key = self.u8()?.into();
                    let v = self.top()?.clone();
                    self.memo.insert(key, v);
                }
                b'r' => {
                    let key = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(key, v);
                }
                0x94 => {
                    let key = u32::try_from(self.memo.len()).map_err(|_| PickleError("memo full".into()))?;
                    let v = self.top()?.clone();
                    self.memo.insert(key, v);
                }
                b'h' => {
                    let key = self.u8()?.into();
                    let v = self.memo_get(key)?;
                    self.stack.push(v)
                }
                b'j' => {
                    let key = self.u32()?;
                    let v = self.memo_get(key)?;
                    self.stack.push(v)
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(tuple(items)?)
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.stack.push(tuple(items)?)
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?;
                    let global = allowed_global(&module, name).ok_or_else(|| {
                        PickleError(format!("refuses the global {module}.{name} (not part of a state dict)"))
                    })?;
                    self.stack.push(Value::Global(global))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return err("STACK_GLOBAL needs two strings");
                    };
                    let global = allowed_global(&module, &name).ok_or_else(|| {
                        PickleError(format!("refuses the global {module}.{name} (not part of a state dict)"))
                    })?;
                    self.stack.push(Value::Global(global))
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(persistent_load(&pid)?)
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.stack.push(reduce(callable, args)?)
                }
                b'b' => {
                    // State set on an object (a Parameter's or an OrderedDict's attributes):
                    // nothing a state dict's tensors depend on.
                    let _state = self.pop()?;
                    self.top()?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    match self.top()? {
                        Value::Dict(d, depth) if d.len() < MAX_CONTAINER => {
                            *depth = nest(nest(*depth, &key)?, &value)?;
                            d.push((key, value))
                        }
                        Value::Dict(..) => return err("dict too large"),
                        _ => return err("SETITEM on a non-dict"),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return err("SETITEMS with an odd number of items");
                    }
                    let Value::Dict(d, depth) = self.top()? else { return err("SETITEMS on a non-dict") };
                    if d.len() + items.len() / 2 > MAX_CONTAINER {
                        return err("dict too large");
                    }
                    for item in &items {
                        *depth = nest(*depth, item)?;
                    }
                    let mut items = items.into_iter();
                    while let (Some(k), Some(v)) = (items.next(), items.next()) {
                        d.push((k, v));
                    }
                }
                b'a' => {
                    let value = self.pop()?;
                    match self.top()? {
                        Value::List(l, depth) if l.len() < MAX_CONTAINER => {
                            *depth = nest(*depth, &value)?;
                            l.push(value)
                        }
                        Value::List(..) => return err("list too large"),
                        _ => return err("APPEND on a non-list"),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let Value::List(l, depth) = self.top()? else { return err("APPENDS on a non-list") };
                    if l.len() + items.len() > MAX_CONTAINER {
                        return err("list too large");
                    }
                    for item in &items {
                        *depth = nest(*depth, item)?;
                    }
                    l.extend(items);
                }
                other => {
                    return err(format!("unsupported pickle opcode 0x{other:02x} at byte {}", self.at - 1));
                }
            }
        }
    }
}

fn as_usize(v: &Value, what: &str) -> Result<usize, PickleError> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| PickleError(format!("{what} is negative"))),
        _ => err(format!("{what} is not an integer")),
    }
}

fn usize_tuple(v: &Value, what: &str) -> Result<Vec<usize>, PickleError> {
    match v {
        Value::Tuple(items, _) => items.iter().map(|i| as_usize(i, what)).collect(),
        _ => err(format!("{what} is not a tuple")),
    }
}

fn persistent_load(pid: &Value) -> Result<Value, PickleError> {
    let Value::Tuple(items, _) = pid else { return err("persistent id is not a tuple") };
    match &items[..] {
        [Value::Str(kind), Value::Global(Global::Storage(dtype)), Value::Str(key), _location, numel]
            if &**kind == "storage" =>
        {
            Ok(Value::Storage(Rc::new(StorageRef {
                dtype: dtype.clone(),
                key: key.to_string(),
                numel: as_usize(numel, "storage size")?,
            })))
        }
        _ => err("persistent id is not ('storage', type, key, location, size)"),
    }
}

fn reduce(callable: Value, args: Value) -> Result<Value, PickleError> {
    let Value::Tuple(args, _) = args else { return err("REDUCE arguments are not a tuple") };
    match callable {
        Value::Global(Global::OrderedDict) if args.is_empty() => Ok(Value::Dict(Vec::new(), 1)),
        Value::Global(Global::RebuildTensorV2) => {
            let [storage, offset, size, stride, ..] = &args[..] else {
                return err("_rebuild_tensor_v2 needs storage, offset, size, stride");
            };
            let Value::Storage(storage) = storage else { return err("tensor without a storage") };
            Ok(Value::Tensor(Rc::new(TensorRef {
                storage: (**storage).clone(),
                offset: as_usize(offset, "storage offset")?,
                size: usize_tuple(size, "tensor size")?,
                stride: usize_tuple(stride, "tensor stride")?,
            })))
        }
        Value::Global(Global::RebuildParameter) => match args.first() {
            Some(tensor @ Value::Tensor(_)) => Ok(tensor.clone()),
            _ => err("_rebuild_parameter without a tensor"),
        },
        _ => err("REDUCE of something that is not an allowed constructor"),
    }
}

fn checkpoint_error(path: &Path, message: impl Into<String>) -> FormatError {
    FormatError::Checkpoint { path: path.to_path_buf(), message: message.into() }
}

/// Reads the tensors of a `torch.save` zip checkpoint (a state dict, possibly nested under a
/// `state_dict` / `model` key is not supported: it must be the dict itself).
pub fn read_checkpoint(path: &Path) -> Result<Vec<(String, HfTensor)>, FormatError> {
    let bytes = Bytes::map_file(path)?;
    parse_checkpoint(&bytes).map_err(|e| checkpoint_error(path, e.0))
}

/// The tensors of a `torch.save` zip held in memory; the error is one line (for fuzzing and
/// tests; files go through [`read_checkpoint`]).
pub fn parse_checkpoint_bytes(bytes: &Bytes) -> Result<Vec<(String, HfTensor)>, String> {
    parse_checkpoint(bytes).map_err(|e| e.0)
}

fn parse_checkpoint(bytes: &Bytes) -> Result<Vec<(String, HfTensor)>, PickleError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(&bytes[..]))
        .map_err(|e| PickleError(format!("not a torch.save zip archive: {e}")))?;
    let pickle_name = zip
        .file_names()
        .filter_map(Result::ok)
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .map(|n| n.to_string())
        .ok_or_else(|| PickleError("no */data.pkl in the archive".into()))?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    let pickle = read_entry(&mut zip, bytes, &pickle_name, None)?;
    let machine = Machine {
        input: &pickle,
        at: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        copied: 0,
    };
    let Value::Dict(entries, _) = machine.run()? else { return err("the pickle is not a dict of tensors") };

    let mut storages: HashMap<String, Bytes> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let Value::Str(name) = key else { return err("a state dict key is not a string") };
        let Value::Tensor(t) = value else { return err(format!("{name:?} is not a tensor")) };
        let elem = t.storage.dtype.size().ok_or_else(|| PickleError("storage of unknown type".into()))?;
        let data = match storages.get(&t.storage.key) {
            Some(d) => d.clone(),
            None => {
                let want = t.storage.numel.checked_mul(elem).map(|n| n as u64);
                let d = read_entry(&mut zip, bytes, &format!("{prefix}data/{}", t.storage.key), want)?;
                storages.insert(t.storage.key.clone(), d.clone());
                d
            }
        };
        if t.storage.numel.checked_mul(elem) != Some(data.len()) {
            return err(format!(
                "{name:?}: storage {} has {} bytes, not {} elements",
                t.storage.key,
                data.len(),
                t.storage.numel
            ));
        }
        if t.size.len() != t.stride.len() {
            return err(format!("{name:?}: size and stride differ in length"));
        }
        // Row-major contiguity (dims of size 1 may have any stride).
        let mut expected = 1usize;
        for (&s, &st) in t.size.iter().zip(&t.stride).rev() {
            if s != 1 && st != expected {
                return err(format!(
                    "{name:?} is not a contiguous tensor (size {:?}, stride {:?})",
                    t.size, t.stride
                ));
            }
            expected =
                expected.checked_mul(s).ok_or_else(|| PickleError(format!("{name:?}: size overflows")))?;
        }
        let start = t.offset.checked_mul(elem);
        let len = expected.checked_mul(elem);
        let range = match (start, len) {
            (Some(s), Some(l)) if s.checked_add(l).is_some_and(|e| e <= data.len()) => s..s + l,
            _ => return err(format!("{name:?} runs past the end of its storage")),
        };
        out.push((
            name.to_string(),
            HfTensor { dtype: t.storage.dtype.clone(), shape: t.size.clone(), data: data.slice(range) },
        ));
    }
    Ok(out)
}

/// Inflated bytes per compressed byte at most. `torch.save` stores entries uncompressed; a
/// re-zipped checkpoint's weights barely compress (~1.1:1); only a run of zeros (a zip bomb)
/// compresses a hundredfold.
const MAX_INFLATE_RATIO: u64 = 100;

/// An entry's bytes: a view into the mapped file when stored uncompressed, else inflated, after
/// its sizes are checked: the size the pickle expects (`want`, for a storage) and a plausible
/// compression ratio, so nothing is inflated on a lying header.
fn read_entry(
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    bytes: &Bytes,
    name: &str,
    want: Option<u64>,
) -> Result<Bytes, PickleError> {
    use std::io::Read;
    let mut entry = zip.by_name(name).map_err(|e| PickleError(format!("entry {name}: {e}")))?;
    let size = entry.size();
    if let Some(want) = want
        && size != want
    {
        return err(format!("entry {name} holds {size} bytes; its tensors need {want}"));
    }
    if entry.compression() == zip::CompressionMethod::Stored
        && let Some(start) = entry.data_start()
        && let (Ok(start), Ok(size)) = (usize::try_from(start), usize::try_from(size))
        && start.checked_add(size).is_some_and(|end| end <= bytes.len())
    {
        return Ok(bytes.slice(start..start + size));
    }
    let compressed = entry.compressed_size().max(1);
    if size > compressed.saturating_mul(MAX_INFLATE_RATIO) {
        return err(format!(
            "entry {name} would inflate {compressed} bytes to {size} (more than {MAX_INFLATE_RATIO}:1): refused as a zip bomb"
        ));
    }
    let mut data = Vec::new();
    entry
        .by_ref()
        .take(size)
        .read_to_end(&mut data)
        .map_err(|e| PickleError(format!("entry {name}: {e}")))?;
    Ok(Bytes::from_vec(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pickle: &[u8]) -> Result<Value, PickleError> {
        Machine {
            input: pickle,
            at: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            copied: 0,
        }
        .run()
    }

    #[test]
    fn refuses_any_other_global_without_running_it() {
        // pickle.dumps of os.system("echo pwned") at protocol 2.
        let evil = b"\x80\x02cposix\nsystem\nq\x00X\x0b\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.";
        let e = run(evil).unwrap_err().0;
        assert!(e.contains("refuses the global posix.system"), "{e}");
        let evil = b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.";
        assert!(run(evil).unwrap_err().0.contains("builtins.eval"));
        // The same through STACK_GLOBAL (protocol 4).
        let evil = b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x94.";
        assert!(run(evil).unwrap_err().0.contains("os.system"));
    }

    #[test]
    fn malformed_pickles_are_errors() {
        for bad in
            [&b""[..], b"\x80", b"(", b"t.", b"h\x05.", b"Q.", b"\xff", b"X\xff\xff\xff\xff", b"}K\x01s."]
        {
            assert!(run(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn memo_references_are_shared_not_copied() {
        // A pickle that doubles a tuple through the memo 30 times: 2^30 elements if copied.
        let mut p = b"\x80\x02K\x01\x85q\x00".to_vec();
        for _ in 0..30 {
            p.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        p.push(b'.');
        assert!(matches!(run(&p), Ok(Value::Tuple(..))));
        // Lists are copied: the same doubling is stopped by the copy budget.
        let mut p = b"\x80\x02]K\x01aq\x00".to_vec();
        for _ in 0..40 {
            p.extend_from_slice(b"h\x00h\x00aq\x00");
        }
        p.push(b'.');
        assert!(run(&p).unwrap_err().0.contains("copies too much"));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(b']', 100_000));
        p.extend(std::iter::repeat_n(b'a', 99_999));
        p.push(b'.');
        assert!(run(&p).unwrap_err().0.contains("nested too deeply"));
    }
}
