//! A tiny FDT builder for hand-made edge cases, and the boards built with it.

use super::*;

#[derive(Default)]
pub(super) struct Builder {
    structs: Vec<u8>,
    strings: Vec<u8>,
    pub(super) rsv: Vec<(u64, u64)>,
}

impl Builder {
    pub(super) fn begin(&mut self, name: &str) -> &mut Self {
        self.structs
            .extend_from_slice(&FDT_BEGIN_NODE.to_be_bytes());
        self.structs.extend_from_slice(name.as_bytes());
        self.structs.push(0);
        while !self.structs.len().is_multiple_of(4) {
            self.structs.push(0);
        }
        self
    }

    pub(super) fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let off = find_string(&self.strings, name).unwrap_or_else(|| {
            let o = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            o
        });
        self.structs.extend_from_slice(&FDT_PROP.to_be_bytes());
        self.structs
            .extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.structs.extend_from_slice(&off.to_be_bytes());
        self.structs.extend_from_slice(value);
        while !self.structs.len().is_multiple_of(4) {
            self.structs.push(0);
        }
        self
    }

    pub(super) fn end(&mut self) -> &mut Self {
        self.structs.extend_from_slice(&FDT_END_NODE.to_be_bytes());
        self
    }

    pub(super) fn finish(&self) -> Vec<u8> {
        let mut structs = self.structs.clone();
        structs.extend_from_slice(&FDT_END.to_be_bytes());
        let off_rsv = HEADER_SIZE;
        let off_struct = off_rsv + (self.rsv.len() + 1) * 16;
        let off_strings = off_struct + structs.len();
        let total = off_strings + self.strings.len();
        let mut out = Vec::new();
        for v in [
            FDT_MAGIC,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            off_rsv as u32,
            17,
            16,
            0,
            self.strings.len() as u32,
            structs.len() as u32,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        for &(a, s) in self.rsv.iter().chain([(0, 0)].iter()) {
            out.extend_from_slice(&a.to_be_bytes());
            out.extend_from_slice(&s.to_be_bytes());
        }
        out.extend_from_slice(&structs);
        out.extend_from_slice(&self.strings);
        out
    }
}

pub(super) fn cells(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|c| c.to_be_bytes()).collect()
}

pub(super) fn s(v: &str) -> Vec<u8> {
    let mut b = v.as_bytes().to_vec();
    b.push(0);
    b
}

/// A minimal board: no /chosen, no /reserved-memory, 1+1 root cells.
pub(super) fn minimal() -> Vec<u8> {
    let mut b = Builder::default();
    b.begin("")
        .prop("#address-cells", &cells(&[1]))
        .prop("#size-cells", &cells(&[1]))
        .begin("memory@10000000")
        .prop("device_type", &s("memory"))
        .prop("reg", &cells(&[0x1000_0000, 0x1000_0000]))
        .end()
        .begin("uart@1000")
        .prop("compatible", &s("vendor,unknown-uart"))
        .prop("reg", &cells(&[0x1000, 0x100]))
        .end()
        .end();
    b.finish()
}

/// A board whose secondary CPUs use spin tables (and one PSCI CPU).
pub(super) fn spin_table_board() -> Vec<u8> {
    let mut b = Builder::default();
    b.rsv.push((0x8800_0800, 0x2000));
    let spin = |b: &mut Builder, name: &str, reg: u32, release: u64, status: Option<&str>| {
        b.begin(name)
            .prop("device_type", &s("cpu"))
            .prop("reg", &cells(&[reg]))
            .prop("enable-method", &s("spin-table"))
            .prop("cpu-release-addr", &release.to_be_bytes());
        if let Some(st) = status {
            b.prop("status", &s(st));
        }
        b.end();
    };
    b.begin("")
        .prop("#address-cells", &cells(&[1]))
        .prop("#size-cells", &cells(&[1]))
        .begin("memory@80000000")
        .prop("device_type", &s("memory"))
        .prop("reg", &cells(&[0x8000_0000, 0x1000_0000]))
        .end()
        .begin("cpus")
        .prop("#address-cells", &cells(&[1]))
        .prop("#size-cells", &cells(&[0]));
    spin(&mut b, "cpu@0", 0, 0x8000_0ff8, None);
    spin(&mut b, "cpu@1", 1, 0x8000_0ff8, Some("okay"));
    // Straddles two pages.
    spin(&mut b, "cpu@2", 2, 0x8000_1ffc, None);
    // Disabled: quiescent, waiting on its release address all the same.
    spin(&mut b, "cpu@3", 3, 0x9000_0000, Some("disabled"));
    // Its release address lies in a reservation: firmware's holding pen.
    spin(&mut b, "cpu@4", 4, 0x8800_1010, None);
    b.begin("cpu@100")
        .prop("device_type", &s("cpu"))
        .prop("reg", &cells(&[0x100]))
        .prop("enable-method", &s("psci"))
        .end()
        .end()
        .end();
    b.finish()
}

/// A GICv3 board whose ITS node is `its_first` before the GIC node (a sibling), or a
/// child of it; `v3 = false` makes the interrupt controller a GICv2.
pub(super) fn its_board(its_first: bool, v3: bool) -> Vec<u8> {
    let mut b = Builder::default();
    let its = |b: &mut Builder| {
        b.begin("its@8080000")
            .prop("compatible", &s("arm,gic-v3-its"))
            .prop("msi-controller", &[])
            .prop("reg", &cells(&[0x808_0000, 0x2_0000]))
            .end();
    };
    b.begin("")
        .prop("#address-cells", &cells(&[1]))
        .prop("#size-cells", &cells(&[1]))
        .begin("memory@40000000")
        .prop("device_type", &s("memory"))
        .prop("reg", &cells(&[0x4000_0000, 0x1000_0000]))
        .end();
    if its_first {
        its(&mut b);
    }
    b.begin("intc@8000000");
    if v3 {
        b.prop("compatible", &s("arm,gic-v3")).prop(
            "reg",
            &cells(&[0x800_0000, 0x1_0000, 0x80a_0000, 0xf6_0000]),
        );
    } else {
        b.prop("compatible", &s("arm,cortex-a15-gic"))
            .prop("reg", &cells(&[0x800_0000, 0x1_0000, 0x801_0000, 0x1_0000]));
    }
    b.prop("#address-cells", &cells(&[1]))
        .prop("#size-cells", &cells(&[1]))
        .prop("ranges", &[]);
    if !its_first {
        its(&mut b);
    }
    b.end().end();
    b.finish()
}
