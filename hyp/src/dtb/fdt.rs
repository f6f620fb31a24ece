//! The flattened-device-tree reader: the header, the memory reservation block and the
//! structure block are checked once when a blob is opened ([`Fdt::open`]: every token,
//! name and property inside the blob, nesting bounded by [`MAX_DEPTH`]); after that
//! nodes and properties are read by offset without further failure modes than running
//! off a checked block.

use super::{DtbError, MAX_DEPTH, Res};

/// The size of the FDT header (version 17).
pub(super) const HEADER_SIZE: usize = 40;
pub(super) const FDT_MAGIC: u32 = 0xd00d_feed;
pub(super) const FDT_BEGIN_NODE: u32 = 1;
pub(super) const FDT_END_NODE: u32 = 2;
pub(super) const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
pub(super) const FDT_END: u32 = 9;
/// At most this many `/memreserve/` entries are accepted (guards the scan).
const MAX_MEMRESERVE: usize = 1024;

pub(super) fn be32(data: &[u8], off: usize) -> Option<u32> {
    let bytes = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

pub(super) fn be64(data: &[u8], off: usize) -> Option<u64> {
    let bytes = data.get(off..off.checked_add(8)?)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

pub(super) const fn align4(off: usize) -> usize {
    (off + 3) & !3
}

/// The NUL-terminated string at the start of `data`, as UTF-8.
pub(super) fn cstr(data: &[u8]) -> Option<&str> {
    let nul = data.iter().position(|&b| b == 0)?;
    core::str::from_utf8(&data[..nul]).ok()
}

/// A validated view of an FDT: every token, name and property in the structure block
/// has been checked to lie inside the blob.
#[derive(Clone, Copy)]
pub(super) struct Fdt<'a> {
    /// The whole blob, `totalsize` bytes.
    pub(super) data: &'a [u8],
    /// The structure block; node offsets are relative to it.
    pub(super) structs: &'a [u8],
    /// The strings block.
    pub(super) strings: &'a [u8],
    /// Offset of the memory reservation block in `data`.
    pub(super) rsv_off: usize,
}

/// A node: its name and where its body (properties, then children) starts.
#[derive(Clone, Copy)]
pub(super) struct RawNode<'a> {
    pub(super) name: &'a str,
    pub(super) body: usize,
}

/// A property.
#[derive(Clone, Copy)]
pub(super) struct RawProp<'a> {
    pub(super) name: &'a str,
    /// Offset of the name in the strings block.
    pub(super) nameoff: u32,
    pub(super) value: &'a [u8],
}

struct Header {
    totalsize: usize,
    off_struct: usize,
    off_strings: usize,
    off_rsv: usize,
    version: u32,
    last_comp: u32,
    size_strings: usize,
    size_struct: usize,
}

impl Header {
    fn read(blob: &[u8]) -> Res<Header> {
        if blob.len() < HEADER_SIZE {
            return Err(DtbError::Truncated);
        }
        let field = |i: usize| be32(blob, i * 4).ok_or(DtbError::Truncated);
        if field(0)? != FDT_MAGIC {
            return Err(DtbError::BadMagic);
        }
        Ok(Header {
            totalsize: field(1)? as usize,
            off_struct: field(2)? as usize,
            off_strings: field(3)? as usize,
            off_rsv: field(4)? as usize,
            version: field(5)?,
            last_comp: field(6)?,
            size_strings: field(8)? as usize,
            size_struct: field(9)? as usize,
        })
    }
}

impl<'a> Fdt<'a> {
    /// Checks the header, the memory reservation block and the whole structure block.
    pub(super) fn open(blob: &'a [u8]) -> Res<Fdt<'a>> {
        let h = Header::read(blob)?;
        if h.version < 17 || h.last_comp > 17 {
            return Err(DtbError::UnsupportedVersion(h.version));
        }
        if h.totalsize < HEADER_SIZE {
            return Err(DtbError::Malformed("totalsize smaller than the header"));
        }
        let data = blob.get(..h.totalsize).ok_or(DtbError::Truncated)?;
        let block = |off: usize, size: usize, what: &'static str| {
            off.checked_add(size)
                .filter(|&end| off >= HEADER_SIZE && end <= data.len())
                .map(|end| &data[off..end])
                .ok_or(DtbError::Malformed(what))
        };
        let structs = block(h.off_struct, h.size_struct, "structure block out of bounds")?;
        let strings = block(h.off_strings, h.size_strings, "strings block out of bounds")?;
        if !h.off_struct.is_multiple_of(4) {
            return Err(DtbError::Malformed("structure block misaligned"));
        }
        if !h.off_rsv.is_multiple_of(8) || h.off_rsv < HEADER_SIZE {
            return Err(DtbError::Malformed("memory reservation block misplaced"));
        }
        let fdt = Fdt {
            data,
            structs,
            strings,
            rsv_off: h.off_rsv,
        };
        // The reservation block must be terminated inside the blob.
        let mut terminated = false;
        for i in 0..MAX_MEMRESERVE {
            let off = h.off_rsv + i * 16;
            let (addr, size) =
                be64(data, off)
                    .zip(be64(data, off + 8))
                    .ok_or(DtbError::Malformed(
                        "memory reservation block not terminated",
                    ))?;
            if addr == 0 && size == 0 {
                terminated = true;
                break;
            }
        }
        if !terminated {
            return Err(DtbError::Malformed("too many memory reservations"));
        }
        fdt.validate_structure()?;
        Ok(fdt)
    }

    /// `boot_cpuid_phys` from the header.
    pub(super) fn boot_cpuid(&self) -> u32 {
        be32(self.data, 28).unwrap_or(0)
    }

    /// The memory reservation entries (address, size), terminator excluded.
    pub(super) fn memreserve(&self) -> impl Iterator<Item = (u64, u64)> + 'a {
        let data = self.data;
        let base = self.rsv_off;
        (0..MAX_MEMRESERVE)
            .map(move |i| {
                let off = base + i * 16;
                (
                    be64(data, off).unwrap_or(0),
                    be64(data, off + 8).unwrap_or(0),
                )
            })
            .take_while(|&(a, s)| a != 0 || s != 0)
    }

    fn token(&self, off: usize) -> Res<u32> {
        be32(self.structs, off).ok_or(DtbError::Malformed("structure block ends early"))
    }

    /// The next token at or after `off`, skipping NOPs: (token, its offset).
    pub(super) fn next_token(&self, mut off: usize) -> Res<(u32, usize)> {
        loop {
            let t = self.token(off)?;
            if t != FDT_NOP {
                return Ok((t, off));
            }
            off += 4;
        }
    }

    /// The node whose FDT_BEGIN_NODE token is at `off`.
    pub(super) fn node_at(&self, off: usize) -> Res<RawNode<'a>> {
        let rest = self
            .structs
            .get(off + 4..)
            .ok_or(DtbError::Malformed("node name out of bounds"))?;
        let name = cstr(rest).ok_or(DtbError::Malformed("bad node name"))?;
        Ok(RawNode {
            name,
            body: align4(off + 4 + name.len() + 1),
        })
    }

    /// The property whose FDT_PROP token is at `off`, and the offset after it.
    pub(super) fn prop_at(&self, off: usize) -> Res<(RawProp<'a>, usize)> {
        let bad = DtbError::Malformed("property out of bounds");
        let len = be32(self.structs, off + 4).ok_or(bad)? as usize;
        let nameoff = be32(self.structs, off + 8).ok_or(bad)? as usize;
        let start = off + 12;
        let end = start.checked_add(len).ok_or(bad)?;
        let value = self.structs.get(start..end).ok_or(bad)?;
        let name = self
            .strings
            .get(nameoff..)
            .and_then(cstr)
            .ok_or(DtbError::Malformed("bad property name"))?;
        Ok((
            RawProp {
                name,
                nameoff: nameoff as u32,
                value,
            },
            align4(end),
        ))
    }

    /// Walks the whole structure block once, checking every token.
    fn validate_structure(&self) -> Res<()> {
        let (t, mut off) = self.next_token(0)?;
        if t != FDT_BEGIN_NODE {
            return Err(DtbError::Malformed(
                "structure block does not start with a node",
            ));
        }
        let mut depth = 0usize;
        // Whether the current node has had a child yet (properties must come first).
        let mut seen_child = false;
        loop {
            let (t, o) = self.next_token(off)?;
            match t {
                FDT_BEGIN_NODE => {
                    if depth >= MAX_DEPTH {
                        return Err(DtbError::TooDeep);
                    }
                    off = self.node_at(o)?.body;
                    depth += 1;
                    seen_child = false;
                }
                FDT_PROP => {
                    if seen_child || depth == 0 {
                        return Err(DtbError::Malformed("property after a child node"));
                    }
                    off = self.prop_at(o)?.1;
                }
                FDT_END_NODE => {
                    if depth == 0 {
                        return Err(DtbError::Malformed("unbalanced FDT_END_NODE"));
                    }
                    depth -= 1;
                    off = o + 4;
                    seen_child = true;
                    if depth == 0 {
                        break;
                    }
                }
                _ => return Err(DtbError::Malformed("unexpected token in structure block")),
            }
        }
        match self.next_token(off)? {
            (FDT_END, _) => Ok(()),
            _ => Err(DtbError::Malformed("missing FDT_END")),
        }
    }

    pub(super) fn root(&self) -> Res<RawNode<'a>> {
        let (_, off) = self.next_token(0)?;
        self.node_at(off)
    }

    /// The properties of `node`.
    pub(super) fn props(&self, node: RawNode<'a>) -> PropIter<'a> {
        PropIter {
            fdt: *self,
            off: node.body,
        }
    }

    /// The value of `node`'s property `name`.
    pub(super) fn prop(&self, node: RawNode<'a>, name: &str) -> Option<&'a [u8]> {
        self.props(node).find(|p| p.name == name).map(|p| p.value)
    }

    /// Offset of the first token after `node`'s properties.
    pub(super) fn after_props(&self, node: RawNode<'a>) -> Res<usize> {
        let mut off = node.body;
        loop {
            let (t, o) = self.next_token(off)?;
            if t != FDT_PROP {
                return Ok(o);
            }
            off = self.prop_at(o)?.1;
        }
    }

    /// Offset just past the FDT_END_NODE of the node beginning at `off`.
    pub(super) fn skip_node(&self, off: usize) -> Res<usize> {
        let mut off = self.node_at(off)?.body;
        let mut depth = 1usize;
        loop {
            let (t, o) = self.next_token(off)?;
            off = match t {
                FDT_BEGIN_NODE => {
                    depth += 1;
                    self.node_at(o)?.body
                }
                FDT_PROP => self.prop_at(o)?.1,
                FDT_END_NODE => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(o + 4);
                    }
                    o + 4
                }
                _ => return Err(DtbError::Malformed("unexpected token in node")),
            };
        }
    }

    /// The first child of `node` whose name satisfies `pred`.
    pub(super) fn child_where(
        &self,
        node: RawNode<'a>,
        pred: impl Fn(&str) -> bool,
    ) -> Res<Option<RawNode<'a>>> {
        let mut off = self.after_props(node)?;
        loop {
            let (t, o) = self.next_token(off)?;
            if t != FDT_BEGIN_NODE {
                return Ok(None);
            }
            let c = self.node_at(o)?;
            if pred(c.name) {
                return Ok(Some(c));
            }
            off = self.skip_node(o)?;
        }
    }

    /// The root's child named exactly `name` (`chosen`, `aliases`, `reserved-memory`).
    pub(super) fn top(&self, name: &str) -> Res<Option<RawNode<'a>>> {
        self.child_where(self.root()?, |n| n == name)
    }
}

/// Iterator over a node's properties (stops at the first non-property token).
pub(super) struct PropIter<'a> {
    pub(super) fdt: Fdt<'a>,
    pub(super) off: usize,
}

impl<'a> Iterator for PropIter<'a> {
    type Item = RawProp<'a>;

    fn next(&mut self) -> Option<RawProp<'a>> {
        let (t, o) = self.fdt.next_token(self.off).ok()?;
        if t != FDT_PROP {
            return None;
        }
        let (p, next) = self.fdt.prop_at(o).ok()?;
        self.off = next;
        Some(p)
    }
}
