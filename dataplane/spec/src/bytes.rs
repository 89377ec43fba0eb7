//! Little-endian field access at fixed offsets.
//!
//! The `*_at` readers take fixed-size arrays or slices that the caller has
//! already sized; the `get_*` readers are for untrusted slices and read bytes
//! past the end as zero, so a short buffer can never panic.

#[inline]
pub(crate) fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([get(b, off), get(b, off + 1)])
}

#[inline]
pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([
        get(b, off),
        get(b, off + 1),
        get(b, off + 2),
        get(b, off + 3),
    ])
}

#[inline]
pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | (u64::from(u32_at(b, off + 4)) << 32)
}

/// Byte `off` of `b`, or zero when `b` is shorter.
#[inline]
pub(crate) fn get(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}

/// Copies `N` bytes starting at `off` (zero where `b` is shorter).
#[inline]
pub(crate) fn array_at<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = b.get(off..) {
        let n = src.len().min(N);
        out[..n].copy_from_slice(&src[..n]);
    }
    out
}

#[inline]
pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

#[inline]
pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

#[inline]
pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// The text of a NUL-padded fixed field: everything before the first NUL.
/// Invalid UTF-8 yields the longest valid prefix.
pub(crate) fn nul_trimmed_str(field: &[u8]) -> &str {
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    let raw = &field[..end];
    match core::str::from_utf8(raw) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&raw[..e.valid_up_to()]).unwrap_or(""),
    }
}

/// Like [`nul_trimmed_str`] but refuses invalid UTF-8.
pub(crate) fn nul_trimmed_str_checked<'a>(
    field: &'a [u8],
    name: &'static str,
) -> Result<&'a str, crate::SpecError> {
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    core::str::from_utf8(&field[..end]).map_err(|_| crate::SpecError::InvalidUtf8 { field: name })
}

/// `s` copied into an `N`-byte field padded with `pad`, truncated to `max`
/// bytes (so a NUL-padded field can keep a terminator).
pub(crate) fn padded<const N: usize>(s: &str, pad: u8, max: usize) -> [u8; N] {
    let mut out = [pad; N];
    let n = s.len().min(max).min(N);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}
