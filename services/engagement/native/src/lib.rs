//! The ingestion API's hot path: one incoming fact (as the JSON parser left it, Python
//! dicts, lists, strings and ints) checked, its identifiers normalised and blind-indexed,
//! and its contract event written as the bytes that go to Kafka, in one pass.
//!
//! It answers only for the shapes it fully understands — a store order, an online order
//! or an interaction, with plain JSON values and an RFC 3339 instant — and returns `None`
//! for anything else: an error, a return, a number sent as a string, another form of
//! timestamp. The caller then takes the Python path (pydantic), which decides and
//! explains. So this code never rejects anything; whatever it accepts must be exactly
//! what the Python path accepts, byte for byte, which `tests/unit/test_native_fastpath.py`
//! checks on a few thousand generated and mutated events. Plain-ASCII identifiers are
//! normalised here; a phone number or a full-width value is handed to the same Python
//! normalisation the slow path uses (`crm_platform.identifiers`).

use hmac::{Hmac, Mac};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyString, PyTuple};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

// ---------------------------------------------------------------- values from Python

/// A field of a dict: `Ok(None)` when absent, `Err(())` when the fast path gives up.
type Field<'py> = Result<Option<Bound<'py, PyAny>>, ()>;

fn get<'py>(d: &Bound<'py, PyDict>, key: &Bound<'py, PyString>) -> Field<'py> {
    d.get_item(key).map_err(|_| ())
}

fn as_str(v: &Bound<'_, PyAny>) -> Result<String, ()> {
    let s = v.downcast_exact::<PyString>().map_err(|_| ())?;
    Ok(s.to_str().map_err(|_| ())?.to_owned())
}

/// A JSON integer (not a bool, not a float, not a string of digits) that fits i64.
fn as_int(v: &Bound<'_, PyAny>) -> Result<i64, ()> {
    if !v.is_exact_instance_of::<PyInt>() {
        return Err(());
    }
    v.extract::<i64>().map_err(|_| ())
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// A string with pydantic's length bounds (in characters).
fn str_in(v: &Bound<'_, PyAny>, min: usize, max: usize) -> Result<String, ()> {
    let s = as_str(v)?;
    let n = chars(&s);
    if n < min || n > max {
        return Err(());
    }
    Ok(s)
}

/// An integer within pydantic's `ge`/`le` bounds.
fn int_in(v: &Bound<'_, PyAny>, min: i64, max: i64) -> Result<i64, ()> {
    let n = as_int(v)?;
    if n < min || n > max {
        return Err(());
    }
    Ok(n)
}

fn req_str<'py>(
    d: &Bound<'py, PyDict>,
    key: &Bound<'py, PyString>,
    min: usize,
    max: usize,
) -> Result<String, ()> {
    str_in(&get(d, key)?.ok_or(())?, min, max)
}

/// An optional string (`null` or absent is `None`), at most `max` characters.
fn opt_str<'py>(
    d: &Bound<'py, PyDict>,
    key: &Bound<'py, PyString>,
    max: usize,
) -> Result<Option<String>, ()> {
    match get(d, key)? {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => Ok(Some(str_in(&v, 0, max)?)),
    }
}

/// A string with a default when absent (`null` is not the default: pydantic refuses it).
fn str_or<'py>(
    d: &Bound<'py, PyDict>,
    key: &Bound<'py, PyString>,
    default: &str,
    min: usize,
    max: usize,
) -> Result<String, ()> {
    match get(d, key)? {
        None => Ok(default.to_owned()),
        Some(v) => str_in(&v, min, max),
    }
}

fn req_int<'py>(d: &Bound<'py, PyDict>, key: &Bound<'py, PyString>, min: i64, max: i64) -> Result<i64, ()> {
    int_in(&get(d, key)?.ok_or(())?, min, max)
}

fn int_or<'py>(
    d: &Bound<'py, PyDict>,
    key: &Bound<'py, PyString>,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, ()> {
    match get(d, key)? {
        None => Ok(default),
        Some(v) => int_in(&v, min, max),
    }
}

fn opt_int<'py>(
    d: &Bound<'py, PyDict>,
    key: &Bound<'py, PyString>,
    min: i64,
    max: i64,
) -> Result<Option<i64>, ()> {
    match get(d, key)? {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => Ok(Some(int_in(&v, min, max)?)),
    }
}

/// One of a literal's or enum's values (a default when absent).
fn choice<'py>(
    d: &Bound<'py, PyDict>,
    key: &Bound<'py, PyString>,
    allowed: &[&str],
    default: Option<&str>,
) -> Result<String, ()> {
    match get(d, key)? {
        None => default.map(str::to_owned).ok_or(()),
        Some(v) => {
            let s = as_str(&v)?;
            if allowed.contains(&s.as_str()) {
                Ok(s)
            } else {
                Err(())
            }
        }
    }
}

fn dict<'py>(v: &Bound<'py, PyAny>) -> Result<Bound<'py, PyDict>, ()> {
    Ok(v.downcast_exact::<PyDict>().map_err(|_| ())?.clone())
}

// ---------------------------------------------------------------- time

fn digits(b: &[u8]) -> Result<i64, ()> {
    let mut n = 0i64;
    for &c in b {
        if !c.is_ascii_digit() {
            return Err(());
        }
        n = n * 10 + i64::from(c - b'0');
    }
    Ok(n)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|±HH:MM)` as microseconds since the epoch (UTC), for
/// instants from 1970 to 2255; any other form or instant is left to pydantic.
fn parse_instant(s: &str) -> Result<i64, ()> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return Err(());
    }
    let (y, mo, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (h, mi, sec) = (digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?);
    if !(1970..=9998).contains(&y) || !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return Err(());
    }
    if h > 23 || mi > 59 || sec > 59 {
        return Err(());
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        let n = end - start;
        if n == 0 || n > 6 {
            return Err(());
        }
        micros = digits(&b[start..end])? * 10i64.pow((6 - n) as u32);
        i = end;
    }
    let offset_s = match &b[i..] {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), oh1, oh2, b':', om1, om2] => {
            let (oh, om) = (digits(&[*oh1, *oh2])?, digits(&[*om1, *om2])?);
            if oh > 23 || om > 59 {
                return Err(());
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return Err(()),
    };
    let local = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec;
    let utc = local - offset_s;
    let micros = utc * 1_000_000 + micros;
    // From 2255 on, microseconds since the epoch no longer fit a double exactly, and the
    // millisecond of the event id would depend on the rounding (Python divides exactly).
    if utc < 0 || micros >= 1 << 53 {
        return Err(());
    }
    Ok(micros)
}

/// How pydantic writes a UTC instant: `2026-11-01T00:00:00Z`, or with `.ffffff`.
fn write_instant(out: &mut Vec<u8>, micros: i64) {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let tod = secs.rem_euclid(86_400);
    let mut s = format!(
        "\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        y,
        m,
        d,
        tod / 3600,
        (tod % 3600) / 60,
        tod % 60
    );
    if frac != 0 {
        s.push_str(&format!(".{frac:06}"));
    }
    s.push_str("Z\"");
    out.extend_from_slice(s.as_bytes());
}

// ---------------------------------------------------------------- identifiers

const KINDS: [&str; 7] = [
    "member_no",
    "pos_card",
    "ec_account",
    "line_id",
    "email",
    "phone",
    "device",
];
const KIND_MAX: [usize; 7] = [128, 128, 128, 128, 320, 64, 128];

/// Printable ASCII without spaces: NFKC and `strip()` leave it as it is.
fn plain_ascii(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| (0x21..=0x7e).contains(&c))
}

fn domain_ok(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// `crm_platform.identifiers.normalise` for a plain-ASCII value; `Err` for a phone
/// number, anything else, and every invalid value (Python normalises or refuses those).
fn normalise(kind: &str, raw: &str, plus_addressing: &[String]) -> Result<String, ()> {
    if !plain_ascii(raw) {
        return Err(());
    }
    match kind {
        "email" => {
            let value = raw.to_ascii_lowercase();
            let (local, domain) = value.split_once('@').ok_or(())?;
            if local.is_empty() || local.chars().count() > 64 || domain.contains('@') || !domain_ok(domain) {
                return Err(());
            }
            let domain = if domain == "googlemail.com" {
                "gmail.com"
            } else {
                domain
            };
            let mut local = local.to_owned();
            if plus_addressing.iter().any(|d| d == domain) {
                local = local.split('+').next().unwrap_or("").to_owned();
            }
            if domain == "gmail.com" {
                local = local.replace('.', "");
            }
            if local.is_empty() {
                return Err(());
            }
            Ok(format!("{local}@{domain}"))
        }
        "member_no" | "pos_card" => {
            let value: String = raw.to_ascii_uppercase().chars().filter(|c| *c != '-').collect();
            let b = value.as_bytes();
            if b.is_empty()
                || b.len() > 64
                || !(b[0].is_ascii_uppercase() || b[0].is_ascii_digit())
                || !b
                    .iter()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || b"_.:".contains(c))
            {
                return Err(());
            }
            Ok(value)
        }
        "ec_account" | "line_id" | "device" => {
            if raw.len() > 128 {
                return Err(());
            }
            Ok(raw.to_ascii_uppercase())
        }
        _ => Err(()), // a phone number: phonenumbers decides
    }
}

// ---------------------------------------------------------------- JSON out

fn w(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
}

fn w_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("a str always serialises");
}

fn w_opt_str(out: &mut Vec<u8>, s: &Option<String>) {
    match s {
        Some(s) => w_str(out, s),
        None => w(out, "null"),
    }
}

fn w_int(out: &mut Vec<u8>, n: i64) {
    w(out, &n.to_string());
}

fn w_opt_int(out: &mut Vec<u8>, n: Option<i64>) {
    match n {
        Some(n) => w_int(out, n),
        None => w(out, "null"),
    }
}

/// `"name":value` after the text `key` (which carries the comma and the quotes).
fn kv_str(out: &mut Vec<u8>, key: &str, value: &str) {
    w(out, key);
    w_str(out, value);
}

fn kv_opt_str(out: &mut Vec<u8>, key: &str, value: &Option<String>) {
    w(out, key);
    w_opt_str(out, value);
}

fn kv_int(out: &mut Vec<u8>, key: &str, value: i64) {
    w(out, key);
    w_int(out, value);
}

fn kv_opt_int(out: &mut Vec<u8>, key: &str, value: Option<i64>) {
    w(out, key);
    w_opt_int(out, value);
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

fn uuid_string(b: &[u8; 16]) -> String {
    let h = hex(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A client's event id in canonical form (8-4-4-4-12 hex), lower-cased as pydantic
/// writes a UUID.
fn parse_uuid(s: &str) -> Result<String, ()> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return Err(());
    }
    for (i, c) in b.iter().enumerate() {
        let dash = matches!(i, 8 | 13 | 18 | 23);
        if dash != (*c == b'-') || (!dash && !c.is_ascii_hexdigit()) {
            return Err(());
        }
    }
    Ok(s.to_ascii_lowercase())
}

/// `crm_contracts.envelope.deterministic_event_id`: a UUIDv7 of the instant's
/// millisecond and SHA-256 of the parts joined by `|`.
fn deterministic_event_id(micros: i64, parts: &[String]) -> String {
    // Python: int(occurred_at.timestamp() * 1000), both steps in floating point.
    let ts = micros as f64 / 1e6;
    let millis = ((ts * 1000.0) as i64 as u64) & ((1u64 << 48) - 1);
    let digest = Sha256::digest(parts.join("|").as_bytes());
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    b[6] = 0x70 | (digest[0] & 0x0f);
    b[7] = digest[1];
    b[8..16].copy_from_slice(&digest[2..10]);
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid_string(&b)
}

fn pystr(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "None".to_owned())
}

fn pyint(v: Option<i64>) -> String {
    v.map_or_else(|| "None".to_owned(), |n| n.to_string())
}

fn truncate_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The length of `v` as compact JSON (orjson's and serde_json's escaping are the same),
/// or `None` for a value that is not plain JSON of dicts, lists, strings, ints, bools and
/// nulls (a float, say: Python measures it).
fn json_len(v: &Bound<'_, PyAny>, depth: usize) -> Option<usize> {
    // orjson stops at 255 levels; no event of ours is a tenth as deep.
    if depth > 32 {
        return None;
    }
    if let Ok(s) = v.downcast_exact::<PyString>() {
        return Some(escaped_len(s.to_str().ok()?));
    }
    if v.is_exact_instance_of::<PyInt>() {
        return Some(v.extract::<i64>().ok()?.to_string().len());
    }
    if v.is_none() {
        return Some(4);
    }
    if let Ok(b) = v.downcast_exact::<pyo3::types::PyBool>() {
        return Some(if b.is_true() { 4 } else { 5 });
    }
    if let Ok(d) = v.downcast_exact::<PyDict>() {
        let mut n = 2 + d.len().saturating_sub(1); // braces, commas
        for (k, v) in d.iter() {
            n += escaped_len(k.downcast_exact::<PyString>().ok()?.to_str().ok()?)
                + 1
                + json_len(&v, depth + 1)?;
        }
        return Some(n);
    }
    if let Ok(l) = v.downcast_exact::<PyList>() {
        let mut n = 2 + l.len().saturating_sub(1);
        for v in l.iter() {
            n += json_len(&v, depth + 1)?;
        }
        return Some(n);
    }
    None
}

fn escaped_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|c| match c {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

// ---------------------------------------------------------------- the fast path

struct Line {
    line_no: i64,
    sku: String,
    quantity: i64,
    amount: i64,
}

const PAYMENT_METHODS: [&str; 10] = [
    "cash",
    "credit_card",
    "debit_card",
    "e_money",
    "qr",
    "points",
    "bank_transfer",
    "cash_on_delivery",
    "convenience_store",
    "other",
];
const INTERACTION_KINDS: [&str; 7] = [
    "product_viewed",
    "added_to_cart",
    "removed_from_cart",
    "searched",
    "checkout_started",
    "app_opened",
    "page_viewed",
];

/// `_OrderBase` of the contract, written from `order_id` to `points_used`; the lines
/// for the ledger.
fn order_base(p: &Bound<'_, PyDict>, out: &mut Vec<u8>) -> Result<(String, Vec<Line>), ()> {
    let order_id = req_str(p, intern!(p.py(), "order_id"), 1, 128)?;
    let currency = choice(p, intern!(p.py(), "currency"), &["JPY"], Some("JPY"))?;
    let lines_v = get(p, intern!(p.py(), "lines"))?.ok_or(())?;
    let lines_l = lines_v.downcast_exact::<PyList>().map_err(|_| ())?;
    if lines_l.is_empty() || lines_l.len() > 1000 {
        return Err(());
    }
    let order_discount = int_or(p, intern!(p.py(), "order_discount"), 0, 0, i64::MAX)?;
    let shipping = int_or(p, intern!(p.py(), "shipping"), 0, 0, i64::MAX)?;
    let total = req_int(p, intern!(p.py(), "total"), 0, i64::MAX)?;
    let tax = int_or(p, intern!(p.py(), "tax"), 0, 0, i64::MAX)?;
    let payment = choice(
        p,
        intern!(p.py(), "payment_method"),
        &PAYMENT_METHODS,
        Some("other"),
    )?;
    let points_used = int_or(p, intern!(p.py(), "points_used"), 0, 0, i64::MAX)?;

    kv_str(out, "{\"order_id\":", &order_id);
    kv_str(out, ",\"currency\":", &currency);
    w(out, ",\"lines\":[");
    let mut lines = Vec::with_capacity(lines_l.len());
    let mut sum: i128 = 0;
    for (n, item) in lines_l.iter().enumerate() {
        let l = dict(&item)?;
        let line_no = req_int(&l, intern!(l.py(), "line_no"), 1, 10_000)?;
        let sku = req_str(&l, intern!(l.py(), "sku"), 1, 64)?;
        let category = req_str(&l, intern!(l.py(), "category"), 1, 64)?;
        let quantity = req_int(&l, intern!(l.py(), "quantity"), 1, 100_000)?;
        let unit_price = req_int(&l, intern!(l.py(), "unit_price"), 0, 100_000_000)?;
        let discount = int_or(&l, intern!(l.py(), "discount"), 0, 0, i64::MAX)?;
        let line_tax = int_or(&l, intern!(l.py(), "tax"), 0, 0, i64::MAX)?;
        let gross = quantity * unit_price; // at most 1e13
        if discount > gross {
            return Err(());
        }
        if n > 0 {
            w(out, ",");
        }
        kv_int(out, "{\"line_no\":", line_no);
        kv_str(out, ",\"sku\":", &sku);
        kv_str(out, ",\"category\":", &category);
        kv_int(out, ",\"quantity\":", quantity);
        kv_int(out, ",\"unit_price\":", unit_price);
        kv_int(out, ",\"discount\":", discount);
        kv_int(out, ",\"tax\":", line_tax);
        w(out, "}");
        let amount = gross - discount;
        sum += i128::from(amount);
        lines.push(Line {
            line_no,
            sku,
            quantity,
            amount,
        });
    }
    if sum + i128::from(shipping) - i128::from(order_discount) != i128::from(total) {
        return Err(());
    }
    kv_int(out, "],\"order_discount\":", order_discount);
    kv_int(out, ",\"shipping\":", shipping);
    kv_int(out, ",\"total\":", total);
    kv_int(out, ",\"tax\":", tax);
    kv_str(out, ",\"payment_method\":", &payment);
    kv_int(out, ",\"points_used\":", points_used);
    Ok((order_id, lines))
}

/// What the caller gets for an event it may publish as is.
struct Prepared {
    kind: u8, // 0 store order, 1 online order, 2 interaction
    event_id: String,
    customer_key: String,
    wire: Vec<u8>,
    order_id: Option<String>,
    store_id: Option<String>,
    lines: Vec<Line>,
}

#[pyclass(frozen)]
struct FastPath {
    mac: HmacSha256,
    producer: String,
    max_event_bytes: usize,
    /// `(kind, raw) -> blind index` in Python, for the identifiers `normalise` leaves
    /// alone (phone numbers, full-width or otherwise non-ASCII values); it raises for an
    /// invalid one.
    blind_in_python: Py<PyAny>,
    /// Domains where `local+tag` is `local` (`crm_platform.identifiers.PLUS_ADDRESSING`).
    plus_addressing: Vec<String>,
}

impl FastPath {
    fn blind(&self, kind: &str, value: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(kind.as_bytes());
        mac.update(b":");
        mac.update(value.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    fn run(&self, raw: &Bound<'_, PyAny>, source: &str, recorded_at: i64) -> Result<Prepared, ()> {
        let e = dict(raw)?;
        if json_len(raw, 0).ok_or(())? > self.max_event_bytes {
            return Err(()); // Python measures it again and refuses it (413)
        }
        // The envelope refuses unknown fields (extra="forbid").
        let (mut type_v, mut id_v, mut at_v, mut ids_v, mut payload_v) = (None, None, None, None, None);
        for (k, v) in e.iter() {
            let slot = match k
                .downcast_exact::<PyString>()
                .map_err(|_| ())?
                .to_str()
                .map_err(|_| ())?
            {
                "type" => &mut type_v,
                "event_id" => &mut id_v,
                "occurred_at" => &mut at_v,
                "identifiers" => &mut ids_v,
                "payload" => &mut payload_v,
                _ => return Err(()),
            };
            *slot = Some(v);
        }
        let kind = match as_str(&type_v.ok_or(())?)?.as_str() {
            "store_order" => 0u8,
            "online_order" => 1,
            "interaction" => 2,
            _ => return Err(()), // a return, or an error
        };
        let given_id = match id_v {
            None => None,
            Some(v) if v.is_none() => None,
            Some(v) => Some(parse_uuid(&as_str(&v)?)?),
        };
        let at = parse_instant(&as_str(&at_v.ok_or(())?)?)?;

        // Identifiers, strongest first, as (kind, blind index); unknown kinds refused.
        let mut idents: Vec<(usize, String)> = Vec::new();
        if let Some(v) = ids_v {
            for (k, v) in dict(&v)?.iter() {
                let name = k
                    .downcast_exact::<PyString>()
                    .map_err(|_| ())?
                    .to_str()
                    .map_err(|_| ())?;
                let i = KINDS.iter().position(|kind| *kind == name).ok_or(())?;
                if v.is_none() {
                    continue;
                }
                let raw_value = as_str(&v)?;
                if chars(&raw_value) > KIND_MAX[i] {
                    return Err(());
                }
                let hash = match normalise(KINDS[i], &raw_value, &self.plus_addressing) {
                    Ok(value) => self.blind(KINDS[i], &value),
                    Err(()) => self
                        .blind_in_python
                        .call1(raw.py(), (KINDS[i], raw_value))
                        .and_then(|h| h.extract::<String>(raw.py()))
                        .map_err(|_| ())?, // invalid: the Python path says why
                };
                idents.push((i, hash));
            }
            idents.sort_by_key(|(i, _)| *i);
        }
        let payload = dict(&payload_v.ok_or(())?)?;

        let mut body = Vec::with_capacity(512);
        let mut order_id = None;
        let mut store_id = None;
        let mut lines = Vec::new();
        let (event_type, event_id, customer_key);
        match kind {
            0 | 1 => {
                let (oid, ls) = order_base(&payload, &mut body)?;
                if kind == 0 {
                    let sid = req_str(&payload, intern!(payload.py(), "store_id"), 1, 64)?;
                    let register = opt_str(&payload, intern!(payload.py(), "register_id"), 64)?;
                    let receipt = opt_str(&payload, intern!(payload.py(), "receipt_no"), 64)?;
                    let staff = opt_str(&payload, intern!(payload.py(), "staff_id"), 64)?;
                    kv_str(&mut body, ",\"store_id\":", &sid);
                    kv_opt_str(&mut body, ",\"register_id\":", &register);
                    kv_opt_str(&mut body, ",\"receipt_no\":", &receipt);
                    kv_opt_str(&mut body, ",\"staff_id\":", &staff);
                    store_id = Some(sid);
                    event_type = "order.store_completed";
                } else {
                    let channel = choice(
                        &payload,
                        intern!(payload.py(), "channel"),
                        &["online", "app"],
                        Some("online"),
                    )?;
                    let shop = str_or(&payload, intern!(payload.py(), "shop_id"), "web", 1, 64)?;
                    let prefecture = opt_str(&payload, intern!(payload.py(), "shipping_prefecture"), 8)?;
                    let coupon = opt_str(&payload, intern!(payload.py(), "coupon_code"), 64)?;
                    kv_str(&mut body, ",\"channel\":", &channel);
                    kv_str(&mut body, ",\"shop_id\":", &shop);
                    kv_opt_str(&mut body, ",\"shipping_prefecture\":", &prefecture);
                    kv_opt_str(&mut body, ",\"coupon_code\":", &coupon);
                    event_type = "order.online_completed";
                }
                w(&mut body, "}");
                let group = if kind == 0 { "store" } else { "online" };
                // A store order's id is its store's (Python's `_id_part`: the store id
                // length first, so that no two (store, order) pairs join alike).
                event_id = match (given_id, &store_id) {
                    (Some(id), _) => id,
                    (None, Some(sid)) => deterministic_event_id(
                        at,
                        &["store".to_owned(), format!("{}:{sid}", chars(sid)), oid.clone()],
                    ),
                    (None, None) => deterministic_event_id(at, &[group.to_owned(), oid.clone()]),
                };
                customer_key = match idents.first() {
                    Some((_, hash)) => hash.clone(),
                    None => format!("anonymous:{}", truncate_chars(&format!("{group}:{oid}"), 100)),
                };
                order_id = Some(oid);
                lines = ls;
            }
            _ => {
                let ikind = choice(&payload, intern!(payload.py(), "kind"), &INTERACTION_KINDS, None)?;
                let channel = choice(
                    &payload,
                    intern!(payload.py(), "channel"),
                    &["online", "app"],
                    Some("online"),
                )?;
                let session = opt_str(&payload, intern!(payload.py(), "session_id"), 128)?;
                let sku = opt_str(&payload, intern!(payload.py(), "sku"), 64)?;
                let category = opt_str(&payload, intern!(payload.py(), "category"), 64)?;
                let quantity = opt_int(&payload, intern!(payload.py(), "quantity"), 1, 100_000)?;
                let unit_price = opt_int(&payload, intern!(payload.py(), "unit_price"), 0, 100_000_000)?;
                let query = opt_str(&payload, intern!(payload.py(), "query"), 256)?;
                let page = opt_str(&payload, intern!(payload.py(), "page"), 512)?;
                let app_version = opt_str(&payload, intern!(payload.py(), "app_version"), 32)?;
                let empty = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
                if matches!(
                    ikind.as_str(),
                    "product_viewed" | "added_to_cart" | "removed_from_cart"
                ) && empty(&sku)
                {
                    return Err(());
                }
                if ikind == "searched" && empty(&query) {
                    return Err(());
                }
                kv_str(&mut body, "{\"kind\":", &ikind);
                kv_str(&mut body, ",\"channel\":", &channel);
                kv_opt_str(&mut body, ",\"session_id\":", &session);
                kv_opt_str(&mut body, ",\"sku\":", &sku);
                kv_opt_str(&mut body, ",\"category\":", &category);
                kv_opt_int(&mut body, ",\"quantity\":", quantity);
                kv_opt_int(&mut body, ",\"unit_price\":", unit_price);
                kv_opt_str(&mut body, ",\"query\":", &query);
                kv_opt_str(&mut body, ",\"page\":", &page);
                kv_opt_str(&mut body, ",\"app_version\":", &app_version);
                w(&mut body, "}");
                event_type = "interaction.recorded";
                event_id = match given_id {
                    Some(id) => id,
                    None => {
                        let mut parts = vec!["interaction".to_owned(), source.to_owned()];
                        parts.extend(idents.iter().map(|(_, h)| h.clone()));
                        parts.extend([
                            ikind.clone(),
                            channel.clone(),
                            pystr(&session),
                            pystr(&sku),
                            pystr(&category),
                            pyint(quantity),
                            pyint(unit_price),
                            pystr(&query),
                            pystr(&page),
                            pystr(&app_version),
                        ]);
                        deterministic_event_id(at, &parts)
                    }
                };
                customer_key = match (idents.first(), &session) {
                    (Some((_, hash)), _) => hash.clone(),
                    (None, Some(s)) if !s.is_empty() => {
                        format!("anonymous:{}", truncate_chars(&format!("session:{s}"), 100))
                    }
                    _ => format!("anonymous:{}", truncate_chars(&format!("event:{event_id}"), 100)),
                };
            }
        }

        let mut wire = Vec::with_capacity(body.len() + 400);
        kv_str(&mut wire, "{\"event_id\":", &event_id);
        kv_str(&mut wire, ",\"event_type\":", event_type);
        w(&mut wire, ",\"schema_version\":1,\"occurred_at\":");
        write_instant(&mut wire, at);
        w(&mut wire, ",\"recorded_at\":");
        write_instant(&mut wire, recorded_at);
        kv_str(&mut wire, ",\"producer\":", &self.producer);
        kv_str(&mut wire, ",\"customer_key\":", &customer_key);
        w(&mut wire, ",\"identifiers\":[");
        for (i, (k, h)) in idents.iter().enumerate() {
            if i > 0 {
                w(&mut wire, ",");
            }
            w(&mut wire, "{\"kind\":\"");
            w(&mut wire, KINDS[*k]);
            w(&mut wire, "\",\"hash\":\"");
            w(&mut wire, h);
            w(&mut wire, "\"}");
        }
        w(&mut wire, "],\"trace\":null,\"payload\":");
        wire.extend_from_slice(&body);
        w(&mut wire, "}");
        Ok(Prepared {
            kind,
            event_id,
            customer_key,
            wire,
            order_id,
            store_id,
            lines,
        })
    }
}

#[pymethods]
impl FastPath {
    #[new]
    fn new(
        key: &[u8],
        producer: &str,
        max_event_bytes: usize,
        blind_in_python: Py<PyAny>,
        plus_addressing: Vec<String>,
    ) -> PyResult<Self> {
        if key.len() < 32 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "blind index key must be at least 32 bytes",
            ));
        }
        let mac = HmacSha256::new_from_slice(key)
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
        Ok(Self {
            mac,
            producer: producer.to_owned(),
            max_event_bytes,
            blind_in_python,
            plus_addressing,
        })
    }

    /// `(kind, event_id, customer_key, wire bytes, order_id, store_id, lines)` of an
    /// event the fast path understands and no larger than `max_event_bytes` as JSON — `kind` 0 a store order, 1 an online order, 2
    /// an interaction; `lines` maps line_no to (sku, quantity, amount) for the order
    /// ledger — or `None`: take the Python path.
    fn prepare<'py>(
        &self,
        py: Python<'py>,
        raw: &Bound<'py, PyAny>,
        source: &str,
        recorded_at_micros: i64,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        // A bug here must cost the fast path, not the request: a panic takes the Python
        // path like anything else this code does not handle.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run(raw, source, recorded_at_micros)
        }));
        let Ok(Ok(p)) = run else {
            return Ok(None);
        };
        let lines = if p.kind == 2 {
            py.None().into_bound(py)
        } else {
            let d = PyDict::new(py);
            for l in &p.lines {
                d.set_item(l.line_no, (l.sku.as_str(), l.quantity, l.amount))?;
            }
            d.into_any()
        };
        let t = PyTuple::new(
            py,
            [
                p.kind.into_pyobject(py)?.into_any(),
                PyString::new(py, &p.event_id).into_any(),
                PyString::new(py, &p.customer_key).into_any(),
                PyBytes::new(py, &p.wire).into_any(),
                p.order_id.into_pyobject(py)?.into_any(),
                p.store_id.into_pyobject(py)?.into_any(),
                lines,
            ],
        )?;
        Ok(Some(t))
    }
}

#[pymodule]
fn engagement_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<FastPath>()?;
    Ok(())
}
