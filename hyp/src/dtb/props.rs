//! Decoding property values — strings, string lists, cells and prop-encoded arrays —
//! and the fallible-allocation helpers the owned results of [`super::Platform::parse`]
//! and [`super::device_nodes`] are built with.

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

use super::fdt::be32;
use super::{DtbError, Res};
use crate::addr::PhysRange;

/// Whether a path component names a node: exactly, or by its name without unit address.
pub(super) fn component_matches(comp: &str, name: &str) -> bool {
    comp == name || (!comp.contains('@') && name.split('@').next() == Some(comp))
}

/// Whether a string-list property contains `s`.
pub(super) fn strlist_has(value: Option<&[u8]>, s: &str) -> bool {
    value.is_some_and(|v| v.split(|&b| b == 0).any(|x| x == s.as_bytes()))
}

/// A string property (one string, NUL-terminated or not).
pub(super) fn prop_str<'v>(value: &'v [u8], what: &'static str) -> Res<&'v str> {
    let s = value.split(|&b| b == 0).next().unwrap_or(&[]);
    core::str::from_utf8(s).map_err(|_| DtbError::BadProperty(what))
}

/// A one-cell property.
pub(super) fn prop_u32(value: &[u8], what: &'static str) -> Res<u32> {
    if value.len() != 4 {
        return Err(DtbError::BadProperty(what));
    }
    be32(value, 0).ok_or(DtbError::BadProperty(what))
}

/// Whether a node is available (`status` absent, `okay` or `ok`).
pub(super) fn status_ok(value: Option<&[u8]>) -> bool {
    match value {
        None => true,
        Some(v) => matches!(prop_str(v, "status"), Ok("okay" | "ok")),
    }
}

/// A number of `cells` big-endian cells (at most 4).
pub(super) fn read_cells(data: &[u8], cells: u32) -> Option<u128> {
    if cells > 4 || data.len() != cells as usize * 4 {
        return None;
    }
    Some(data.chunks_exact(4).fold(0u128, |acc, c| {
        (acc << 32) | u128::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }))
}

/// Decodes a prop-encoded array of `N`-field tuples with the given cell widths.
pub(super) fn tuples<const N: usize>(
    value: &[u8],
    widths: [u32; N],
) -> Option<impl Iterator<Item = [u128; N]> + '_> {
    if widths.iter().any(|&w| w > 4) {
        return None;
    }
    let len = widths.iter().sum::<u32>() as usize * 4;
    if len == 0 {
        if !value.is_empty() {
            return None;
        }
    } else if !value.len().is_multiple_of(len) {
        return None;
    }
    Some(value.chunks_exact(len.max(1)).map(move |chunk| {
        let mut out = [0u128; N];
        let mut off = 0;
        for (slot, &w) in out.iter_mut().zip(widths.iter()) {
            let n = w as usize * 4;
            *slot = read_cells(&chunk[off..off + n], w).unwrap_or(0);
            off += n;
        }
        out
    }))
}

pub(super) fn push<T>(v: &mut Vec<T>, item: T) -> Res<()> {
    v.try_reserve(1).map_err(|_| DtbError::NoMemory)?;
    v.push(item);
    Ok(())
}

pub(super) fn owned(s: &str) -> Res<String> {
    let mut out = String::new();
    out.try_reserve_exact(s.len())
        .map_err(|_| DtbError::NoMemory)?;
    out.push_str(s);
    Ok(out)
}

pub(super) fn range(base: u64, size: u128, what: &'static str) -> Res<PhysRange> {
    let size = u64::try_from(size).map_err(|_| DtbError::BadProperty(what))?;
    if base.checked_add(size).is_none() {
        return Err(DtbError::BadProperty(what));
    }
    Ok(PhysRange::new(base, size))
}
