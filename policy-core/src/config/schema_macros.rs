//! The macros that write the JSON Schema of the configuration's hand-deserialized types, used by
//! [`super::raw`] and [`super::duration`] alike (a leaf, so neither imports the other for them).
//! The expansion site must have `schemars::JsonSchema` in scope.

/// A JSON Schema written out for a type whose Deserialize is hand-made.
macro_rules! inline_schema {
    ($ty:ty, $name:literal, $schema:tt) => {
        #[cfg(feature = "schema")]
        impl JsonSchema for $ty {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!($schema)
            }
        }
    };
}
pub(crate) use inline_schema;

/// The schema of a wrapper is the schema of what it wraps.
macro_rules! delegate_schema {
    ($wrapper:ident) => {
        #[cfg(feature = "schema")]
        impl<T: JsonSchema> JsonSchema for $wrapper<T> {
            fn inline_schema() -> bool {
                T::inline_schema()
            }
            fn schema_name() -> std::borrow::Cow<'static, str> {
                T::schema_name()
            }
            fn schema_id() -> std::borrow::Cow<'static, str> {
                T::schema_id()
            }
            fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
                T::json_schema(g)
            }
        }
    };
}
pub(crate) use delegate_schema;
