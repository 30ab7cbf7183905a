//! The text vocabularies the database holds in `CHECK` constraints
//! (incident kinds, scopes, fault sides, patterns, events, delivery states,
//! probe purposes, check states, path protocols), each declared once as a
//! Rust enum by [`vocabulary!`]: its variants with their text, `ALL` in
//! declaration order, the text (`as_str`, `Display`, serde), and the parse
//! (`FromStr`, `TryFrom<String>` for sqlx's `try_from` columns). The
//! schema tests hold every `ALL` to its `CHECK`, so a value added on one
//! side only fails a test, not an insert.
//!
//! Declared before every other module in `lib.rs`, so the macro is in
//! scope everywhere by its name alone (the pure detection core imports
//! nothing of the collector outside itself).

/// Declares a vocabulary: `vocabulary! { /// doc  pub enum Name { A = "a", B = "b" } }`.
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            strum::VariantArray, strum::IntoStaticStr, strum::EnumString,
        )]
        $vis enum $name {
            $( $(#[$vmeta])* #[strum(serialize = $text)] $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = <Self as strum::VariantArray>::VARIANTS;

            /// The text stored in the database and shown in pages.
            pub fn as_str(self) -> &'static str {
                self.into()
            }

            /// The value whose text is `text`.
            pub fn parse(text: &str) -> Option<Self> {
                text.parse().ok()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl TryFrom<String> for $name {
            type Error = strum::ParseError;
            fn try_from(text: String) -> Result<Self, Self::Error> {
                text.parse()
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}
