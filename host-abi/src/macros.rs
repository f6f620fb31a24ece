//! The declarative macros that define the ABI's constants and, from the same tokens,
//! record each one in [`crate::table`] for the C header generator. A constant cannot be
//! added to the ABI without also reaching the table, so the header cannot drift.

/// Defines ABI constants and a [`crate::table::Group`] describing them.
///
/// Two forms:
///
/// - `root ("PREFIX_", Style) { consts }`: the constants go to the crate root; the
///   group is the private constant `ROOT_TABLE`.
/// - `pub mod name ("PREFIX_", Style) { consts } [extra { items }]`: the constants go to
///   module `name` (which sees the crate root's items); the group is
///   `name::TABLE` (crate-private). `extra` items are added to the module verbatim
///   and are not part of the table.
///
/// Each constant is written `/// doc` + `const NAME: type = value;` and becomes `pub`.
macro_rules! abi_consts {
    (
        $(#[doc = $gdoc:literal])*
        root ($prefix:literal, $style:ident) {
            $(
                $(#[doc = $doc:literal])*
                const $name:ident: $ty:ident = $value:expr;
            )*
        }
    ) => {
        $(
            $(#[doc = $doc])*
            pub const $name: $ty = $value;
        )*

        /// The crate root's constants, for [`crate::table::GROUPS`].
        const ROOT_TABLE: $crate::table::Group = $crate::table::Group {
            module: "",
            prefix: $prefix,
            style: $crate::table::Style::$style,
            doc: &[$($gdoc),*],
            consts: &[$(
                $crate::table::Const {
                    name: stringify!($name),
                    value: $name as u64,
                    ty: stringify!($ty),
                    doc: &[$($doc),*],
                },
            )*],
        };
    };
    (
        $(#[doc = $gdoc:literal])*
        pub mod $module:ident ($prefix:literal, $style:ident) {
            $(
                $(#[doc = $doc:literal])*
                const $name:ident: $ty:ident = $value:expr;
            )*
        }
        $(extra { $($extra:item)* })?
    ) => {
        $(#[doc = $gdoc])*
        pub mod $module {
            #[allow(unused_imports)]
            use super::*;

            $(
                $(#[doc = $doc])*
                pub const $name: $ty = $value;
            )*

            $($($extra)*)?

            /// This module's constants, for [`crate::table::GROUPS`].
            pub(crate) const TABLE: $crate::table::Group = $crate::table::Group {
                module: stringify!($module),
                prefix: $prefix,
                style: $crate::table::Style::$style,
                doc: &[$($gdoc),*],
                consts: &[$(
                    $crate::table::Const {
                        name: stringify!($name),
                        value: $name as u64,
                        ty: stringify!($ty),
                        doc: &[$($doc),*],
                    },
                )*],
            };
        }
    };
}

/// Defines the status enum [`crate::Error`] (`#[repr(i64)]`), its helpers, and its
/// table group `ERROR_TABLE`. Each variant is written `/// doc` + `Name = -n => "C_NAME"`.
macro_rules! abi_errors {
    (
        $(#[doc = $edoc:literal])*
        pub enum $enum:ident ($prefix:literal) {
            $(
                $(#[doc = $doc:literal])*
                $variant:ident = $code:literal => $cname:literal,
            )*
        }
    ) => {
        $(#[doc = $edoc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(i64)]
        pub enum $enum {
            $(
                $(#[doc = $doc])*
                $variant = $code,
            )*
        }

        impl $enum {
            /// Every status code, in ABI order.
            pub const ALL: &'static [$enum] = &[$($enum::$variant),*];

            /// The value placed in `x0`.
            pub const fn to_reg(self) -> u64 {
                self as i64 as u64
            }

            /// The error a status register (`x0`) holds: `None` for success (0) and for
            /// any value that is not an error code of the ABI.
            pub const fn from_reg(reg: u64) -> Option<$enum> {
                match reg as i64 {
                    $($code => Some($enum::$variant),)*
                    _ => None,
                }
            }

            /// The ABI name of the error (as in `docs/abi.md`, after the C prefix).
            pub const fn name(self) -> &'static str {
                match self {
                    $($enum::$variant => $cname,)*
                }
            }
        }

        /// The status codes, for [`crate::table::GROUPS`].
        const ERROR_TABLE: $crate::table::Group = $crate::table::Group {
            module: stringify!($enum),
            prefix: $prefix,
            style: $crate::table::Style::Signed,
            doc: &[$($edoc),*],
            consts: &[$(
                $crate::table::Const {
                    name: $cname,
                    value: $enum::$variant as i64 as u64,
                    ty: "i64",
                    doc: &[$($doc),*],
                },
            )*],
        };
    };
}
