//! Warden's own options, parsed from the `/chosen/bootargs` string (see
//! [`crate::dtb::Platform::bootargs`]).
//!
//! Recognised words:
//! - `warden.log=off|error|warn|info|debug|trace` — maximum log level (default `info`);
//! - `warden.pool=<size>` — the boot-time page pool: a decimal or `0x` hexadecimal byte
//!   count with an optional `K`, `M` or `G` suffix (binary multiples), a multiple of
//!   4 KiB between [`MIN_POOL_SIZE`] and [`MAX_POOL_SIZE`] (default: the caller's);
//! - `warden.btm=on|off` — whether broadcast TLB maintenance may be used when the SMMU
//!   supports it (default `on`);
//! - `warden.batch=<n>` — batched DMA domains flush their invalidation queue once it holds
//!   `n` unmapped ranges, 1 to [`MAX_BATCH`] (default [`DEFAULT_BATCH`]);
//! - `warden.deadline_ms=<ms>` — … or once its oldest unmap is older than this many
//!   milliseconds, 1 to [`MAX_DEADLINE_MS`] (default [`DEFAULT_DEADLINE_MS`]);
//! - `warden.domain_tlbi=smmu|cpu` — how host-managed DMA domains are invalidated when BTM
//!   is in use: SMMU commands (default) or CPU TLBIs by the domain's VMID;
//! - `warden.passthrough=<path>[,<path>...]` — DTB nodes (full paths) the host may use
//!   although Warden would hide them as DMA masters outside every SMMU
//!   ([`crate::masters`]): UNPROTECTED, for board integrators; repeatable, the lists add
//!   up ([`passthrough_paths`]);
//! - `warden.smc_allow=<id>[-<id>][,…]` — SMCCC function IDs the host may call in
//!   firmware through Warden, unchanged (default: none; see [`crate::psci`]): up to
//!   [`MAX_SMC_ALLOW`](crate::psci::MAX_SMC_ALLOW) IDs or inclusive ranges, `0x`
//!   hexadecimal or decimal, written without the SVE hint (bits 23:16 of a fast call
//!   clear). PSCI, the Arm Architecture Service and Warden's own calls are decided by
//!   Warden whatever the list says. `none` (or an empty list) clears it.
//!
//! Words are separated by ASCII whitespace; double quotes group (`key="a b"`) and are
//! stripped from values, as in Linux. Words that do not start with `warden.` are ignored
//! (they may be meant for someone else). Unknown `warden.*` keys and malformed values
//! are reported as [`Warning`]s and otherwise ignored; a later word overrides an earlier
//! one. Parsing never allocates and never panics.

use core::fmt;

use log::LevelFilter;

use crate::psci::SmcAllowList;

/// The smallest accepted `warden.pool=` (1 MiB).
pub const MIN_POOL_SIZE: u64 = 1 << 20;
/// The largest accepted `warden.pool=` (16 GiB).
pub const MAX_POOL_SIZE: u64 = 16 << 30;
/// `warden.pool=` must be a multiple of this (4 KiB).
pub const POOL_GRANULE: u64 = 4 << 10;
/// Default `warden.batch=`: unmapped ranges a batched domain queues before it flushes
/// (Linux's flush queue holds 256 entries per CPU).
pub const DEFAULT_BATCH: u32 = 256;
/// Largest accepted `warden.batch=`.
pub const MAX_BATCH: u32 = 65536;
/// Default `warden.deadline_ms=` (Linux's flush queue timeout).
pub const DEFAULT_DEADLINE_MS: u32 = 10;
/// Largest accepted `warden.deadline_ms=` (one minute).
pub const MAX_DEADLINE_MS: u32 = 60_000;
/// How many warnings [`parse`] keeps; later ones are only counted.
pub const MAX_WARNINGS: usize = 8;

/// Warden's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// `warden.log=`: maximum log level.
    pub log: LevelFilter,
    /// `warden.pool=`: page pool size in bytes; `None` when not given (the caller picks
    /// its default, which may depend on the amount of RAM).
    pub pool_size: Option<u64>,
    /// `warden.btm=`: BTM may be used if the hardware has it.
    pub btm: bool,
    /// `warden.batch=`: batched-domain queue threshold, in unmapped ranges.
    pub batch: u32,
    /// `warden.deadline_ms=`: batched-domain flush deadline in milliseconds.
    pub deadline_ms: u32,
    /// `warden.domain_tlbi=cpu`: invalidate host-managed domains with CPU TLBIs when BTM
    /// is in use (`false`: SMMU commands).
    pub domain_cpu_tlbi: bool,
    /// `warden.smc_allow=`: firmware calls forwarded for the host (empty by default).
    pub smc_allow: SmcAllowList,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            log: LevelFilter::Info,
            pool_size: None,
            btm: true,
            batch: DEFAULT_BATCH,
            deadline_ms: DEFAULT_DEADLINE_MS,
            domain_cpu_tlbi: false,
            smc_allow: SmcAllowList::EMPTY,
        }
    }
}

/// The options as the command-line words that set them, in the order of the module
/// documentation (`warden.log=info warden.btm=on …`); `warden.pool=` only when given.
/// [`parse`] of the text gives the same options back.
impl fmt::Display for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let log = match self.log {
            LevelFilter::Off => "off",
            LevelFilter::Error => "error",
            LevelFilter::Warn => "warn",
            LevelFilter::Info => "info",
            LevelFilter::Debug => "debug",
            LevelFilter::Trace => "trace",
        };
        write!(f, "warden.log={log}")?;
        if let Some(size) = self.pool_size {
            match size {
                s if s.is_multiple_of(1 << 30) => write!(f, " warden.pool={}G", s >> 30)?,
                s if s.is_multiple_of(1 << 20) => write!(f, " warden.pool={}M", s >> 20)?,
                s if s.is_multiple_of(1 << 10) => write!(f, " warden.pool={}K", s >> 10)?,
                s => write!(f, " warden.pool={s}")?,
            }
        }
        write!(
            f,
            " warden.btm={} warden.batch={} warden.deadline_ms={} warden.domain_tlbi={} warden.smc_allow=",
            if self.btm { "on" } else { "off" },
            self.batch,
            self.deadline_ms,
            if self.domain_cpu_tlbi { "cpu" } else { "smmu" },
        )?;
        if self.smc_allow.is_empty() {
            return f.write_str("none");
        }
        for (i, &(a, b)) in self.smc_allow.ranges().iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            if a == b {
                write!(f, "{sep}{a:#x}")?;
            } else {
                write!(f, "{sep}{a:#x}-{b:#x}")?;
            }
        }
        Ok(())
    }
}

/// A problem with one word of the command line; the word was ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Warning<'a> {
    /// A `warden.*` key Warden does not know (the key, without value).
    UnknownKey(&'a str),
    /// A known key with a missing or malformed value.
    BadValue {
        /// The key, e.g. `warden.pool`.
        key: &'a str,
        /// The value as written (quotes stripped); empty when missing.
        value: &'a str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for Warning<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKey(k) => write!(f, "unknown option {k} ignored"),
            Self::BadValue { key, value, reason } => {
                write!(f, "{key}={value:?} ignored: {reason}")
            }
        }
    }
}

/// The result of [`parse`]: the options and the first [`MAX_WARNINGS`] warnings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// The options, defaults where nothing valid was given.
    pub options: Options,
    warnings: [Option<Warning<'a>>; MAX_WARNINGS],
    total_warnings: usize,
}

impl<'a> Parsed<'a> {
    /// The warnings kept, in command-line order.
    pub fn warnings(&self) -> impl Iterator<Item = Warning<'a>> + '_ {
        self.warnings.iter().flatten().copied()
    }

    /// How many warnings there were in all (more than kept if above [`MAX_WARNINGS`]).
    pub fn total_warnings(&self) -> usize {
        self.total_warnings
    }
}

/// Parses `args`, keeping the first [`MAX_WARNINGS`] warnings.
pub fn parse(args: &str) -> Parsed<'_> {
    let mut warnings = [None; MAX_WARNINGS];
    let mut total = 0;
    let options = parse_with(args, |w| {
        if let Some(slot) = warnings.get_mut(total) {
            *slot = Some(w);
        }
        total += 1;
    });
    Parsed {
        options,
        warnings,
        total_warnings: total,
    }
}

/// Parses `args`, calling `warn` for every warning.
pub fn parse_with<'a>(args: &'a str, mut warn: impl FnMut(Warning<'a>)) -> Options {
    let mut opts = Options::default();
    for word in (Words { rest: args }) {
        let Some(option) = word.strip_prefix("warden.") else {
            continue;
        };
        let (name, value) = match option.split_once('=') {
            Some((n, v)) => (n, Some(unquote(v))),
            None => (option, None),
        };
        let key = &word[..word.len() - option.len() + name.len()];
        // `key=` counts as missing, like `key`.
        let given = value.filter(|v| !v.is_empty()).ok_or("missing value");
        let result = match name {
            "log" => given.and_then(parse_log).map(|l| opts.log = l),
            "pool" => given.and_then(parse_pool).map(|s| opts.pool_size = Some(s)),
            "btm" => given.and_then(parse_on_off).map(|b| opts.btm = b),
            "batch" => given
                .and_then(|v| parse_count(v, MAX_BATCH))
                .map(|n| opts.batch = n),
            "deadline_ms" => given
                .and_then(|v| parse_count(v, MAX_DEADLINE_MS))
                .map(|n| opts.deadline_ms = n),
            "domain_tlbi" => given
                .and_then(parse_domain_tlbi)
                .map(|c| opts.domain_cpu_tlbi = c),
            "passthrough" => given.and_then(check_paths),
            "smc_allow" => given.and_then(parse_smc_allow).map(|l| opts.smc_allow = l),
            _ => {
                warn(Warning::UnknownKey(key));
                continue;
            }
        };
        if let Err(reason) = result {
            warn(Warning::BadValue {
                key,
                value: value.unwrap_or(""),
                reason,
            });
        }
    }
    opts
}

/// A `warden.passthrough=` value: comma-separated absolute node paths.
fn check_paths(v: &str) -> Result<(), &'static str> {
    if v.split(',').all(|p| p.starts_with('/')) {
        Ok(())
    } else {
        Err("expected comma-separated node paths, each starting with /")
    }
}

/// Every path of every valid `warden.passthrough=` word of `args`, in order (invalid
/// words are [`parse`]'s warnings and contribute nothing).
pub fn passthrough_paths(args: &str) -> impl Iterator<Item = &str> {
    (Words { rest: args })
        .filter_map(|w| w.strip_prefix("warden.passthrough="))
        .map(unquote)
        .filter(|v| !v.is_empty() && check_paths(v).is_ok())
        .flat_map(|v| v.split(','))
}

/// Whitespace-separated words; double quotes protect whitespace.
struct Words<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = self
            .rest
            .trim_start_matches(|c: char| c.is_ascii_whitespace());
        if s.is_empty() {
            self.rest = s;
            return None;
        }
        let mut quoted = false;
        let mut end = s.len();
        for (i, c) in s.char_indices() {
            if c == '"' {
                quoted = !quoted;
            } else if c.is_ascii_whitespace() && !quoted {
                end = i;
                break;
            }
        }
        self.rest = &s[end..];
        Some(&s[..end])
    }
}

/// Strips one pair of surrounding double quotes (or a lone leading one, as Linux does).
fn unquote(v: &str) -> &str {
    match v.strip_prefix('"') {
        Some(inner) => inner.strip_suffix('"').unwrap_or(inner),
        None => v,
    }
}

fn parse_log(v: &str) -> Result<LevelFilter, &'static str> {
    const LEVELS: [(&str, LevelFilter); 6] = [
        ("off", LevelFilter::Off),
        ("error", LevelFilter::Error),
        ("warn", LevelFilter::Warn),
        ("info", LevelFilter::Info),
        ("debug", LevelFilter::Debug),
        ("trace", LevelFilter::Trace),
    ];
    LEVELS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(v))
        .map(|&(_, l)| l)
        .ok_or("expected off, error, warn, info, debug or trace")
}

fn parse_on_off(v: &str) -> Result<bool, &'static str> {
    if v.eq_ignore_ascii_case("on") {
        Ok(true)
    } else if v.eq_ignore_ascii_case("off") {
        Ok(false)
    } else {
        Err("expected on or off")
    }
}

/// A decimal count from 1 to `max`.
fn parse_count(v: &str, max: u32) -> Result<u32, &'static str> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a number");
    }
    match v.parse::<u64>() {
        Ok(0) => Err("must be at least 1"),
        Ok(n) if n <= u64::from(max) => Ok(n as u32),
        _ => Err("too large"),
    }
}

fn parse_domain_tlbi(v: &str) -> Result<bool, &'static str> {
    if v.eq_ignore_ascii_case("cpu") {
        Ok(true)
    } else if v.eq_ignore_ascii_case("smmu") {
        Ok(false)
    } else {
        Err("expected smmu or cpu")
    }
}

/// One function ID of `warden.smc_allow=`: `0x` hex or decimal, 32 bits, and for a fast
/// call without the SVE hint or reserved bits (23:16), as after normalisation.
fn parse_fid(v: &str) -> Result<u32, &'static str> {
    let (digits, radix) = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (v, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err("not a function ID");
    }
    let id = u32::from_str_radix(digits, radix).map_err(|_| "function ID above 32 bits")?;
    if id & crate::psci::smccc::FAST != 0 && id & 0x00ff_0000 != 0 {
        return Err("bits 23:16 of a fast call ID must be clear");
    }
    Ok(id)
}

/// `none`, or comma-separated IDs and `first-last` ranges.
fn parse_smc_allow(v: &str) -> Result<SmcAllowList, &'static str> {
    let mut list = SmcAllowList::EMPTY;
    if v.eq_ignore_ascii_case("none") {
        return Ok(list);
    }
    for entry in v.split(',') {
        let (a, b) = match entry.split_once('-') {
            Some((a, b)) => (parse_fid(a)?, parse_fid(b)?),
            None => {
                let a = parse_fid(entry)?;
                (a, a)
            }
        };
        list.push(a, b)?;
    }
    Ok(list)
}

/// A byte count: decimal or `0x` hex, optional `K`/`M`/`G` suffix (either case).
pub fn parse_size(v: &str) -> Result<u64, &'static str> {
    let (digits, shift) = match v.as_bytes().last() {
        Some(b'k' | b'K') => (&v[..v.len() - 1], 10),
        Some(b'm' | b'M') => (&v[..v.len() - 1], 20),
        Some(b'g' | b'G') => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    let (digits, radix) = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => (hex, 16),
        None => (digits, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err("not a number");
    }
    let n = u64::from_str_radix(digits, radix).map_err(|_| "too large")?;
    n.checked_mul(1 << shift).ok_or("too large")
}

fn parse_pool(v: &str) -> Result<u64, &'static str> {
    let size = parse_size(v)?;
    if !size.is_multiple_of(POOL_GRANULE) {
        Err("not a multiple of 4 KiB")
    } else if size < MIN_POOL_SIZE {
        Err("below the minimum of 1 MiB")
    } else if size > MAX_POOL_SIZE {
        Err("above the maximum of 16 GiB")
    } else {
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn warnings(args: &str) -> Vec<Warning<'_>> {
        let mut v = Vec::new();
        parse_with(args, |w| v.push(w));
        v
    }

    #[test]
    fn defaults_when_empty_or_foreign() {
        for args in [
            "",
            "   ",
            "console=ttyAMA0 quiet root=/dev/vda",
            "wardenlog=debug warden",
        ] {
            let p = parse(args);
            assert_eq!(p.options, Options::default(), "{args:?}");
            assert_eq!(p.total_warnings(), 0, "{args:?}");
        }
        assert_eq!(Options::default().log, LevelFilter::Info);
        assert!(Options::default().btm);
        assert_eq!(Options::default().pool_size, None);
    }

    #[test]
    fn all_options() {
        let p = parse("console=ttyAMA0 warden.log=debug warden.pool=64M warden.btm=off quiet");
        assert_eq!(
            p.options,
            Options {
                log: LevelFilter::Debug,
                pool_size: Some(64 << 20),
                btm: false,
                ..Options::default()
            }
        );
        assert_eq!(p.total_warnings(), 0);
    }

    #[test]
    fn log_levels() {
        for (v, l) in [
            ("off", LevelFilter::Off),
            ("error", LevelFilter::Error),
            ("warn", LevelFilter::Warn),
            ("info", LevelFilter::Info),
            ("debug", LevelFilter::Debug),
            ("trace", LevelFilter::Trace),
            ("TRACE", LevelFilter::Trace),
        ] {
            let args = format!("warden.log={v}");
            assert_eq!(parse(&args).options.log, l, "{v}");
        }
    }

    #[test]
    fn pool_sizes() {
        let ok = [
            ("1M", 1 << 20),
            ("1m", 1 << 20),
            ("2048K", 2 << 20),
            ("0x200000", 2 << 20),
            ("0x1000k", 4 << 20),
            ("1G", 1 << 30),
            ("16G", 16 << 30),
            ("1052672", (1 << 20) + 4096),
        ];
        for (v, size) in ok {
            let args = format!("warden.pool={v}");
            let p = parse(&args);
            assert_eq!(p.options.pool_size, Some(size), "{v}");
            assert_eq!(p.total_warnings(), 0, "{v}");
        }
        let bad = [
            ("", "missing value"),
            ("M", "not a number"),
            ("12X", "not a number"),
            ("-4M", "not a number"),
            ("0x", "not a number"),
            ("1.5M", "not a number"),
            ("1048577", "not a multiple of 4 KiB"),
            ("4K", "below the minimum of 1 MiB"),
            ("0", "below the minimum of 1 MiB"),
            ("17G", "above the maximum of 16 GiB"),
            ("99999999999999999999", "too large"),
            ("0xffffffffffffffffG", "too large"),
            ("18446744073709551615G", "too large"),
        ];
        for (v, reason) in bad {
            let args = format!("warden.pool={v}");
            let p = parse(&args);
            assert_eq!(p.options.pool_size, None, "{v}");
            assert_eq!(
                p.warnings().collect::<Vec<_>>(),
                [Warning::BadValue {
                    key: "warden.pool",
                    value: v,
                    reason
                }],
                "{v}"
            );
        }
    }

    #[test]
    fn btm() {
        assert!(!parse("warden.btm=off").options.btm);
        assert!(parse("warden.btm=off warden.btm=on").options.btm);
        assert!(!parse("warden.btm=OFF").options.btm);
        assert_eq!(
            warnings("warden.btm=maybe"),
            [Warning::BadValue {
                key: "warden.btm",
                value: "maybe",
                reason: "expected on or off"
            }]
        );
    }

    #[test]
    fn batch_deadline_and_domain_tlbi() {
        let d = Options::default();
        assert_eq!(
            (d.batch, d.deadline_ms, d.domain_cpu_tlbi),
            (256, 10, false)
        );
        let p = parse("warden.batch=32 warden.deadline_ms=250 warden.domain_tlbi=cpu");
        assert_eq!(p.total_warnings(), 0);
        assert_eq!(
            (
                p.options.batch,
                p.options.deadline_ms,
                p.options.domain_cpu_tlbi
            ),
            (32, 250, true)
        );
        assert!(
            !parse("warden.domain_tlbi=cpu warden.domain_tlbi=SMMU")
                .options
                .domain_cpu_tlbi
        );
        assert_eq!(parse("warden.batch=65536").options.batch, MAX_BATCH);
        assert_eq!(parse("warden.deadline_ms=1").options.deadline_ms, 1);
        for (args, key, value, reason) in [
            ("warden.batch=0", "warden.batch", "0", "must be at least 1"),
            ("warden.batch=65537", "warden.batch", "65537", "too large"),
            (
                "warden.batch=99999999999999999999999",
                "warden.batch",
                "99999999999999999999999",
                "too large",
            ),
            ("warden.batch=-1", "warden.batch", "-1", "not a number"),
            ("warden.batch=0x10", "warden.batch", "0x10", "not a number"),
            (
                "warden.deadline_ms=",
                "warden.deadline_ms",
                "",
                "missing value",
            ),
            (
                "warden.deadline_ms=60001",
                "warden.deadline_ms",
                "60001",
                "too large",
            ),
            (
                "warden.deadline_ms=1.5",
                "warden.deadline_ms",
                "1.5",
                "not a number",
            ),
            (
                "warden.domain_tlbi=both",
                "warden.domain_tlbi",
                "both",
                "expected smmu or cpu",
            ),
        ] {
            let p = parse(args);
            assert_eq!(
                (
                    p.options.batch,
                    p.options.deadline_ms,
                    p.options.domain_cpu_tlbi
                ),
                (256, 10, false),
                "{args}"
            );
            assert_eq!(
                p.warnings().collect::<Vec<_>>(),
                [Warning::BadValue { key, value, reason }],
                "{args}"
            );
        }
    }

    #[test]
    fn unknown_and_malformed_collected_in_order() {
        let args = "warden.foo=1 root=/dev/vda warden.log warden.log=loud warden.bar \
                    warden.pool=3K warden.log=warn";
        let p = parse(args);
        assert_eq!(p.options.log, LevelFilter::Warn, "later valid value wins");
        assert_eq!(p.options.pool_size, None);
        assert_eq!(
            p.warnings().collect::<Vec<_>>(),
            [
                Warning::UnknownKey("warden.foo"),
                Warning::BadValue {
                    key: "warden.log",
                    value: "",
                    reason: "missing value"
                },
                Warning::BadValue {
                    key: "warden.log",
                    value: "loud",
                    reason: "expected off, error, warn, info, debug or trace"
                },
                Warning::UnknownKey("warden.bar"),
                Warning::BadValue {
                    key: "warden.pool",
                    value: "3K",
                    reason: "not a multiple of 4 KiB"
                },
            ]
        );
    }

    #[test]
    fn smc_allowlist() {
        let l = parse("warden.smc_allow=0x82000001,0xc2000000-0xc200ffff")
            .options
            .smc_allow;
        assert_eq!(
            l.ranges(),
            [(0x8200_0001, 0x8200_0001), (0xC200_0000, 0xC200_FFFF)]
        );
        assert!(l.allows(0xC200_1234) && !l.allows(0x8200_0002));
        assert!(Options::default().smc_allow.is_empty(), "empty by default");
        assert_eq!(
            parse("warden.smc_allow=2181038081")
                .options
                .smc_allow
                .ranges(),
            [(0x8200_0001, 0x8200_0001)]
        );
        // `none` clears an earlier list; a later list replaces it.
        assert!(
            parse("warden.smc_allow=0x82000001 warden.smc_allow=none")
                .options
                .smc_allow
                .is_empty()
        );
        assert_eq!(
            parse("warden.smc_allow=1 warden.smc_allow=\"0x3\"")
                .options
                .smc_allow
                .ranges(),
            [(3, 3)]
        );
        for (v, reason) in [
            ("", "missing value"),
            ("0x82000001,", "not a function ID"),
            ("0x8200zz01", "not a function ID"),
            ("0x1_0000_0000", "not a function ID"),
            ("0x100000000", "function ID above 32 bits"),
            ("0xc4010003", "bits 23:16 of a fast call ID must be clear"),
            (
                "0xc2000000-0xc2ff0000",
                "bits 23:16 of a fast call ID must be clear",
            ),
            ("0xc2000010-0xc2000001", "range ends before it starts"),
            ("0x82000001-", "not a function ID"),
            ("1,2,3,4,5,6,7,8,9", "more than 8 entries"),
        ] {
            let args = format!("warden.smc_allow=0x82000005 warden.smc_allow={v}");
            let p = parse(&args);
            assert_eq!(
                p.options.smc_allow.ranges(),
                [(0x8200_0005, 0x8200_0005)],
                "{v}: the bad value is ignored, the earlier one kept"
            );
            assert_eq!(
                p.warnings().collect::<Vec<_>>(),
                [Warning::BadValue {
                    key: "warden.smc_allow",
                    value: v,
                    reason
                }],
                "{v}"
            );
        }
    }

    #[test]
    fn options_display_as_the_words_that_set_them() {
        assert_eq!(
            Options::default().to_string(),
            "warden.log=info warden.btm=on warden.batch=256 warden.deadline_ms=10 \
             warden.domain_tlbi=smmu warden.smc_allow=none"
        );
        let args = "warden.log=debug warden.pool=0x1001000 warden.btm=off warden.batch=7 \
                    warden.deadline_ms=3 warden.domain_tlbi=cpu \
                    warden.smc_allow=0x82000001,0xc2000000-0xc200ffff";
        let o = parse(args).options;
        assert_eq!(
            o.to_string(),
            "warden.log=debug warden.pool=16388K warden.btm=off warden.batch=7 \
             warden.deadline_ms=3 warden.domain_tlbi=cpu \
             warden.smc_allow=0x82000001,0xc2000000-0xc200ffff"
        );
        for (pool, word) in [(2 << 30, "2G"), (64 << 20, "64M")] {
            let o = Options {
                pool_size: Some(pool),
                ..Options::default()
            };
            assert!(o.to_string().contains(&format!(" warden.pool={word} ")));
        }
    }

    #[test]
    fn bad_value_keeps_earlier_good_value() {
        let p = parse("warden.pool=8M warden.pool=nope");
        assert_eq!(p.options.pool_size, Some(8 << 20));
        assert_eq!(p.total_warnings(), 1);
    }

    #[test]
    fn warnings_are_capped_but_counted() {
        let args = "warden.a warden.b warden.c warden.d warden.e warden.f warden.g warden.h \
                    warden.i warden.j warden.log=trace";
        let p = parse(args);
        assert_eq!(p.total_warnings(), 10);
        assert_eq!(p.warnings().count(), MAX_WARNINGS);
        assert_eq!(p.warnings().next(), Some(Warning::UnknownKey("warden.a")));
        assert_eq!(p.options.log, LevelFilter::Trace);
    }

    #[test]
    fn quotes_and_whitespace() {
        let p =
            parse("\tfoo=\"a warden.log=off b\"\n warden.log=\"debug\"  warden.pool=\"2M\"\r\n");
        assert_eq!(
            p.options.log,
            LevelFilter::Debug,
            "quoted words are not split"
        );
        assert_eq!(p.options.pool_size, Some(2 << 20));
        assert_eq!(p.total_warnings(), 0);
        // An unterminated quote swallows the rest, as in Linux.
        assert_eq!(
            parse("x=\"unterminated warden.log=off").options.log,
            LevelFilter::Info
        );
    }

    #[test]
    fn warning_display() {
        let w = warnings("warden.zzz=1 warden.btm=2");
        assert_eq!(w[0].to_string(), "unknown option warden.zzz ignored");
        assert_eq!(
            w[1].to_string(),
            "warden.btm=\"2\" ignored: expected on or off"
        );
    }

    #[test]
    fn passthrough_lists_add_up() {
        let args = "warden.passthrough=/virtio_mmio@a000000,/soc/dma@6000 quiet \
                    warden.passthrough=\"/fw-cfg@9020000\" warden.passthrough=bad,/x \
                    warden.passthrough=";
        assert_eq!(
            passthrough_paths(args).collect::<Vec<_>>(),
            ["/virtio_mmio@a000000", "/soc/dma@6000", "/fw-cfg@9020000"]
        );
        let p = parse(args);
        assert_eq!(p.options, Options::default());
        assert_eq!(
            p.warnings().collect::<Vec<_>>(),
            [
                Warning::BadValue {
                    key: "warden.passthrough",
                    value: "bad,/x",
                    reason: "expected comma-separated node paths, each starting with /",
                },
                Warning::BadValue {
                    key: "warden.passthrough",
                    value: "",
                    reason: "missing value",
                },
            ]
        );
        assert_eq!(passthrough_paths("console=ttyAMA0").count(), 0);
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_warden_words(words in proptest::collection::vec(
            "(warden\\.(log|pool|btm|batch|deadline_ms|domain_tlbi|x)(=[a-zA-Z0-9\"x.-]{0,24})?|[a-z=\"]{0,8})", 0..12)) {
            let args = words.join(" ");
            let p = parse(&args);
            prop_assert!(p.warnings().count() <= MAX_WARNINGS);
            if let Some(s) = p.options.pool_size {
                prop_assert!(s.is_multiple_of(POOL_GRANULE) && (MIN_POOL_SIZE..=MAX_POOL_SIZE).contains(&s));
            }
            prop_assert!((1..=MAX_BATCH).contains(&p.options.batch));
            prop_assert!((1..=MAX_DEADLINE_MS).contains(&p.options.deadline_ms));
        }

        #[test]
        fn options_text_parses_back_to_the_same_options(words in proptest::collection::vec(
            "warden\\.(log=(off|error|warn|info|debug|trace)|pool=[1-9][0-9]{0,2}M|btm=(on|off)|batch=[1-9][0-9]{0,3}|deadline_ms=[1-9][0-9]{0,3}|domain_tlbi=(smmu|cpu)|smc_allow=(none|[1-9][0-9]{0,4}(-[1-9][0-9]{5})?(,[1-9][0-9]{0,4})?))", 0..10)) {
            let o = parse(&words.join(" ")).options;
            let text = o.to_string();
            let back = parse(&text);
            prop_assert_eq!(back.total_warnings(), 0, "{}", text);
            prop_assert_eq!(back.options, o, "{}", text);
        }

        #[test]
        fn valid_pool_sizes_round_trip(pages in (MIN_POOL_SIZE / POOL_GRANULE)..=(MAX_POOL_SIZE / POOL_GRANULE)) {
            let size = pages * POOL_GRANULE;
            for text in [format!("{size}"), format!("{:#x}", size), format!("{}K", size >> 10)] {
                let args = format!("warden.pool={text}");
                prop_assert_eq!(parse(&args).options.pool_size, Some(size));
            }
        }
    }
}
