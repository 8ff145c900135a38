//! The field names of a parameter struct, read from its `Deserialize` impl, so that `pipe kinds`
//! lists every parameter a kind accepts and cannot drift from the struct: serde hands a
//! struct's field names to the deserializer it asks for a struct, and this deserializer only
//! records them.

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// The fields `T` accepts, in declaration order (empty when `T` is not a plain struct).
pub fn field_names<'de, T: Deserialize<'de>>() -> Vec<&'static str> {
    let mut fields = Vec::new();
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

struct FieldNames<'a>(&'a mut Vec<&'static str>);

/// The error that ends the walk once the names are recorded.
#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field names recorded")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = Stop;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        self.0.extend_from_slice(fields);
        Err(Stop)
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Example {
        lr: f64,
        #[serde(default)]
        seed: u64,
        #[serde(rename = "data")]
        data_params: Option<String>,
    }

    #[test]
    fn names_every_field_as_written_in_yaml() {
        assert_eq!(field_names::<Example>(), ["lr", "seed", "data"]);
        assert_eq!(field_names::<u64>(), Vec::<&str>::new());
    }
}
